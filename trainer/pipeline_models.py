"""The models of a pipeline made and measured without the actors: a derived copy of a Hugging Face model
(added tokens, fewer layers) and the held-out evaluation of a stage's model with transformers' `generate`.
`trainer.pipeline` chains them with the stages that run on the actors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

StageRecord = dict[str, object]
"""What a stage's stamp records (JSON): `model` or `data`, the stage's own numbers, and for a rejection stage
its `report`."""
EvalRecord = dict[str, float]
"""Held-out numbers of one model: pass@1, cons@k, response_tokens, prompts, k."""


@dataclass(frozen=True)
class DeriveConfig:
    """A copy of a Hugging Face model with extra tokens (each embedding copied from an existing token) and,
    for a distillation student, only every n-th layer (DistilBERT's initialisation of a smaller student)."""

    name: str
    """Outputs go to output_dir/name/hf."""
    model_path: str
    """The model to extend."""
    output_dir: str = "runs"
    tokens: tuple[str, ...] = ()
    """Tokens to add (plain added tokens: decoding keeps them in the text)."""
    init_from: tuple[str, ...] = ()
    """For each added token, the existing token whose embedding (and output row) it starts from."""
    keep_every_layer: int = 1
    """Keep layers 0, n, 2n, ... (1: all)."""


@dataclass(frozen=True)
class PipelineEvalConfig:
    path: str
    """Held-out JSONL (`prompt`, `ground_truth`, `task`)."""
    prompts: int = 128
    """First n held-out prompts."""
    samples_per_prompt: int = 4
    """k: pass@1 is the mean over the k samples, cons@k the majority vote over them."""
    temperature: float = 1.0
    max_new_tokens: int = 96
    seed: int = 0
    threads: int = 2
    """torch CPU threads for generation."""


# --- derive ----------------------------------------------------------------------------------------


def derive_model(cfg: DeriveConfig) -> StageRecord:
    """Copy the model with `cfg.tokens` added, each embedding row copied from its `init_from` token (the
    output rows too unless the embeddings are tied), and every `keep_every_layer`-th layer; written to
    output_dir/name/hf."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(cfg.tokens) != len(cfg.init_from):
        raise ValueError(f"derive {cfg.name}: {len(cfg.tokens)} tokens but {len(cfg.init_from)} init_from")
    if not Path(cfg.model_path).is_dir():
        raise FileNotFoundError(f"derive {cfg.name}: the model directory {cfg.model_path} does not exist (the tiny "
                                f"base: `python -m examples.build_tiny`, the tiny student: `python -m examples.build_student`)")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=torch.float32)
    sources = [tokenizer.convert_tokens_to_ids(t) for t in cfg.init_from]
    missing = [t for t, i in zip(cfg.init_from, sources, strict=True) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"derive {cfg.name}: {missing} are not tokens of {cfg.model_path}")
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in cfg.tokens])
    if len(tokenizer) > _weight(model.get_input_embeddings()).shape[0]:  # real models keep spare rows: never shrink
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in cfg.tokens]
    tables = [_weight(model.get_input_embeddings())]
    if not model.config.tie_word_embeddings:
        tables.append(_weight(model.get_output_embeddings()))
    with torch.no_grad():
        for new, source in zip(new_ids, sources, strict=True):
            for table in tables:
                table[new] = table[source]
    if cfg.keep_every_layer > 1:
        keep_every_nth_layer(model, cfg.keep_every_layer)
    out = Path(cfg.output_dir) / cfg.name / "hf"
    tmp = out.with_name("hf.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return {"model": str(out), "vocab_size": len(tokenizer), "layers": model.config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters())}


def _weight(layer: Module | None) -> Tensor:
    """The weight of an embedding or output layer ([V, hidden])."""
    import torch

    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"expected an embedding layer with a weight tensor, got {type(layer).__name__}")
    return weight


M = TypeVar("M", bound="PreTrainedModel")


def keep_every_nth_layer(model: M, n: int) -> M:
    """Keep decoder layers 0, n, 2n, ... of a Hugging Face causal LM in place (DistilBERT's initialisation
    of a smaller student); embeddings, final norm and output head stay. Returns the model."""
    import torch

    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(layers[i] for i in range(0, len(layers), n))
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(model.model.layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:len(model.model.layers)]
    return model


# --- evaluation ------------------------------------------------------------------------------------


def evaluate_model(model_dir: str, template: str, cfg: PipelineEvalConfig) -> EvalRecord:
    """Held-out pass@1 (mean over k), cons@k and mean response tokens of one model, with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward_server.verifiers import extract_answer, verify_arithmetic
    from trainer.data import read_rows
    from trainer.evaluate import cons_at_k, pass_at_1
    from trainer.templates import completion_for_reward, render

    rows = read_rows(cfg.path)[:cfg.prompts]
    if any(r.get("task", "arithmetic") != "arithmetic" for r in rows):
        raise ValueError(f"pipeline evaluation checks addition answers; {cfg.path} holds other tasks")
    torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    k = cfg.samples_per_prompt
    texts = [render(template, str(r["prompt"]), tokenizer) for r in rows for _ in range(k)]
    torch.manual_seed(cfg.seed)
    outs, lengths = _generate(model, tokenizer, texts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    answers = [extract_answer(completion_for_reward(t, o)) for t, o in zip(texts, outs, strict=True)]
    correct = [a is not None and verify_arithmetic(a, str(rows[i // k]["ground_truth"])) for i, a in enumerate(answers)]
    by_prompt = [correct[i:i + k] for i in range(0, len(correct), k)]
    answers_by_prompt = [answers[i:i + k] for i in range(0, len(answers), k)]
    return {"pass@1": pass_at_1(by_prompt), f"cons@{k}": cons_at_k(answers_by_prompt, by_prompt),
            "response_tokens": sum(lengths) / len(lengths), "prompts": float(len(rows)), "k": float(k)}


class SamplingModel(Protocol):
    """What `_generate` asks of a causal LM: transformers' `generate`, here returning token ids."""

    def generate(self, *, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, eos_token_id: list[int],
                 do_sample: bool, temperature: float, top_k: int, top_p: float, pad_token_id: int | None,
                 ) -> Tensor:
        """[b, prompt + T] token ids: the left-padded prompts, then up to T sampled tokens."""
        ...


def _generate(model: SamplingModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, temperature: float,
              max_new_tokens: int, batch_size: int = 256) -> tuple[list[str], list[int]]:
    """Sampled completions (stop at EOS or `</answer>`) and their lengths in tokens (the stop token included)."""
    import torch

    stop = [tokenizer.eos_token_id]
    answer_end = tokenizer.convert_tokens_to_ids("</answer>")
    if answer_end is not None and answer_end != tokenizer.unk_token_id:
        stop.append(answer_end)
    tokenizer.padding_side = "left"
    outs: list[str] = []
    lengths: list[int] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_new_tokens, eos_token_id=stop, do_sample=True,
                                 temperature=temperature, top_k=0, top_p=1.0,
                                 pad_token_id=tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]  # [b, T]
        for row in ids.tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            lengths.append(n)
            outs.append(str(tokenizer.decode(row[:n], skip_special_tokens=True)))
    return outs, lengths
