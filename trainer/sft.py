"""Supervised fine-tuning on the learner actors: R1's cold start, its rejection-sampling SFT, distillation.

    JSONL {prompt, response} --template + tokenizer--> samples (prompt ids, response ids + EOS)
        --seeded epoch order--> samples_per_step per optimizer step
        --token-budget packing--> micro-batches --learner.forward_backward(batch, "sft", ...)--> grads
        --learner.optim_step--> next step; validation NLL now and then; checkpoints; HF export at the end

The learner runs `trainer.grpo.sft_loss` (NLL of the response tokens, normalised by the step's global
response-token count), exactly as GRPO runs its loss: the same Megatron ranks, checkpoints and export.

Departures from a textbook SFT loop, and why:
    - "Packing" groups whole samples into a micro-batch under a token budget (rows x longest row,
      padding included; the learner's `plan_microbatches` does it) instead of concatenating samples
      into one row: the learner's attention mask is plainly causal, so concatenated samples would
      attend to each other. With `learner.pack_sequences` the learner does concatenate them, each
      attending to itself only (`actors.packing`), and the budget counts real tokens.
    - The data order is a pure function of (seed, epoch), and a step's samples a pure function of the
      step number, so a resumed run needs only the step to continue exactly.
    - The last step of an epoch takes the samples left over (it can be smaller); the loss is still
      the mean over that step's response tokens.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import SFTConfig, to_dict
from trainer.templates import render
from trainer.types import TrainBatch

REQUIRED_FIELDS = ("prompt", "response")


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTSample:
    """One tokenised sample: the rendered prompt, then the response and EOS (the loss covers these)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...] = ()
    """[len(response_ids)] False on tool outputs (a row's `tool_spans`); empty: every response token counts."""

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def read_sft_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each checked for `prompt` and `response` (strings)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SFT data {path} does not exist (the tiny data: `python -m examples.build_sft_data`)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not all(isinstance(row.get(k), str) for k in REQUIRED_FIELDS):
                raise ValueError(f"{path}:{line_no}: every row needs string fields {list(REQUIRED_FIELDS)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def encode_sample(tokenizer: Any, prompt_text: str, response: str,
                  tool_spans: Sequence[Sequence[int]] = ()) -> SFTSample:
    """The rendered prompt and the response tokenised apart, as the engine sees them: it samples the
    response's tokens after the prompt's.

    With `tool_spans` ([start, end) character offsets of tool outputs in `response`, as `trainer reject`
    writes them), the response is tokenised piece by piece, as a multi-turn rollout builds it (each turn
    and each tool output on its own), and the tool outputs' tokens get loss mask False."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if not tool_spans:
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return SFTSample(tuple(prompt_ids), tuple(response_ids))
    ids: list[int] = []
    mask: list[bool] = []
    at = 0
    for start, end in tool_spans:
        if not at <= start <= end <= len(response):
            raise ValueError(f"tool_spans {list(tool_spans)} are not ordered spans of a {len(response)}-character "
                             "response")
        for piece, policy in ((response[at:start], True), (response[start:end], False)):
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids += piece_ids
            mask += [policy] * len(piece_ids)
        at = end
    rest = tokenizer(response[at:], add_special_tokens=False)["input_ids"] if response[at:] else []
    ids += [*rest, tokenizer.eos_token_id]
    mask += [True] * (len(rest) + 1)
    return SFTSample(tuple(prompt_ids), tuple(ids), tuple(mask))


def load_sft_samples(path: str | Path, *, tokenizer: Any, template: str, max_sample_tokens: int,
                     limit: int | None = None) -> tuple[list[SFTSample], int]:
    """Tokenised samples of a JSONL file, and how many were dropped as longer than `max_sample_tokens`."""
    rows = read_sft_rows(path)[:limit]
    samples = [encode_sample(tokenizer, render(template, row["prompt"], tokenizer), row["response"],
                             row.get("tool_spans") or ()) for row in rows]
    kept = [s for s in samples if s.length <= max_sample_tokens]
    if not kept:
        raise ValueError(f"{path}: every sample is longer than max_sample_tokens = {max_sample_tokens}")
    return kept, len(samples) - len(kept)


# --- the schedule: which samples each step trains on ------------------------------------------------


def steps_per_epoch(num_samples: int, samples_per_step: int) -> int:
    return -(-num_samples // samples_per_step)


def total_steps(num_samples: int, *, samples_per_step: int, epochs: int, max_steps: int = 0) -> int:
    """Optimizer steps of the run: every epoch in full, or `max_steps` if that is set and fewer."""
    full = epochs * steps_per_epoch(num_samples, samples_per_step)
    return min(full, max_steps) if max_steps else full


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """[num_samples] the order of an epoch: a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def step_indices(step: int, num_samples: int, *, samples_per_step: int, seed: int,
                 shuffle: bool) -> tuple[int, list[int]]:
    """(epoch, sample indices) of optimizer step `step` (1-based); a function of the step alone."""
    per_epoch = steps_per_epoch(num_samples, samples_per_step)
    epoch, within = divmod(step - 1, per_epoch)
    order = epoch_order(num_samples, seed=seed, epoch=epoch, shuffle=shuffle)
    return epoch, order[within * samples_per_step:(within + 1) * samples_per_step].tolist()


