"""`ray job submit` end to end, with the demo's R1-Zero self-evolution as the job: a Ray head on 127.0.0.1,
the first STEPS steps of `make demo` (`tiny_cpu_reflect`, from the shipped reflection base) submitted with
--working-dir, its metrics read back, and the exported model evaluated by `examples.eval_base` as a user would.

The job is the demo's run (same config, seed and base; held-out evaluation on 64 prompts at steps 0 and
STEPS): held-out pass@1, the mean response length and the share of responses that check their guess must all
rise, with margin, and checked responses must be the more accurate (docs/self_evolution.md gives the full
run's figures: at step 30 of RL seeds 0, 1, 2 the three had risen far beyond these bounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.jobs import start_local_head
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2-reflect"
DATA = ROOT / "artifacts" / "data" / "arithmetic"
STEPS = 30
"""Where the full runs have taken off (reflection from about 5% to over 60%) on every measured seed."""

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny_reflect` (make test does) first")
def test_ray_job_submit_demo_run_self_evolves(tmp_path):
    head = start_local_head(num_cpus=2)
    out = tmp_path / "runs"
    try:
        result = head.submit(
            ["python", "-m", "trainer", "train", "--example", "tiny_cpu_reflect",
             "--set", f"model.path={MODEL}", "--set", f"data.train_path={DATA / 'train.jsonl'}",
             "--set", f"data.eval_path={DATA / 'heldout.jsonl'}", "--set", f"output_dir={out}",
             "--set", "name=job", "--set", f"total_steps={STEPS}", "--set", "checkpoint_every=0",
             "--set", f"eval.every_steps={STEPS}", "--set", "data.eval_size=64"],
            working_dir=ROOT, timeout_s=900,
        )
    finally:
        head.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout, result.stdout[-2000:]
    run_dir = out / "job"
    evals = read_metrics(run_dir, "eval")
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in evals] == [0, STEPS]
    assert len(train) == STEPS
    assert (run_dir / "curves.png").stat().st_size > 10_000
    # The engines sampled with the weights of the previous step every time.
    assert all(r["policy_version_lag"] == 0 for r in train)
    # Self-evolution: checks, length and held-out pass@1 rise together, and the check is why answers are right.
    start, end = evals
    assert start["reflection_frac"] < 0.15  # the base rarely checks
    assert end["reflection_frac"] > start["reflection_frac"] + 0.25
    assert end["response_length_mean"] > 1.3 * start["response_length_mean"]
    assert end["pass@1"] > start["pass@1"] + 0.15
    assert end["reflection_accuracy_with"] > end["reflection_accuracy_without"] + 0.3
    first = sum(r["accuracy"] for r in train[:4]) / 4
    last = sum(r["accuracy"] for r in train[-4:]) / 4
    assert last > first, (first, last)
    # The trained model is a Hugging Face directory that the README's evaluation command reads.
    from examples.eval_base import main as eval_base

    result = eval_base(["--model", str(run_dir / "model"), "--data", str(DATA / "heldout.jsonl"),
                        "--n", "64", "--k", "4"])
    assert result.num_prompts == 64 and 0.0 < result.pass_at_1 <= 1.0
