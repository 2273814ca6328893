"""`r1_tiny --quick` end to end: every R1 stage on real actors (vLLM engines, Megatron learner, Ray reward
actors, the tiny judge and reward models of `examples.build_reward_models --quick`), a few steps each, in one
Ray: the session's run (tests/pipeline_fixtures.py), which the SFT, rejection and all-scenarios tests read
too. The stages' numbers are checked for what a few steps
can show honestly (outputs exist and are consistent, the cold start keeps the base's skill, the shipped
student is pretrained), not for the full run's gains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline_dir(r1_tiny_quick):
    """The session's `r1_tiny --quick` run (tests/pipeline_fixtures.py)."""
    return r1_tiny_quick.run_dir


def test_every_stage_ran_and_wrote_its_output(pipeline_dir):
    table = json.loads((pipeline_dir / "pipeline.json").read_text())
    assert table["ran"] == ["base", "cold_start", "rl", "reject", "sft", "all_scenarios", "student", "distill",
                            "student_grpo"]
    for name, record in table["stages"].items():
        if record["kind"] == "reject":
            rows = [json.loads(line) for line in Path(record["data"]).read_text().splitlines()]
            assert rows and all(r["response"].startswith("|special_token|") for r in rows)
        else:
            assert (Path(record["model"]) / "config.json").exists(), name
    assert table["stages"]["student"]["layers"] == table["stages"]["base"]["layers"] // 2
    assert table["stages"]["student"]["vocab_size"] == table["stages"]["base"]["vocab_size"]  # the marker too
    for name in ("rl", "all_scenarios", "student_grpo"):
        assert table["stages"][name]["steps"] == {"rl": 3, "all_scenarios": 2, "student_grpo": 3}[name]


def test_the_table_holds_consistent_numbers(pipeline_dir):
    table = json.loads((pipeline_dir / "pipeline.json").read_text())
    rows = {r["model"]: r for r in table["table"]}
    assert set(rows) == {"base", "student", "cold_start", "rl", "sft", "all_scenarios", "distill", "student_grpo",
                         "student (readable prompt)"}
    for r in rows.values():
        assert 0 <= r["pass@1"] <= 1 and 0 <= r["cons@4"] <= 1 and 1 <= r["response_tokens"] <= 96
    report = table["rejection"]["reject"]
    assert report["kept"] + sum(report["dropped"].values()) == report["samples"] == 64 * 8
    # An epoch's last step takes the samples left over, so distillation sees at most as many sequences.
    assert table["student"]["grpo_sequences"] == 6 * 32 >= table["student"]["distilled_sequences"] > 0
    # The cold start's fix: 40 SFT steps in the readable format keep a real share of the base's skill
    # (0% before the marker became one token behind the base's own prompt).
    assert rows["cold_start"]["pass@1"] >= 0.4 * rows["base"]["pass@1"] > 0
    # The shipped student is pretrained: it solves held-out sums before any distillation (0.074 pass@1 on 128
    # prompts x 4; the cut, untrained student solved none).
    assert rows["student"]["pass@1"] > 0


def test_a_rerun_finds_every_stage_up_to_date(r1_tiny_quick, capsys):
    from examples.configs import r1_tiny
    from trainer.pipeline import run_pipeline

    cfg = r1_tiny(quick=True, output_dir=str(r1_tiny_quick.run_dir),
                  reward_models_dir=str(r1_tiny_quick.reward_models_dir))
    table = r1_tiny_quick.run_dir / "pipeline.json"
    first_run = table.read_bytes()  # the rerun rewrites the table; other tests read the first run's
    try:
        assert run_pipeline(cfg).ran == []
    finally:
        table.write_bytes(first_run)
    assert capsys.readouterr().out.count("up to date") == 9
