"""Pure reward components: extraction, demo verifiers, format, language, overlong, the composite."""

from __future__ import annotations

import json

import pytest

from reward_server.rewards import (
    build_reward_fn,
    check_inline,
    format_reward,
    language_reward,
    overlong_penalty,
)
from reward_server.verifiers import extract_answer, verify_arithmetic, verify_countdown
from trainer.config import RewardConfig
from trainer.types import Completion, Prompt

# -- extract_answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>5</answer>", "5"),
        ("<answer> 5 </answer>", "5"),
        ("<answer>1</answer><answer>2</answer>", "2"),
        ("<answer>1</answer><answer>2", "1"),  # last one unclosed: the last closed one counts
        ("<answer>a<answer>b</answer>", "b"),  # nested opening: innermost
        ("<answer></answer>", ""),
        ("\\boxed{7}", "7"),
        ("\\boxed{1} and \\boxed{2}", "1, 2"),  # boxes joined by "and": one answer, the list of them
        ("\\boxed{1}. Wait, recounting gives \\boxed{2}", "2"),  # a self-correction: the last box
        ("\\boxed{2} and \\boxed{ 2 }", "2"),  # the same one twice
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{{{3}}}", "{{3}}"),
        ("\\boxed{1} \\boxed{2", "1"),  # unbalanced last box is skipped
        ("\\boxed {9}", "9"),
        ("<answer>4</answer> \\boxed{5}", "4"),  # answer tags win over boxes
        ("", None),
        ("no answer here", None),
        ("</answer><answer>", None),
        ("\\boxed{", None),
        ("<answer>答案是五</answer>", "答案是五"),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


# -- arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "ground_truth", "ok"),
    [
        ("42", "42", True),
        (" 42 ", "42", True),
        ("42\n", " 42", True),
        ("-7", "-7", True),
        ("+7", "7", True),
        ("042", "42", True),
        ("41", "42", False),
        ("42.0", "42", False),
        ("4 2", "42", False),
        ("42 apples", "42", False),
        ("", "42", False),
        ("٤٢", "42", False),  # Arabic-Indic digits are not ASCII digits
        ("1_000", "1000", False),
        ("0x2a", "42", False),
        ("2*21", "42", False),
    ],
)
def test_verify_arithmetic(answer: str, ground_truth: str, ok: bool) -> None:
    assert verify_arithmetic(answer, ground_truth) is ok


def test_arithmetic_bad_ground_truth_raises() -> None:
    with pytest.raises(ValueError, match="not an integer"):
        verify_arithmetic("3", "three")


# -- countdown -----------------------------------------------------------------------------------

GT = json.dumps({"numbers": [3, 4, 6], "target": 18})
GT_DIV = json.dumps({"numbers": [2, 3, 9], "target": 6})


@pytest.mark.parametrize(
    ("answer", "ground_truth", "ok"),
    [
        ("4*3+6", GT, True),
        ("6 + 3 * 4", GT, True),
        ("(6-3)*4+6", GT, False),  # 6 reused, and not all numbers once
        ("4*3+6=18", GT, True),
        ("4*3+6 = 18", GT, True),
        ("4*3+6 = 19", GT, False),
        ("6*3", GT, False),  # 4 unused
        ("(4-3)*6*3", GT, False),  # 3 reused
        ("6*(4-3)*3", GT, False),
        ("6/(4-3)*3", GT, False),
        ("4*3+6.0", GT, False),  # non-integer literal
        ("4*3+6.5", GT, False),
        ("4*3+7", GT, False),  # number not given
        ("4*3+6+0", GT, False),
        ("-(-4*3-6)", GT, False),  # unary minus is not allowed
        ("4**2+2", GT, False),
        ("4*3+6//1", GT, False),
        ("0x4*3+6", GT, False),
        ("__import__('os')", GT, False),
        ("x*3+6", GT, False),
        ("", GT, False),
        ("((4*3)+6)", GT, True),
        ("9/3*2", GT_DIV, True),  # exact fractions
        ("2/3*9", GT_DIV, True),
        ("9/(3-3)*2", GT_DIV, False),  # division by zero is a wrong answer, not a crash
        ("9/(2-2)+3", GT_DIV, False),
        ("(" * 200 + "9" + ")" * 200 + "/3*2", GT_DIV, False),  # too long
        ("9/3*2 " + "+0" * 200, GT_DIV, False),
    ],
)
def test_verify_countdown(answer: str, ground_truth: str, ok: bool) -> None:
    assert verify_countdown(answer, ground_truth) is ok


