"""The whole loop on the tiny model: real vLLM engines, a TP=2 Megatron learner with its reference,
reward actors, weight sync, checkpoints; then a run stopped after a checkpoint resumes exactly."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from trainer.config import apply_overrides
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first"),
]


def tiny_config(out: Path, name: str, **changes):
    from examples.configs import tiny_cpu

    cfg = apply_overrides(tiny_cpu(), [
        f"model.path={MODEL}", f"data.train_path={DATA / 'train.jsonl'}",
        f"data.eval_path={DATA / 'heldout.jsonl'}", f"output_dir={out}", f"name={name}",
        "data.eval_size=16", "eval.every_steps=0", "eval.samples_per_prompt=2",
    ])
    return replace(cfg, **changes)


def test_run_checkpoint_and_exact_resume(tmp_path):
    from trainer.controller import train

    # The uninterrupted run: 3 steps, checkpoints after steps 2 and 3.
    full = train(tiny_config(tmp_path, "full", total_steps=3, checkpoint_every=2))
    train_rows = read_metrics(full, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert [r["step"] for r in read_metrics(full, "eval")] == [0, 3]
    assert (full / "curves.png").exists() and any((full / "tb").iterdir())
    for row in train_rows:
        # vLLM sampled with exactly the learner's weights: same logprobs up to fp32 noise.
        assert row["logprob_gap_max"] < 1e-3, row
        assert row["policy_version_lag"] == 0
        assert row["reward_errors"] == 0
        for key in ("loss", "kl", "entropy", "grad_norm", "clip_frac_low", "clip_frac_high", "accuracy",
                    "reward/accuracy", "reward/format", "response_length_mean", "truncated_frac",
                    "zero_variance_group_frac", "time/rollout", "time/train", "tokens_per_s"):
            assert key in row, key

    # A run killed after its step-2 checkpoint: its directory holds that checkpoint as the newest.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_000003")
    (resumed_dir / "checkpoints" / "latest").write_text("step_000002")
    resumed = train(tiny_config(tmp_path, "resumed", total_steps=3, checkpoint_every=2))
    again = read_metrics(resumed, "train")
    assert [r["step"] for r in again] == [1, 2, 3]
    # Step 3 after the resume is step 3 of the uninterrupted run: same prompts, same samples, same loss.
    for key in ("reward", "accuracy", "response_length_mean", "loss", "pg_loss", "kl", "grad_norm"):
        assert again[2][key] == pytest.approx(train_rows[2][key], rel=1e-6, abs=1e-7), key

