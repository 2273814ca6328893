"""R1's RL for all scenarios, end to end on CPU: the all-scenarios stage of the session's `r1_tiny --quick` run
(tests/pipeline_fixtures.py; `tiny_cpu_all_scenarios` on the readable format, from the stage before) trains
two GRPO steps with real vLLM engines (the policy's and the judge's), a Megatron learner and Ray reward
actors, one batch mixing rule-based, judged and reward-model-scored data sources. The judge and the reward
models come from `examples.build_reward_models --quick` (untrained quality: this tests the plumbing, not
their judgement)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(r1_tiny_quick):
    return r1_tiny_quick.stage_dir("all_scenarios")


@pytest.fixture
def cfg(r1_tiny_quick):
    return r1_tiny_quick.stage_config("all_scenarios")


def test_one_run_mixes_rule_judge_and_reward_models(run_dir, cfg):
    from trainer.metrics import read_metrics

    assert cfg.reward.routes == ("addition_judged:judge", "general:reward_model")
    train_rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in train_rows] == [1, 2]
    keys = set().union(*train_rows)
    # each scorer ran inside the GRPO loop: its components reached the step metrics
    assert {"reward/accuracy", "reward/format", "reward/language", "reward/judge", "reward/helpfulness",
            "reward/harmlessness"} <= keys
    for source in ("arithmetic", "addition_judged", "general"):
        assert any(r.get(f"source/{source}/samples", 0) > 0 for r in train_rows), source
    sequences = cfg.algorithm.prompts_per_step * cfg.algorithm.group_size
    for r in train_rows:
        assert sum(r[k] for k in keys if k.endswith("/samples") and k in r) == sequences    # no sample dropped
        # the untrained quick judge writes malformed verdicts: those are the only errors, counted, scored 0
        assert r["reward_errors"] <= r.get("source/addition_judged/samples", 0)
        assert 0 <= r["reward/helpfulness"] <= 1 and 0 <= r["reward/harmlessness"] <= 1
        assert {"reflection_words_per_response", "reflection_frac", "cot_lang/en", "cot_mixed_frac"} <= set(r)


def test_evaluation_reports_pass_at_k_and_the_plot_is_written(run_dir, cfg):
    from trainer.metrics import read_metrics

    assert cfg.eval.samples_per_prompt == 4
    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:
        assert r["pass@1"] <= r["pass@2"] <= r["pass@4"] <= 1.0
        assert r["cons@k"] <= r["pass@4"]   # the majority answer being right needs one right answer
        assert "reflection_words_per_response" in r and "cot_lang/en" in r
    assert (run_dir / "curves.png").stat().st_size > 10_000
