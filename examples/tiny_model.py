"""A tiny Qwen2-architecture causal LM and its tokenizer, written as a Hugging Face directory.

Nothing is downloaded: the tokenizer is a byte-level BPE (like Qwen2's) trained here on a corpus the
caller passes, with digits always split one per token (so arithmetic stays learnable) and the
R1 tags `<think>`, `</think>`, `<answer>`, `</answer>` as single tokens. The tags are ordinary added
tokens, not special ones, so decoding keeps them in the text the rewards read.

`write_model` saves a randomly initialised model; `examples/build_tiny.py` pretrains it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

EOS = "<|endoftext|>"
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""Minimal chat template so the `r1_chat` prompt variant also works with the tiny model."""


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):  # -> PreTrainedTokenizerFast
    """Train a byte-level BPE on `corpus` and wrap it as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model_config(vocab_size: int, *, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 2,
                 num_kv_heads: int = 2, intermediate_size: int = 384, max_positions: int = 512,
                 tie_word_embeddings: bool = True, eos_token_id: int = 0):  # -> Qwen2Config
    """A Qwen2 config. head_dim = hidden/heads must be >= 32: vLLM's CPU attention rejects 16."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        torch_dtype="float32",
    )


def write_model(out_dir: str | Path, tokenizer, *, seed: int = 0, **config_kwargs) -> Path:
    """Save a randomly initialised Qwen2 with `tokenizer` to `out_dir` (safetensors)."""
    from transformers import Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = model_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, **config_kwargs)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def sample_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Template-shaped arithmetic text, enough to train a tokenizer for tests."""
    import random

    from trainer.templates import r1_zero

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        lines.append(r1_zero(f"What is {a}+{b}?") + f"{a % 10}+{b % 10}=?</think><answer>{a + b}</answer>")
    return lines


def write_test_model(out_dir: str | Path, *, seed: int = 0, **config_kwargs) -> Path:
    """A random tiny model plus tokenizer for tests (seconds to build)."""
    return write_model(out_dir, build_tokenizer(sample_corpus()), seed=seed, **config_kwargs)
