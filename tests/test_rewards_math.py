"""Math accuracy: answer extraction plus symbolic verification, and the killable sandbox."""

from __future__ import annotations

import time

import pytest

from reward_server.math_answer import normalize_answer, numeric_eq, verify_math
from reward_server.rewards import accuracy_reward
from reward_server.sandbox import VerifierError, VerifierSandbox, VerifierTimeout
from trainer.config import RewardConfig

# (completion text, ground truth, accepted)
MATH_CASES = [
    # integers and signs
    ("<answer>5</answer>", "5", True),
    ("<answer> 5 </answer>", "5", True),
    ("<answer>4</answer>", "5", False),
    ("<answer>-3</answer>", "3", False),
    ("<answer>-3</answer>", "-3", True),
    ("<answer>007</answer>", "7", True),
    # decimals vs fractions
    ("<answer>0.5</answer>", r"\frac{1}{2}", True),
    ("<answer>\\frac{1}{2}</answer>", "0.5", True),
    ("<answer>\\dfrac{1}{2}</answer>", "1/2", True),
    ("<answer>\\tfrac{3}{4}</answer>", "0.75", True),
    ("<answer>1/3</answer>", r"\frac{1}{3}", True),
    ("<answer>0.3</answer>", r"\frac{1}{3}", False),
    ("<answer>3.0</answer>", "3", True),
    ("<answer>12</answer>", "12.00", True),
    ("<answer>\\frac{2}{4}</answer>", r"\frac{1}{2}", True),
    # roots and pi
    ("<answer>2\\sqrt{2}</answer>", r"\sqrt{8}", True),
    ("<answer>\\sqrt{2}/2</answer>", r"\frac{1}{\sqrt{2}}", True),
    ("<answer>\\sqrt{3}</answer>", r"\sqrt{2}", False),
    ("<answer>\\pi/2</answer>", r"\frac{\pi}{2}", True),
    ("<answer>π</answer>", r"\pi", True),
    ("<answer>2\\pi</answer>", r"\pi", False),
    # percentages, thousands separators, currency, units
    ("<answer>50\\%</answer>", "0.5", True),
    ("<answer>50%</answer>", "50", True),
    ("<answer>1,000</answer>", "1000", True),
    ("<answer>1{,}000</answer>", "1000", True),
    ("<answer>1,234,567</answer>", "1234567", True),
    ("<answer>\\$1{,}234.50</answer>", "1234.5", True),
    ("<answer>5 \\text{ cm}</answer>", "5", True),
    ("<answer>5\\text{ meters}</answer>", "5", True),
    ("<answer>5 dollars</answer>", "5", True),
    ("<answer>6 dollars</answer>", "5", False),
    # scientific notation
    ("<answer>1.5e3</answer>", "1500", True),
    ("<answer>2E-2</answer>", "0.02", True),
    ("<answer>1.5 \\times 10^{3}</answer>", "1500", True),
    ("<answer>1.5 \\times 10^{4}</answer>", "1500", False),
    # intervals, sets, tuples, matrices
    ("<answer>(1, 2]</answer>", "(1,2]", True),
    ("<answer>[1,2]</answer>", "(1,2)", False),
    ("<answer>1 < x < 2</answer>", "(1,2)", True),
    ("<answer>\\{1, 2\\}</answer>", r"\{2,1\}", True),
    ("<answer>\\{1, 3\\}</answer>", r"\{2,1\}", False),
    ("<answer>(1,2)</answer>", "(2,1)", False),
    (
        "<answer>\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}</answer>",
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        True,
    ),
    (
        "<answer>\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}</answer>",
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        False,
    ),
    # equations vs values, expressions
    ("<answer>x=3</answer>", "3", True),
    ("<answer>x = 3</answer>", "3", True),
    ("<answer>3</answer>", "x=3", True),
    ("<answer>x=4</answer>", "3", False),
    ("<answer>x^2+2x+1</answer>", "(x+1)^2", True),
    ("<answer>2^{10}</answer>", "1024", True),
    ("<answer>\\infty</answer>", r"-\infty", False),
    # extraction: boxed, several answers, nesting
    ("the result is \\boxed{42}", "42", True),
    ("first \\boxed{41} then corrected \\boxed{42}", "42", True),  # a self-correction: the last box
    ("\\boxed{42} then \\boxed{41}", "42", False),
    ("\\boxed{41}, \\boxed{42}", "42", False),  # one answer listing two values
    ("<answer>\\boxed{3} or \\boxed{4}</answer>", "3", False),
    ("<answer>1</answer> ... <answer>2</answer>", "2", True),
    ("<answer>2</answer> ... <answer>1</answer>", "2", False),
    ("\\boxed{\\frac{1}{\\sqrt{4}}}", "0.5", True),
    ("<answer>The answer is $5$</answer>", "5", True),
    # self-correction: the last box counts; a hedge in the final answer stays wrong
    ("so \\boxed{12}. Wait, I dropped a term: \\boxed{14}", "14", True),
    ("so \\boxed{12}. Wait, I dropped a term: \\boxed{14}", "12", False),
    ("so \\boxed{12}, or maybe \\boxed{14}", "14", False),
    ("<answer>12 or 14</answer>", "14", False),
    ("<answer>\\boxed{12, 14}</answer>", "14", False),
    # tiny numbers: a relative tolerance, not rounding to 6 decimals
    ("<answer>\\frac{1}{3^{40}}</answer>", r"\frac{1}{3^{41}}", False),
    ("<answer>\\frac{1}{3^{40}}</answer>", "3^{-40}", True),
    ("<answer>1.2e-19</answer>", r"4 \times 10^{-20}", False),
    ("<answer>1.2e-19</answer>", r"1.2 \times 10^{-19}", True),
    ("<answer>5 \\times 10^{-9}</answer>", "0", False),
    ("<answer>1.41421</answer>", r"\sqrt{2}", True),
    ("<answer>1.414</answer>", r"\sqrt{2}", False),
    ("<answer>2^{70}+1</answer>", "2^{70}", False),
    # thousands separators: thin spaces and {,}; a plain ", " is a list
    ("<answer>3\\,141</answer>", "3141", True),
    ("<answer>3{,}141</answer>", "3141", True),
    ("<answer>1\\,000\\,000</answer>", "1000000", True),
    ("<answer>3\\,141</answer>", "3.141", False),
    ("<answer>3\\,141</answer>", "3142", False),
    ("<answer>3141</answer>", r"3\,141", True),
    # percent: against the fraction, or a reference in percent units
    ("<answer>12.5\\%</answer>", "0.125", True),
    ("<answer>12.5\\%</answer>", "12.5", True),
    ("<answer>12.5 percent</answer>", "0.125", True),
    ("<answer>12.5</answer>", r"12.5\%", True),
    ("<answer>0.125</answer>", r"12.5\%", True),
    ("<answer>12.5\\%</answer>", "1.25", False),
    ("<answer>0.125</answer>", "12.5", False),  # no percent sign on either side: 100 times off
    # plain-text functions
    ("<answer>sqrt(2)/2</answer>", r"\frac{\sqrt{2}}{2}", True),
    ("<answer>sqrt(3)/2</answer>", r"\frac{\sqrt{2}}{2}", False),
    ("<answer>2^(1/3)</answer>", r"\sqrt[3]{2}", True),
    ("<answer>cbrt(2)</answer>", r"2^{1/3}", True),
    ("<answer>2^(1/2)</answer>", r"\sqrt[3]{2}", False),
    ("<answer>pi/4</answer>", r"\frac{\pi}{4}", True),
    ("<answer>pi/3</answer>", r"\frac{\pi}{4}", False),
    ("<answer>ln(2)</answer>", r"\ln 2", True),
    ("<answer>abs(-3)</answer>", "3", True),
    ("<answer>\\frac{\\pi}{6}</answer>", "pi/6", True),
    # a value restating its variable, either way round
    ("<answer>x = 5</answer>", "5", True),
    ("<answer>5 = x</answer>", "5", True),
    ("<answer>5 = x</answer>", "6", False),
    ("<answer>5 = x</answer>", "x = 5", True),
    ("<answer>5 = y</answer>", "x = 5", False),
    # adversarial: missing, unclosed, empty, non-ASCII, garbage
    ("", "5", False),
    ("<answer></answer>", "5", False),
    ("<answer>5", "5", False),
    ("\\boxed{5", "5", False),
    ("5", "5", False),
    ("<answer>five</answer>", "5", False),
    ("<answer>六</answer>", "6", False),
    ("<answer>}{}{\\frac{</answer>", "5", False),
    ("<answer>\x00\x01</answer>", "5", False),
]


