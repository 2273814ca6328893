"""`ray job submit` end to end: a Ray head on 127.0.0.1, the tiny run submitted with --working-dir,
and its metrics read back to check that the policy learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.jobs import start_local_head
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"
STEPS = 16

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first")
def test_ray_job_submit_tiny_run_learns(tmp_path):
    head = start_local_head(num_cpus=2)
    out = tmp_path / "runs"
    try:
        result = head.submit(
            ["python", "-m", "trainer", "train", "--example", "tiny_cpu",
             "--set", f"model.path={MODEL}", "--set", f"data.train_path={DATA / 'train.jsonl'}",
             "--set", f"data.eval_path={DATA / 'heldout.jsonl'}", "--set", f"output_dir={out}",
             "--set", "name=job", "--set", f"total_steps={STEPS}", "--set", "eval.every_steps=0",
             "--set", "data.eval_size=64", "--set", "checkpoint_every=0"],
            working_dir=ROOT, timeout_s=900,
        )
    finally:
        head.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout, result.stdout[-2000:]
    evals = read_metrics(out / "job", "eval")
    train = read_metrics(out / "job", "train")
    assert [r["step"] for r in evals] == [0, STEPS]
    assert len(train) == STEPS
    assert (out / "job" / "curves.png").exists()
    # The engines sampled with the weights of the previous step every time.
    assert all(r["policy_version_lag"] == 0 for r in train)
    # Learning: held-out pass@1 and the training-batch accuracy both went up.
    assert evals[-1]["pass@1"] > evals[0]["pass@1"] + 0.05, evals
    first = sum(r["accuracy"] for r in train[:4]) / 4
    last = sum(r["accuracy"] for r in train[-4:]) / 4
    assert last > first, (first, last)
