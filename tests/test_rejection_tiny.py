"""Rejection sampling end to end on the tiny model: one real vLLM engine and a reward actor under Ray.
Every kept sample is correct and passes R1's filters, and the report accounts for every sample."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("GRPO_RAY_TINY_MODEL", ROOT / "artifacts" / "tiny-qwen2"))
DATA = MODEL.parent / "data" / "arithmetic" / "train.jsonl"
"""The prompts written beside the model by the same build."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL / "config.json").exists() or not DATA.exists(),
                       reason="run `python -m examples.build_tiny` (make test does) first"),
]


def test_reject_on_one_engine_keeps_only_correct_filtered_samples(tmp_path):
    from reward_server.filters import FilterSettings, first_rejection, rules
    from reward_server.verifiers import extract_answer, verify_arithmetic
    from trainer.rejection import REASONS, main
    from trainer.sft import read_sft_rows
    from trainer.templates import chain_of_thought, completion_for_reward, r1_zero

    # The tiny base was pretrained on the R1-Zero layout, so sample it in that template.
    overrides = [f"output_dir={tmp_path}", f"data.train_path={DATA}", "data.template=r1_zero",
                 "max_prompts=16", "prompts_per_batch=8", "samples_per_prompt=4", "keep_per_prompt=0",
                 "model.max_response_tokens=64", "cluster.num_cpus=2"]
    assert main("tiny_cpu_reject", overrides, checkpoint=str(MODEL)) == 0
    out = tmp_path / "tiny_cpu_reject"
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == 16 and report["samples"] == 64
    assert report["kept"] + sum(report["dropped"].values()) == report["samples"]
    assert set(report["dropped"]) == set(REASONS)
    assert report["kept"] > 0 and report["dropped"]["incorrect"] > 0, report

    rows = read_sft_rows(out / "sft.jsonl")
    assert len(rows) == report["kept"]
    table = rules(FilterSettings())
    questions = {json.loads(line)["prompt"] for line in DATA.read_text().splitlines()[:16]}
    for row in rows:
        assert row["prompt"] in questions
        text = completion_for_reward(r1_zero(row["prompt"]), row["response"])
        assert verify_arithmetic(extract_answer(text), row["ground_truth"]), row
        cot = chain_of_thought(text)
        assert cot is not None and first_rejection(cot, table) is None
    assert len({(r["prompt"], r["response"]) for r in rows}) == len(rows)

