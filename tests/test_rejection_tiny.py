"""Rejection sampling end to end: the rejection stage of the session's `r1_tiny --quick` run
(tests/pipeline_fixtures.py), a real vLLM engine and a reward actor under Ray sampling the RL stage's model.
Every kept sample is correct and passes R1's filters, and the report accounts for every sample."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_reject_on_one_engine_keeps_only_correct_filtered_samples(r1_tiny_quick):
    from reward_server.filters import FilterSettings, first_rejection, rules
    from reward_server.verifiers import extract_answer, verify_arithmetic
    from trainer.rejection import REASONS
    from trainer.sft import read_sft_rows
    from trainer.templates import chain_of_thought, completion_for_reward, render

    cfg = r1_tiny_quick.stage_config("reject")
    out = r1_tiny_quick.stage_dir("reject")
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == cfg.max_prompts == 64 and report["samples"] == 64 * cfg.samples_per_prompt
    assert report["kept"] + sum(report["dropped"].values()) == report["samples"]
    assert set(report["dropped"]) == set(REASONS)
    assert report["kept"] > 0 and report["dropped"]["incorrect"] > 0, report

    rows = read_sft_rows(out / "sft.jsonl")
    assert len(rows) == report["kept"]
    table = rules(FilterSettings())
    with open(cfg.data.train_path) as f:
        questions = {json.loads(line)["prompt"] for line, _ in zip(f, range(cfg.max_prompts), strict=False)}
    for row in rows:
        assert row["prompt"] in questions
        text = completion_for_reward(render(cfg.data.template, row["prompt"]), row["response"])
        assert verify_arithmetic(extract_answer(text), row["ground_truth"]), row
        cot = chain_of_thought(text)
        assert cot is not None and first_rejection(cot, table) is None
    assert len({(r["prompt"], r["response"]) for r in rows}) == len(rows)
