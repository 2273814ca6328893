"""Prompt data sets: local JSONL or Parquet rows with `prompt`, `ground_truth` and optional `task`.

`python -m examples.prepare_data gsm8k|math` writes such files from the published GSM8K and MATH
layouts. Loading renders every prompt with the template and drops the ones longer than
`model.max_prompt_tokens`, counted as the engines will count them: the rendered text tokenized by the
model's tokenizer with its default special tokens (`tokenizer(text)`, as vLLM encodes a text prompt).
How many were dropped is logged, and a file where every prompt is too long is an error.

`check_run_inputs` reads the model directory, the tokenizer and both data files before anything starts,
so a wrong path costs a second instead of the minutes it takes to start every actor.

`PromptSampler` hands out B prompts per step in a seeded order, reshuffling every epoch, and its whole
state is two integers (epoch, position) so a resumed run continues with exactly the prompts the
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.templates import render
from trainer.types import Prompt

if TYPE_CHECKING:
    from trainer.config import TrainConfig

REQUIRED_FIELDS = ("prompt", "ground_truth")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file (or model directory) that cannot be used; the message names the file and the row."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .json lines or .parquet file, each checked for the required fields."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what} (the demo's data: `python -m examples.build_tiny`; "
                        f"GSM8K / MATH: `python -m examples.prepare_data`)")
    rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a JSON {type(row).__name__}, not an object with fields "
                            f"{list(REQUIRED_FIELDS)}")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise DataError(f"{path}: row {i} lacks field(s) {missing}; every row needs {list(REQUIRED_FIELDS)}")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{path}: row {i} has an empty or non-text prompt: {row['prompt']!r:.80}")
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(path).to_pylist())
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    return rows


def load_prompts(path: str | Path, *, template: str, tokenizer: Any = None, default_task: str = "math",
                 limit: int | None = None, max_prompt_tokens: int | None = None) -> list[Prompt]:
    """Read a data set, render every prompt with `template`, and drop prompts over `max_prompt_tokens`.

    `limit` keeps the first `limit` prompts that fit. A prompt keeps its row number as `index`, so
    indices stay stable whatever is dropped. Counting tokens needs the model's `tokenizer`.
    """
    rows = read_rows(path)
    prompts = [
        Prompt(
            index=i,
            text=render(template, str(row["prompt"]), tokenizer),
            ground_truth=_as_text(row["ground_truth"]),
            task=str(row.get("task", default_task)),
        )
        for i, row in enumerate(rows)
    ]
    if max_prompt_tokens is not None:
        prompts = drop_long_prompts(prompts, tokenizer, max_prompt_tokens, source=str(path))
    return prompts[:limit]


def prompt_token_counts(prompts: list[Prompt], tokenizer: Any) -> list[int]:
    """Tokens of each rendered prompt as the engine counts them (`tokenizer(text)`, default special tokens)."""
    if tokenizer is None:
        raise ValueError("counting prompt tokens needs the model's tokenizer")
    return [len(ids) for ids in tokenizer([p.text for p in prompts])["input_ids"]]


def drop_long_prompts(prompts: list[Prompt], tokenizer: Any, max_prompt_tokens: int, *,
                      source: str) -> list[Prompt]:
    """The prompts of at most `max_prompt_tokens` tokens; logs how many were dropped."""
    counts = prompt_token_counts(prompts, tokenizer)
    kept = [p for p, n in zip(prompts, counts, strict=True) if n <= max_prompt_tokens]
    dropped = len(prompts) - len(kept)
    if not kept:
        raise DataError(f"{source}: all {len(prompts)} prompts are longer than model.max_prompt_tokens = "
                        f"{max_prompt_tokens} tokens (the shortest has {min(counts)}); raise it, e.g. "
                        f"--set model.max_prompt_tokens={min(counts)}")
    if dropped:
        log.warning("%s: dropped %d of %d prompts longer than model.max_prompt_tokens = %d tokens "
                    "(longest: %d tokens)", source, dropped, len(prompts), max_prompt_tokens, max(counts))
    return kept


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load_run_prompts(cfg: TrainConfig, tokenizer: Any) -> tuple[list[Prompt], list[Prompt]]:
    """The run's training prompts and its first `data.eval_size` held-out prompts, long ones dropped."""
    d, task, longest = cfg.data, cfg.reward.verifier, cfg.model.max_prompt_tokens
    train = load_prompts(d.train_path, template=d.template, tokenizer=tokenizer, default_task=task,
                         max_prompt_tokens=longest)
    heldout = load_prompts(d.eval_path, template=d.template, tokenizer=tokenizer, default_task=task,
                           max_prompt_tokens=longest, limit=d.eval_size)
    return train, heldout