@pytest.mark.parametrize(("text", "ground_truth", "accepted"), MATH_CASES)
def test_math_accuracy(text: str, ground_truth: str, accepted: bool) -> None:
    score = accuracy_reward(text, ground_truth, verifier="math")
    assert score.value == (1.0 if accepted else 0.0), (text, ground_truth, score)
    assert not score.failed
    assert (score.reason is None) == accepted


def test_enough_math_cases() -> None:
    assert len(MATH_CASES) >= 40
    assert sum(1 for *_, ok in MATH_CASES if ok) >= 15 and sum(1 for *_, ok in MATH_CASES if not ok) >= 15


def test_no_answer_reason() -> None:
    assert accuracy_reward("I think it is 5.", "5", verifier="math").reason == "no answer"
    assert accuracy_reward("<answer>4</answer>", "5", verifier="math").reason == "wrong answer"


def test_normalize_answer() -> None:
    assert normalize_answer("1.5e3") == r"1.5 \times 10^{3}"
    assert normalize_answer("12 square meters") == "12"
    assert normalize_answer("12.5 percent") == r"12.5\%"
    assert normalize_answer("2e") == "2e"  # Euler's number stays
    assert normalize_answer("x^2") == "x^2"
    assert normalize_answer(r"3\,141\,592.5") == "3141592.5"
    assert normalize_answer(r"1\,23") == r"1\,23"  # not a group of three: left alone
    assert normalize_answer("sqrt(abs(x - 1))/2") == r"\sqrt{\left|x - 1\right|}/2"
    assert normalize_answer("cbrt(2) + pi") == r"\sqrt[3]{2} + \pi "
    assert normalize_answer("sqrt(2") == "sqrt(2"  # unbalanced: as written
    assert normalize_answer(r"\text{spin} + sqrt(2)") == r"\text{spin} + sqrt(2)"  # TeX already
    assert normalize_answer(r"\frac{1}{2} = \theta") == r"\theta = \frac{1}{2}"
    assert normalize_answer("y = x") == "y = x"  # a variable on both sides: as written
    assert normalize_answer(r"1 \le 5 = x") == r"1 \le 5 = x"  # a chain of relations: as written
    assert normalize_answer("2.718 = e") == "2.718 = e"  # e is a constant, not a variable


