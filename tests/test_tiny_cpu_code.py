"""The `tiny_cpu_code` example end to end on CPU: two GRPO steps from the shipped code base with a real vLLM
engine, a Megatron learner and Ray reward actors whose `code` verifier runs every program in the sandbox;
the base already writes programs that pass the hidden cases, so evaluation finds some right.

One engine and a TP=1 learner instead of the example's two and TP=2 (about 20 s less start-up on 2 cores):
the layouts are the end-to-end test's subject (tests/test_end_to_end.py runs the demo's); the code reward's
path through the loop is this test's, and it is the same in either. It runs in the suite's shared Ray."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_example_trains_two_steps(shared_ray, tmp_path):
    from examples.build_tiny_code import DATA_DIR, install
    from examples.configs import tiny_cpu_code
    from trainer.config import apply_overrides
    from trainer.controller import train
    from trainer.metrics import read_metrics

    model = install(tmp_path)
    data = tmp_path / DATA_DIR
    cfg = apply_overrides(tiny_cpu_code(), [
        f"model.path={model}", f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'heldout.jsonl'}",
        f"output_dir={tmp_path / 'runs'}", "total_steps=2", "checkpoint_every=0", "eval.every_steps=2",
        "data.eval_size=16", "rollout.num_engines=1", "learner.tensor_parallel_size=1"])
    run_dir = train(cfg)

    train_rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert r["reward_errors"] == 0  # every program was judged: a wrong one is a wrong answer, not an error
        assert 0.0 <= r["reward/accuracy"] <= 1.0
    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 2]
    assert evals[0]["pass@1"] > 0  # the base's programs pass hidden cases in the sandbox