def check_model_dir(path: str | Path) -> Path:
    """A local Hugging Face model directory, or a `DataError` that says what is missing.

    Nothing is downloaded at run time, so a path that is not a directory is an error here instead of
    the hub lookup (and its misleading "repo id" message) that `from_pretrained` would try.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"model.path = {str(path)!r} is not a directory: point it at a local Hugging Face "
                        f"model directory (config.json, *.safetensors, tokenizer files); nothing is downloaded")
    if not (path / "config.json").is_file():
        raise DataError(f"model.path = {str(path)!r} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")):
        raise DataError(f"model.path = {str(path)!r} holds no *.safetensors weights")
    return path


def check_run_inputs(cfg: TrainConfig) -> dict[str, int]:
    """Model directory, tokenizer and both data files of a run, checked before any actor starts.

    Returns the prompt counts (`train`, `eval`); raises `DataError` naming the file (and line) at fault.
    """
    from transformers import AutoTokenizer

    model_dir = check_model_dir(cfg.model.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers raises several types for a broken tokenizer
        raise DataError(f"model.path = {str(model_dir)!r}: the tokenizer does not load "
                        f"({type(e).__name__}: {e})") from None
    train, heldout = load_run_prompts(cfg, tokenizer)
    return {"train": len(train), "eval": len(heldout)}


@dataclass(frozen=True)
class SamplerState:
    epoch: int = 0
    """Completed passes over the data."""
    position: int = 0
    """Prompts of the current epoch already handed out."""


class PromptSampler:
    """B prompts at a time, seeded order, reshuffled per epoch; resumable from `state`."""

    def __init__(self, prompts: list[Prompt], *, seed: int, shuffle: bool = True,
                 state: SamplerState | None = None) -> None:
        if not prompts:
            raise DataError("no training prompts")
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.state = state or SamplerState()
        self.requeued: list[Prompt] = []
        """Handed out before the seeded order continues: prompts in flight when a checkpoint was written
        (see trainer.ledger); not part of `state`, since the ledger saved with it lists them."""

    def requeue(self, indices: list[int]) -> None:
        """Hand out the prompts with these ids (`Prompt.index`) first, in this order."""
        by_index = {p.index: p for p in self.prompts}
        missing = [i for i in indices if i not in by_index]
        if missing:
            raise DataError(f"prompts {missing[:8]} to hand out again are not in the training data")
        self.requeued.extend(by_index[i] for i in indices)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next(self, count: int) -> list[Prompt]:
        """The next `count` prompts; an epoch boundary inside a step continues into the next epoch."""
        out: list[Prompt] = self.requeued[:count]
        self.requeued = self.requeued[count:]
        while len(out) < count:
            order = self._order(self.state.epoch)
            take = min(count - len(out), len(order) - self.state.position)
            out.extend(self.prompts[i] for i in order[self.state.position:self.state.position + take])
            position = self.state.position + take
            if position == len(order):
                self.state = SamplerState(epoch=self.state.epoch + 1, position=0)
            else:
                self.state = SamplerState(epoch=self.state.epoch, position=position)
        return out