def test_countdown_repeated_numbers_must_each_be_used() -> None:
    gt = json.dumps({"numbers": [5, 5, 2], "target": 12})
    assert verify_countdown("5+5+2", gt)
    assert not verify_countdown("5*2+2", gt)
    assert not verify_countdown("5+5+2+5", gt)


@pytest.mark.parametrize("gt", ["", "not json", "{}", '{"numbers": [1]}', '{"numbers": "ab", "target": 3}'])
def test_countdown_bad_ground_truth_raises(gt: str) -> None:
    with pytest.raises(ValueError, match="countdown ground truth"):
        verify_countdown("1+2", gt)


# -- format --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>reason</think><answer>5</answer>", True),
        ("<think>reason</think>\n<answer>5</answer>\n", True),
        ("  <think>\nmulti\nline\n</think>  <answer> 5 </answer>  ", True),
        ("<think></think><answer>5</answer>", False),  # tags alone: no chain of thought
        ("<think> \n </think><answer>5</answer>", False),
        ("<think>r</think><answer> </answer>", False),  # empty answer
        ("<think>r</think><answer>5</answer> trailing", False),
        ("lead <think>r</think><answer>5</answer>", False),
        ("<think>r</think> text <answer>5</answer>", False),
        ("<answer>5</answer><think>r</think>", False),
        ("<think>r</think>", False),
        ("<answer>5</answer>", False),
        ("<think>r<answer>5</answer>", False),
        ("<think>r</think><answer>5", False),
        ("<think>a<think>b</think><answer>5</answer>", False),
        ("<think>a</think><think>b</think><answer>5</answer>", False),
        ("<think>a</think><answer>5</answer><answer>6</answer>", False),
        ("<think>a</think><answer>5</answer></think>", False),
        ("", False),
        ("<think>思考</think><answer>五</answer>", True),
    ],
)
def test_format_reward(text: str, ok: bool) -> None:
    score = format_reward(text)
    assert score.value == (1.0 if ok else 0.0)
    assert (score.reason is None) == ok


# -- language ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang", "share"),
    [
        ("<think>add the digits</think>", "en", 1.0),
        ("<think>add the digits 7+8=15</think>", "en", 1.0),  # numbers are not words
        ("<think>café naïve</think>", "en", 1.0),  # Latin letters with accents
        ("<think>add 数字</think>", "en", 1 / 3),  # 'add' + two CJK characters
        ("<think>先加 the digits</think>", "en", 0.5),
        ("<think>先加数字</think>", "zh", 1.0),
        ("<think>先加 digits</think>", "zh", 2 / 3),
        ("<think>add digits</think>", "zh", 0.0),
        ("<think>сложить digits</think>", "en", 0.5),  # Cyrillic is not Latin
        ("<think>7+8=15</think>", "en", 0.0),  # no words at all
        ("<think></think>", "en", 0.0),
        ("no think block", "en", 0.0),
        ("<think>unclosed", "en", 0.0),
        ("<think>only this</think><answer>数字</answer>", "en", 1.0),  # the answer does not count
    ],
)
def test_language_reward(text: str, lang: str, share: float) -> None:
    score = language_reward(text, target_language=lang)
    assert score.value == pytest.approx(share)
    assert 0.0 <= score.value <= 1.0
    assert (score.reason is None) == (share == 1.0)


def test_language_unknown_raises() -> None:
    with pytest.raises(ValueError, match="target language"):
        language_reward("<think>x</think>", target_language="fr")


# -- overlong ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_tokens", "expected"),
    [(0, 0.0), (48, 0.0), (52, -0.25), (56, -0.5), (63, -15 / 16), (64, -1.0), (65, -1.0), (1000, -1.0)],
)
def test_overlong_penalty(num_tokens: int, expected: float) -> None:
    # DAPO eq. 13 with L_max = 64, L_cache = 16: ((L_max - L_cache) - |y|) / L_cache in the buffer.
    score = overlong_penalty(num_tokens, max_response_tokens=64, buffer_tokens=16)
    assert score.value == pytest.approx(expected)


def test_overlong_zero_buffer_is_hard_cut() -> None:
    assert overlong_penalty(64, max_response_tokens=64, buffer_tokens=0).value == 0.0
    assert overlong_penalty(65, max_response_tokens=64, buffer_tokens=0).value == -1.0


