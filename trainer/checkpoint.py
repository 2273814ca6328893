"""Resumable checkpoints, written atomically.

Layout under `run_dir/checkpoints/`:
  step_000010/learner/...     the learner's sharded state (model, optimizer, schedule, RNG per rank)
  step_000010/controller.json  step, policy_version, data position, RNG state of the controller
  latest                       name of the newest complete checkpoint

A checkpoint is written into `step_N.tmp/`, renamed into place once complete, and only then named in
`latest` (itself replaced atomically), so a run killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.data import SamplerState


@dataclass(frozen=True)
class ControllerState:
    step: int
    """Steps completed."""
    policy_version: int
    """Version of the weights after the last completed step."""
    sampler: SamplerState
    """Where the prompt sampler stands."""
    sampling_seed: int
    """Seed for the next step's rollouts."""


def save_checkpoint(run_dir: Path, state: ControllerState, save_learner: Callable[[Path], None],
                    *, keep: int = 2) -> Path:
    """Write a checkpoint of `state` plus the learner's (via `save_learner(dir)`); keep the newest `keep`."""
    root = run_dir / "checkpoints"
    name = f"step_{state.step:06d}"
    tmp, final = root / f"{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_learner(tmp / "learner")
    (tmp / "controller.json").write_text(json.dumps(asdict(state), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "controller.json").exists() else None


def load_controller_state(checkpoint: Path) -> ControllerState:
    raw = json.loads((checkpoint / "controller.json").read_text())
    return ControllerState(
        step=raw["step"],
        policy_version=raw["policy_version"],
        sampler=SamplerState(**raw["sampler"]),
        sampling_seed=raw["sampling_seed"],
    )
