"""Prompt data sets: local JSONL or Parquet rows with `prompt`, `ground_truth` and optional `task`.

`PromptSampler` hands out B prompts per step in a seeded order, reshuffling every epoch, and its whole
state is two integers (epoch, position) so a resumed run continues with exactly the prompts the
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.templates import render
from trainer.types import Prompt

REQUIRED_FIELDS = ("prompt", "ground_truth")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the row."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .json lines or .parquet file, each checked for the required fields."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist (build the demo data with `python -m examples.build_tiny`)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise DataError(f"{path}: row {i} lacks field(s) {missing}; every row needs {list(REQUIRED_FIELDS)}")
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def load_prompts(path: str | Path, *, template: str, tokenizer: Any = None, default_task: str = "math",
                 limit: int | None = None) -> list[Prompt]:
    """Read a data set and render every prompt with `template`."""
    rows = read_rows(path)[:limit]
    return [
        Prompt(
            index=i,
            text=render(template, str(row["prompt"]), tokenizer),
            ground_truth=_as_text(row["ground_truth"]),
            task=str(row.get("task", default_task)),
        )
        for i, row in enumerate(rows)
    ]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next(self, count: int) -> list[Prompt]:
        """The next `count` prompts; an epoch boundary inside a step continues into the next epoch."""
        out: list[Prompt] = []
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