def test_overlong_is_monotone() -> None:
    values = [overlong_penalty(n, max_response_tokens=64, buffer_tokens=16).value for n in range(80)]
    assert all(a >= b for a, b in zip(values, values[1:]))


# -- the composite -------------------------------------------------------------------------------


def _completion(text: str, num_tokens: int = 10) -> Completion:
    return Completion(tuple(range(num_tokens)), text, (0.0,) * num_tokens, "stop")


PROMPT = Prompt(index=0, text="User: 2+3? Assistant: <think>", ground_truth="5", task="arithmetic")


def _fn(**weights: float):
    cfg = RewardConfig(verifier="arithmetic", overlong_buffer_tokens=16, **weights)  # type: ignore[arg-type]
    return build_reward_fn(cfg, max_response_tokens=64, check=check_inline)


def test_composite_weighted_sum_and_components() -> None:
    fn = _fn(accuracy_weight=1.0, format_weight=0.5, language_weight=0.25, overlong_weight=2.0)
    result = fn(PROMPT, _completion("add two and three</think> <answer>5</answer>", num_tokens=56))
    assert result.components == {"accuracy": 1.0, "format": 1.0, "language": 1.0, "overlong": -0.5}
    assert result.reward == pytest.approx(1.0 + 0.5 + 0.25 - 1.0)
    assert result.correct and result.error is None


def test_composite_think_is_put_back_only_when_prompt_opened_it() -> None:
    fn = _fn(format_weight=1.0)
    text = "sum</think><answer>5</answer>"
    assert fn(PROMPT, _completion(text)).components["format"] == 1.0
    no_think_prompt = Prompt(0, "User: 2+3? Assistant:", "5", "arithmetic")
    assert fn(no_think_prompt, _completion(text)).components["format"] == 0.0
    assert fn(no_think_prompt, _completion("<think>" + text)).components["format"] == 1.0


def test_composite_wrong_answer_and_defaults() -> None:
    fn = _fn()  # default weights: accuracy only
    result = fn(PROMPT, _completion("x</think><answer>6</answer>"))
    assert result.reward == 0.0 and not result.correct and result.error is None
    assert set(result.components) == {"accuracy", "format", "language", "overlong"}
    assert fn(PROMPT, _completion("x</think><answer>5</answer>")).reward == 1.0


def test_composite_task_overrides_config_verifier() -> None:
    fn = _fn()  # config says arithmetic
    countdown = Prompt(1, "<think>", json.dumps({"numbers": [2, 3], "target": 5}), "countdown")
    assert fn(countdown, _completion("</think><answer>2+3</answer>")).correct
    unknown_task = Prompt(2, "<think>", "5", "poetry")  # not a verifier name: the config's verifier
    assert fn(unknown_task, _completion("</think><answer>5</answer>")).correct


def test_composite_records_verifier_failure() -> None:
    fn = _fn(format_weight=1.0)
    bad = Prompt(3, "<think>", "five", "arithmetic")
    result = fn(bad, _completion("r</think><answer>5</answer>"))
    assert result.reward == 1.0  # format still counts; accuracy scores 0
    assert result.components["accuracy"] == 0.0 and not result.correct
    assert result.error is not None and result.error.startswith("ValueError")


def test_builder_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="verifier"):
        build_reward_fn(RewardConfig(verifier="chess"), max_response_tokens=64, check=check_inline)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overlong_buffer_tokens"):
        build_reward_fn(
            RewardConfig(overlong_weight=1.0, overlong_buffer_tokens=100),
            max_response_tokens=64,
            check=check_inline,
        )


def test_readable_format_reward_and_language_of_its_reasoning() -> None:
    from reward_server.rewards import format_reward, language_reward

    good = "|special_token|add the units first|special_token|so 3+4=7 <answer>7</answer>"
    assert format_reward(good).value == 1.0
    assert format_reward("|special_token|r|special_token|<answer> </answer>").reason == "empty answer"
    assert format_reward("|special_token|r|special_token|<answer>7</answer> more").value == 0.0
    assert format_reward("|special_token|<think>r|special_token|<answer>7</answer>").value == 0.0
    assert format_reward("|special_token|r<answer>7</answer>").value == 0.0  # one marker only
    assert language_reward("|special_token|the 中 answer|special_token|s", target_language="en").value == \
        pytest.approx(2 / 3)