# --- batches -----------------------------------------------------------------------------


def sft_batch(samples: list[SFTSample], *, pad_token_id: int, row_multiple: int = 1) -> TrainBatch:
    """Right-padded rows with `response_mask` on the response tokens (EOS included), less tool outputs.

    Rows are added up to a multiple of `row_multiple` (the data-parallel size, which must divide the
    rows); an added row is one pad token with nothing in the loss.
    """
    rows = [list(s.prompt_ids) + list(s.response_ids) for s in samples]
    starts = [len(s.prompt_ids) for s in samples]
    masks = [s.loss_mask for s in samples]
    while len(rows) % row_multiple:
        rows.append([pad_token_id])
        starts.append(1)
    n, length = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)          # [N, L]
    attention_mask = torch.zeros(n, length, dtype=torch.bool)                     # [N, L]
    response_mask = torch.zeros(n, length, dtype=torch.bool)                      # [N, L]
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = True
        response_mask[i, start:len(row)] = True
        if i < len(masks) and masks[i]:  # tool outputs out of the loss
            response_mask[i, start:len(row)] = torch.tensor(masks[i], dtype=torch.bool)
    zeros = torch.zeros(n, length, dtype=torch.float32)                           # [N, L]
    return TrainBatch(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                      advantages=torch.zeros(n), old_logprobs=zeros, ref_logprobs=zeros.clone(),
                      rollout_logprobs=zeros.clone())


def response_nll(logprobs: torch.Tensor, response_mask: torch.Tensor) -> tuple[float, int]:
    """(sum of -log p over response tokens, their count); logprobs and mask [N, L]."""
    mask = response_mask.bool()
    return float(-(logprobs * mask).sum()), int(mask.sum())


# --- the steps ---------------------------------------------------------------------------------------


def train_step(learner: Any, samples: list[SFTSample], *, pad_token_id: int, dp: int) -> dict[str, float]:
    """One optimizer step over `samples`: one forward_backward over the whole step (the learner packs
    it into micro-batches under its token budget and accumulates), then AdamW."""
    batch = sft_batch(samples, pad_token_id=pad_token_id, row_multiple=dp)
    num_tokens = sum(len(s.response_ids) for s in samples)
    metrics = learner.forward_backward(batch, "sft", num_tokens, len(samples), {}) | learner.optim_step()
    return metrics | {"samples": float(len(samples)), "response_tokens": float(num_tokens)}


def validation_loss(learner: Any, samples: list[SFTSample], *, pad_token_id: int, dp: int) -> float:
    """Mean NLL per response token over `samples` (forward only, packed by the learner)."""
    batch = sft_batch(samples, pad_token_id=pad_token_id, row_multiple=dp)
    nll, count = response_nll(learner.compute_logprobs(batch), batch.response_mask)
    return nll / max(count, 1)


# --- the run -----------------------------------------------------------------------------------------


def start_sft_system(cfg: SFTConfig, *, optimizer_steps: int, run_dir: Path) -> Any:
    """The policy's learner ranks, started by the one builder of every entry point (`trainer.roles`,
    `actors.launch`) from the stage's `sft_view`: SFT's packing budget `cfg.tokens_per_microbatch` is the
    learner's (`learner.tokens_per_microbatch` must stay 0). Every rank writes its checkpoint shard under
    `run_dir` (absolute here), so the builder checks it is one directory for all nodes first."""
    from actors.launch import start_system
    from trainer.roles import plan_system, sft_view

    model = replace(cfg.model, path=str(Path(cfg.model.path).resolve()))  # the ranks may run elsewhere
    plan = plan_system(sft_view(replace(cfg, model=model)), "sft", optimizer_steps=optimizer_steps,
                       shared_dir=str(run_dir))  # every decision, before anything starts
    return start_system(plan)


def finished(run_dir: Path) -> bool:
    """The run exported its final model (`hf/` is written last, atomically)."""
    return (run_dir / "hf" / "config.json").exists()


def train_sft(cfg: SFTConfig) -> Path:
    """Run SFT as configured; returns the run directory (metrics.jsonl, checkpoints/, hf/, config.json).
    Holds the directory's lock throughout (trainer.run_lock): a second run there refuses."""
    from trainer.run_lock import hold_run_dir

    cfg = cfg.validate()
    run_dir = (Path(cfg.output_dir) / cfg.name).resolve()
    with hold_run_dir(run_dir):
        return _train_sft(cfg, run_dir)