def test_numbers_compare_relatively() -> None:
    # math-verify's rounding to 6 decimals took every pair of numbers under 5e-7 for equal; the grader
    # installs numeric_eq in its place (math-verify calls it for numbers, matrix entries, interval ends).
    import math_verify.grader

    assert math_verify.grader.sympy_numeric_eq is numeric_eq
    assert not verify_math("\\frac{1}{3^{40}}", "\\frac{1}{3^{41}}")
    assert not verify_math("(2^{-30}, 1)", "(2^{-31}, 1)")
    assert not verify_math("[10^{-9}, 1]", "[2 \\times 10^{-9}, 1]")
    assert not verify_math("\\begin{pmatrix}10^{-12}\\\\1\\end{pmatrix}", "\\begin{pmatrix}0\\\\1\\end{pmatrix}")
    assert verify_math("0.0833333333333333", "\\frac{1}{12}")
    assert verify_math("0.1 + 0.2 - 0.3", "0")  # float noise against an exact zero


def test_unparsable_ground_truth_raises() -> None:
    with pytest.raises(ValueError, match="ground truth"):
        verify_math("5", "")
    score = accuracy_reward("<answer>5</answer>", "", verifier="math")
    assert score.failed and score.value == 0.0 and "ground truth" in (score.reason or "")


