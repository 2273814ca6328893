"""The session's one run of `r1_tiny --quick` (trainer/pipeline.py, examples/configs.py): every R1 stage on
real actors (vLLM engines, Megatron learner, Ray reward actors, the tiny judge and reward models of
`examples.build_reward_models --quick`) in one Ray, a few steps each: about 216 s on the 2-core machine
(2026-12-08, in a run of the suite at f2be437), nearly all of it the start-ups of its stages' actors (a vLLM
engine, a learner, reward actors).

The slow tests of a stage read this run's outputs instead of running the stage again:
tests/test_pipeline_tiny.py (the recipe), tests/test_sft_tiny.py (the cold start, and a resume of the
distillation), tests/test_rejection_tiny.py (the rejection stage), tests/test_all_scenarios.py (RL for all
scenarios). A test must not write under `run_dir`: it copies what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trainer.pipeline import PipelineConfig, StageConfig


@dataclass(frozen=True)
class QuickPipeline:
    """A finished `r1_tiny --quick` run."""

    config: PipelineConfig
    run_dir: Path
    """The pipeline's output_dir: `<stage>/` for each stage, `pipeline.json`."""
    reward_models_dir: Path
    """`examples.build_reward_models --quick` output the all-scenarios stage scored with."""

    def stage_config(self, name: str) -> StageConfig:
        return next(s.config for s in self.config.stages if s.name == name)

    def stage_dir(self, name: str) -> Path:
        """Where the stage wrote its run (metrics.jsonl, checkpoints/, hf/ or model/; for reject sft.jsonl)."""
        return self.run_dir / name


@pytest.fixture(scope="session")
def r1_tiny_quick(tmp_path_factory: pytest.TempPathFactory) -> QuickPipeline:
    import fcntl

    from examples.build_reward_models import QUICK, RewardModelsBuild, build
    from examples.build_sft_data import build as build_sft_data
    from examples.build_student import install as install_student
    from examples.configs import r1_tiny
    from trainer.pipeline import run_pipeline

    if not Path("artifacts/tiny-qwen2/config.json").exists():
        pytest.skip("run `python -m examples.build_tiny` (make test does) first")
    with open("artifacts/.sft_data.lock", "w") as lock:  # tests and developers share artifacts/
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_sft_data("artifacts", n_train=2000, n_valid=200)
    with open("artifacts/.tiny_student.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install_student("artifacts")
    tmp = tmp_path_factory.mktemp("r1_tiny")
    build(RewardModelsBuild(out_dir=str(tmp / "rm"), **QUICK))
    cfg = r1_tiny(quick=True, output_dir=str(tmp / "run"), reward_models_dir=str(tmp / "rm"))
    run_pipeline(cfg)
    return QuickPipeline(config=cfg, run_dir=tmp / "run", reward_models_dir=tmp / "rm")
