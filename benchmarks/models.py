"""The generation-heavy benchmark's model: a randomly initialised Qwen2 of tens of millions of parameters
that almost never stops before its token budget, so every completion is full length.

A random model samples nearly uniformly, so it would emit EOS (or the one-token stop string `</answer>`)
about once in V tokens. Here those tokens' output rows point against a direction that the residual stream
always carries: dimension 0 of every token embedding is set to EMBED_OFFSET, which the small random layers
barely change and the final RMSNorm turns into a large positive value; the untied `lm_head` rows of EOS and
`</answer>` hold STOP_WEIGHT there and 0 in the other rows, so their logits sit about 20 below the rest.
"""

from __future__ import annotations

from pathlib import Path

import torch

EMBED_OFFSET = 1.0
"""Dimension 0 of every embedding: ~50x the other entries (init std 0.02), so it dominates the norm."""
STOP_WEIGHT = -1.0
"""lm_head weight of the stop tokens on dimension 0: logit ~ -1 x (normalised dimension 0, ~20)."""
STOP_TOKENS = ("</answer>",)

GENERATION_HEAVY = dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8, intermediate_size=1536,
                        max_positions=512)
"""~20M parameters (6 x 3.1M per layer plus embeddings): head_dim 64 suits vLLM's CPU attention."""


def write_generation_heavy_model(out_dir: str | Path, *, seed: int = 0, **shape: int) -> Path:
    """Write the model (safetensors + tokenizer) to `out_dir`, once; returns the directory."""
    from safetensors.torch import load_file, save_file

    from examples.tiny_model import build_tokenizer, sample_corpus, write_model

    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        return out
    tokenizer = build_tokenizer(sample_corpus())
    write_model(out, tokenizer, seed=seed, tie_word_embeddings=False, **(GENERATION_HEAVY | shape))
    path = out / "model.safetensors"
    tensors = load_file(str(path))
    stop_ids = [tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS)]
    with torch.no_grad():
        tensors["model.embed_tokens.weight"][:, 0] = EMBED_OFFSET
        head = tensors["lm_head.weight"]
        head[:, 0] = 0.0
        head[stop_ids, 0] = STOP_WEIGHT
    save_file(tensors, str(path), metadata={"format": "pt"})
    return out


def num_parameters(model_dir: str | Path) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