# -- the sandbox -------------------------------------------------------------------------------

TIMEOUT_S = 1.0
SLACK_S = 10.0
"""Killing the worker and spawning its successor (the import waits for the next request). Generous, so a
loaded machine cannot fail the test: what it proves is that a call that would run for hours returns near
its limit."""


@pytest.fixture(scope="module")
def sandbox():
    box = VerifierSandbox(TIMEOUT_S)
    box.check("arithmetic", "1", "1")  # wait for the worker's imports once
    yield box
    box.close()


@pytest.mark.parametrize("answer", ["2^{10^{10}}", "10^{10^{10}}-10^{10^{10}}+5", "\\frac{1}{3^{10^{10}}}"])
def test_huge_exponent_times_out_and_is_killed(sandbox: VerifierSandbox, answer: str) -> None:
    restarts = sandbox.restarts
    old_pid = sandbox._proc.pid  # type: ignore[union-attr]
    start = time.monotonic()
    score = accuracy_reward(f"<answer>{answer}</answer>", "5", verifier="math", check=sandbox.check)
    elapsed = time.monotonic() - start
    assert score == type(score)(0.0, "timeout", failed=True)
    assert elapsed < TIMEOUT_S + SLACK_S, elapsed
    assert sandbox.restarts == restarts + 1
    assert sandbox._proc.pid != old_pid  # type: ignore[union-attr]
    # The fresh worker answers the next request correctly.
    assert sandbox.check("math", "1/2", "0.5")


def test_sandbox_matches_inline(sandbox: VerifierSandbox) -> None:
    for text, ground_truth, accepted in MATH_CASES[:12]:
        score = accuracy_reward(text, ground_truth, verifier="math", check=sandbox.check)
        assert score.value == (1.0 if accepted else 0.0), text


def test_sandbox_grades_every_case_as_inline() -> None:
    # The path a run takes: the rules (last box, tolerance, separators, percent, plain functions)
    # hold in the worker process too, under the configured per-sample limit (not the 1 s above, which
    # a loaded machine can exceed on a symbolic comparison).
    box = VerifierSandbox(RewardConfig().timeout_s)
    try:
        for text, ground_truth, accepted in MATH_CASES:
            score = accuracy_reward(text, ground_truth, verifier="math", check=box.check)
            assert score.value == (1.0 if accepted else 0.0) and not score.failed, (text, ground_truth, score)
    finally:
        box.close()


def test_sandbox_reports_exceptions(sandbox: VerifierSandbox) -> None:
    with pytest.raises(VerifierError, match="ValueError: countdown ground truth is malformed"):
        sandbox.check("countdown", "1+2", "not json")
    with pytest.raises(VerifierError, match="unknown verifier"):
        sandbox.check("chess", "e4", "e4")
    score = accuracy_reward("<answer>3</answer>", "three", verifier="arithmetic", check=sandbox.check)
    assert score.failed and score.value == 0.0 and score.reason.startswith("ValueError")  # type: ignore[union-attr]
    assert sandbox.check("arithmetic", "3", "3")  # still serving


def test_sandbox_hook_that_sleeps() -> None:
    box = VerifierSandbox(0.5, verifiers={"sleep": "test_rewards_hooks:sleepy_verifier"})
    try:
        assert box.check("sleep", "0", "")
        start = time.monotonic()
        with pytest.raises(VerifierTimeout):
            box.check("sleep", "30", "")
        assert time.monotonic() - start < 0.5 + SLACK_S
        assert box.restarts == 1 and box.check("sleep", "0.01", "")
    finally:
        box.close()
