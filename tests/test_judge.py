"""The generative judge: strict verdict parsing on many malformed outputs, the judge prompt, the
prediction it grades, and scoring through a fake judge (the real engine path is
tests/test_rollout.py::test_judge_served_on_a_rollout_engine, on that file's engines)."""

from __future__ import annotations

import pytest

from reward_server.judge import MALFORMED, JudgeScorer, judge_prompt, parse_verdict, prediction_of
from trainer.templates import r1_cold_start, r1_zero, readable_response
from trainer.types import Completion, Prompt


@pytest.mark.parametrize("text, correct", [
    ("Verdict: CORRECT", True),
    ("Verdict: INCORRECT", False),
    ("verdict: CORRECT", True),
    ("VERDICT:INCORRECT", False),
    ("  Verdict:   CORRECT  ", True),
    ("The answers agree.\nVerdict: CORRECT", True),
    ("Both are 433.\n\nVerdict: CORRECT\n\n", True),
    ("They differ: 433 vs 434.\nVerdict: INCORRECT\n", False),
])
def test_well_formed_verdicts(text, correct):
    verdict = parse_verdict(text)
    assert verdict is not None and verdict.correct is correct


MALFORMED_OUTPUTS = [
    "",
    "   \n\n ",
    "CORRECT",
    "INCORRECT",
    "The answer is correct.",
    "Verdict:",
    "Verdict: ",
    "Verdict: correct",                      # value must be in capitals
    "Verdict: Correct",
    "Verdict: CORRECT.",
    "Verdict: NOT CORRECT",
    "Verdict: CORRECT or INCORRECT",
    "Verdict: CORRECTINCORRECT",
    "Verdict: YES",
    "Verdict: 1",
    "Verdict - CORRECT",
    "Verdict CORRECT",
    "Final Verdict: CORRECT",                # not a verdict line, and no verdict line
    "**Verdict: CORRECT**",
    "Verdict: CORRECT\nVerdict: CORRECT",    # two verdict lines, even agreeing
    "Verdict: CORRECT\nVerdict: INCORRECT",
    "Verdict: INCORRECT\nActually it is right.",  # text after the verdict
    "Verdict: CORRECT\nok",
    "Verdict: CORRECT\r",
    "Verdict:\tCORRECT\tbecause",
    "verdict: INCORRECT!",
    "Verdict: ＣＯＲＲＥＣＴ",                  # full-width letters
    "Verdict: CORRECT" + " extra" * 1000,
    "Verdict" * 10_000,
    "\n" * 100_000 + "Verdict: CORRECTED",
]


@pytest.mark.parametrize("text", MALFORMED_OUTPUTS)
def test_malformed_verdicts_are_none(text):
    assert parse_verdict(text) is None


def test_judge_prompt_holds_question_truth_and_prediction():
    p = judge_prompt("What is 2+2?", "4", "four")
    assert "Question: What is 2+2?" in p and "Reference answer: 4" in p and "Answer to grade: four" in p
    assert len(judge_prompt("q", "a", "x" * 100_000)) < 3000


def test_prediction_is_the_final_answer_or_the_summary():
    assert prediction_of(r1_zero("q"), "1+1=2</think><answer>2</answer>") == "2"
    readable = readable_response("thinking", "Paris is the capital.")
    assert prediction_of(r1_cold_start("q"), readable) == "Paris is the capital."
    assert prediction_of(r1_zero("q"), "hmm</think> It is Paris.") == "It is Paris."
    assert prediction_of("plain prompt", "just text") == "just text"


def completion(text: str) -> Completion:
    return Completion(token_ids=(1,), text=text, rollout_logprobs=(0.0,), finish_reason="stop")


def test_scorer_maps_verdicts_to_rewards_and_malformed_to_errors():
    seen: list[str] = []

    def fake_judge(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        return ["Verdict: CORRECT", "Reasoning.\nVerdict: INCORRECT", "I think it is right"]

    items = [(Prompt(index=i, text=r1_zero(f"q{i}"), ground_truth="7", task="general"),
              completion(f"x</think><answer>{a}</answer>")) for i, a in enumerate(["7", "8", "7"])]
    scorer = JudgeScorer(fake_judge, question_of=lambda p: p.text.rsplit("User: ", 1)[1].split(" Assistant")[0],
                         weight=2.0)
    results = scorer.score(items)
    assert [r.reward for r in results] == [2.0, 0.0, 0.0]
    assert [r.correct for r in results] == [True, False, False]
    assert [r.error for r in results] == [None, None, MALFORMED]
    assert results[0].components == {"judge": 1.0}
    assert "Question: q1\n" in seen[1] and "Answer to grade: 8\n" in seen[1] and "Reference answer: 7" in seen[1]
    assert scorer.score([]) == []


def test_scorer_refuses_a_judge_that_loses_outputs():
    scorer = JudgeScorer(lambda prompts: [])
    with pytest.raises(RuntimeError, match="0 outputs for 1"):
        scorer.score([(Prompt(0, "p", "g"), completion("c"))])
