"""R1's RL for all scenarios, end to end on CPU: the `tiny_cpu_all_scenarios` example trains two GRPO steps with
real vLLM engines (the policy's and the judge's), a Megatron learner and Ray reward actors, one batch mixing
rule-based, judged and reward-model-scored data sources. The judge and the reward models come from
`examples.build_reward_models --quick` (untrained quality: this tests the plumbing, not their judgement)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dataclasses import replace

    from examples.build_reward_models import QUICK, RewardModelsBuild, build
    from examples.configs import tiny_cpu_all_scenarios
    from trainer.config import apply_overrides
    from trainer.controller import train

    out = tmp_path_factory.mktemp("all_scenarios")
    build(RewardModelsBuild(out_dir=str(out), **QUICK))
    cfg = apply_overrides(tiny_cpu_all_scenarios(), [
        f"output_dir={out / 'runs'}", "total_steps=2", "checkpoint_every=0", "eval.every_steps=0",
        "eval.samples_per_prompt=4", "data.eval_size=12", "algorithm.prompts_per_step=8", "algorithm.group_size=4",
        f"data.train_path={out}/data/all_scenarios/train.jsonl", f"data.eval_path={out}/data/all_scenarios/heldout.jsonl",
        f"reward.judge.model_path={out}/tiny-judge", f"reward.reward_model.helpfulness_path={out}/tiny-rm-helpful",
        f"reward.reward_model.harmlessness_path={out}/tiny-rm-harmless"])
    cfg = replace(cfg, cluster=replace(cfg.cluster, num_cpus=2))
    return train(cfg)


def test_one_run_mixes_rule_judge_and_reward_models(run_dir):
    from trainer.metrics import read_metrics

    train_rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in train_rows] == [1, 2]
    keys = set().union(*train_rows)
    # each scorer ran inside the GRPO loop: its components reached the step metrics
    assert {"reward/accuracy", "reward/format", "reward/language", "reward/judge", "reward/helpfulness",
            "reward/harmlessness"} <= keys
    for source in ("arithmetic", "addition_judged", "general"):
        assert any(r.get(f"source/{source}/samples", 0) > 0 for r in train_rows), source
    for r in train_rows:
        assert sum(r[k] for k in keys if k.endswith("/samples") and k in r) == 8 * 4    # no sample dropped
        # the untrained quick judge writes malformed verdicts: those are the only errors, counted, scored 0
        assert r["reward_errors"] <= r.get("source/addition_judged/samples", 0)
        assert 0 <= r["reward/helpfulness"] <= 1 and 0 <= r["reward/harmlessness"] <= 1
        assert {"reflection_words_per_response", "reflection_frac", "cot_lang/en", "cot_mixed_frac"} <= set(r)


def test_evaluation_reports_pass_at_k_and_the_plot_is_written(run_dir):
    from trainer.metrics import read_metrics

    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:
        assert r["pass@1"] <= r["pass@2"] <= r["pass@4"] <= 1.0
        assert r["cons@k"] <= r["pass@4"]   # the majority answer being right needs one right answer
        assert "reflection_words_per_response" in r and "cot_lang/en" in r
    assert (run_dir / "curves.png").stat().st_size > 10_000