def _train_sft(cfg: SFTConfig, run_dir: Path) -> Path:
    from transformers import AutoTokenizer

    from trainer.checkpoint import ControllerState, latest_checkpoint, load_controller_state, save_checkpoint
    from trainer.data import SamplerState
    from trainer.metrics import MetricsLogger
    from trainer.protocols import LearnerGroupProtocol

    if cfg.resume and finished(run_dir):
        print(f"{run_dir} already finished (hf/ exported); delete it or --set resume=false to start over")
        return run_dir
    if not cfg.resume:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "hf", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    d = cfg.data
    train, dropped = load_sft_samples(d.train_path, tokenizer=tokenizer, template=d.template,
                                      max_sample_tokens=d.max_sample_tokens)
    valid, _ = load_sft_samples(d.valid_path, tokenizer=tokenizer, template=d.template,
                                max_sample_tokens=d.max_sample_tokens, limit=d.valid_size)
    steps = total_steps(len(train), samples_per_step=cfg.samples_per_step, epochs=cfg.epochs, max_steps=cfg.max_steps)
    print(f"SFT {cfg.name}: {len(train)} training samples ({dropped} longer than {d.max_sample_tokens} tokens "
          f"dropped), {len(valid)} validation samples, {steps} steps")
    system = start_sft_system(cfg, optimizer_steps=steps, run_dir=run_dir)
    learner: LearnerGroupProtocol = system.learner
    logger = MetricsLogger(run_dir)
    lc = cfg.learner
    pack = dict(pad_token_id=tokenizer.pad_token_id, dp=lc.data_parallel_size)
    try:
        start = 0
        checkpoint = latest_checkpoint(run_dir) if cfg.resume else None
        if checkpoint is not None:
            start = load_controller_state(checkpoint).step
            learner.load(checkpoint / "learner")
            print(f"resumed from {checkpoint} at step {start}")
        logger.truncate_after(start if checkpoint is not None else -1)
        if start == 0:
            logger.log(0, "valid", {"valid_loss": validation_loss(learner, valid, **pack)})
        for step in range(start + 1, steps + 1):
            began = time.perf_counter()
            epoch, indices = step_indices(step, len(train), samples_per_step=cfg.samples_per_step, seed=cfg.seed,
                                          shuffle=d.shuffle)
            metrics = train_step(learner, [train[i] for i in indices], **pack)
            seconds = time.perf_counter() - began
            logger.log(step, "train", metrics | {"epoch": float(epoch), "time/step": seconds,
                                                 "tokens_per_s": metrics["response_tokens"] / max(seconds, 1e-9)})
            if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 or step == steps:
                valid_loss = validation_loss(learner, valid, **pack)
                logger.log(step, "valid", {"valid_loss": valid_loss})
                print(f"step {step}/{steps}: train loss {metrics['loss']:.4f}  valid loss {valid_loss:.4f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 or step == steps:
                per_epoch = steps_per_epoch(len(train), cfg.samples_per_step)
                position = min(len(train), (step - epoch * per_epoch) * cfg.samples_per_step)
                state = ControllerState(step=step, policy_version=step, sampler=SamplerState(epoch, position),
                                        sampling_seed=cfg.seed)
                save_checkpoint(run_dir, state, learner.save)
        export(learner, run_dir / "hf")
    finally:
        logger.close()
        system.shutdown()
    return run_dir


def export(learner: Any, out: Path) -> None:
    """The final model as a Hugging Face directory, written beside and renamed into place."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    learner.export_hf(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def summary(run_dir: str | Path) -> dict[str, float]:
    """First and last validation loss and the steps run, from metrics.jsonl."""
    from trainer.metrics import read_metrics

    valid = read_metrics(run_dir, "valid")
    train = read_metrics(run_dir, "train")
    return {"steps": float(train[-1]["step"]) if train else 0.0,
            "valid_loss_start": valid[0]["valid_loss"] if valid else math.nan,
            "valid_loss_end": valid[-1]["valid_loss"] if valid else math.nan}


def main(example: str, overrides: list[str]) -> int:
    """`python -m trainer sft --example NAME [--set key=value ...]`."""
    import sys

    from examples.configs import SFT_EXAMPLES
    from trainer.config import ConfigError, apply_overrides

    if example not in SFT_EXAMPLES:
        print(f"error: unknown SFT example {example!r}; known: {', '.join(sorted(SFT_EXAMPLES))}", file=sys.stderr)
        return 2
    try:
        cfg = apply_overrides(SFT_EXAMPLES[example](), overrides).validate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = train_sft(cfg)
    print(f"run directory: {run_dir}; model: {run_dir / 'hf'}; {summary(run_dir)}")
    return 0
