"""Hostile text is cheap: answer extraction, the format and the language rewards stay linear on
megabytes of unclosed `\\boxed{`, `<think>`, `<answer>` and nested braces, and agree exactly with the
obvious (quadratic) versions they replace on random text.

The time bounds are generous sanity guards for a loaded shared machine (5 s where 0.1-0.3 s is
typical), not benchmarks: the quadratic versions took 12 s for 10,000 `\\boxed{` and did not finish 5 MB.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_server.rewards import (
    MAX_ANSWER_CHARS,
    accuracy_reward,
    build_reward_fn,
    format_reward,
    language_reward,
)
from reward_server.textscan import count_words, last_boxed, outer_boxed, outer_boxed_gaps
from reward_server.verifiers import MAX_BOXED, MAX_JOIN_CHARS, extract_answer
from trainer.config import RewardConfig
from trainer.types import Completion, Prompt

LIMIT_S = 5.0
"""Sanity bound per call; the linear scans take about 0.1-0.3 s for 5 MB."""
MB5 = 5 * 1024 * 1024


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < LIMIT_S, f"{fn.__name__} took {elapsed:.2f} s"
    return out


# --- the quadratic versions, kept as references ---------------------------------------------------

_BOXED_RE = re.compile(r"\\boxed\s*\{", re.ASCII)  # only ASCII whitespace before the brace


def _last_boxed_reference(text: str) -> str | None:
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : i].strip()
    return None


def _outer_boxed_reference(text: str, max_gap: int = 0) -> list[tuple[str, str | None]]:
    """(content, the text since the previous outer box, None for the first or one over `max_gap` bytes)."""
    boxes: list[tuple[str, str | None]] = []
    end = -1
    for match in _BOXED_RE.finditer(text):
        if match.start() < end:  # inside the previous outer box
            continue
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                gap = None if end < 0 else text[end + 1 : match.start()]
                if gap is not None and len(gap.encode("utf-8", "surrogatepass")) > max_gap:
                    gap = None
                boxes.append((text[match.end() : i].strip(), gap))
                end = i
                break
    return boxes


_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
_TARGET_RE = {"en": re.compile(r"[A-Za-z\u00c0-\u024f]+"), "zh": re.compile(rf"[{_CJK}]")}
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_FORMAT_RE = re.compile(rf"\s*<think>({_NO_TAG})</think>\s*<answer>({_NO_TAG})</answer>\s*", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _count_words_reference(text: str, lang: str) -> tuple[int, int]:
    words = _WORD_RE.findall(text)
    return len(words), sum(1 for w in words if _TARGET_RE[lang].fullmatch(w))


def _format_reference(text: str) -> float:
    match = _FORMAT_RE.fullmatch(text)
    return 1.0 if match is not None and match.group(1).strip() and match.group(2).strip() else 0.0


def _think_reference(text: str) -> str | None:
    match = _THINK_RE.search(text)
    return None if match is None else match.group(1)


# --- equal to the references on random text -------------------------------------------------------

_BOXED_PIECES = st.lists(st.sampled_from(["\\boxed", "\\boxed ", "{", "}", "{", "}", " ", "x", "é", "中", "\\",
                                          "\n", "\t", "\u00a0", "\u3000", "\ud800", "😀"]), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(_BOXED_PIECES)
def test_last_boxed_equals_the_reference(text: str) -> None:
    assert last_boxed(text) == _last_boxed_reference(text)


@settings(max_examples=400, deadline=None)
@given(_BOXED_PIECES)
def test_outer_boxed_equals_the_reference(text: str) -> None:
    assert outer_boxed(text, limit=len(text)) == [content for content, _ in _outer_boxed_reference(text)]
    for max_gap in (0, 3, len(text)):
        assert outer_boxed_gaps(text, limit=len(text), max_gap=max_gap) == _outer_boxed_reference(text, max_gap)


_WORD_PIECES = st.lists(st.sampled_from(["a", "Z", "é", "×", "÷", "ж", "Ω", "中", "文", "ア", "1", "_", " ", "-",
                                         "ǀ", "ß", "\u0301", "😀", "𠀀", "\ud800", "\n", "ŉ", "ɏ", "ɐ"]),
                        max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(_WORD_PIECES)
def test_count_words_equals_the_reference(text: str) -> None:
    for lang in ("en", "zh"):
        assert count_words(text, lang) == _count_words_reference(text, lang), lang


_TAG_PIECES = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<",
                                        ">", "think", "/"]), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TAG_PIECES)
def test_format_and_think_equal_the_reference(text: str) -> None:
    assert format_reward(text).value == _format_reference(text)
    think = _think_reference(text)
    score = language_reward(text, target_language="en")
    if think is None:
        assert score.reason == "no <think>...</think>"
    else:
        words, target = _count_words_reference(think, "en")
        assert score.value == (target / words if words else 0.0)


def test_normal_inputs_keep_their_meaning() -> None:
    assert extract_answer("so \\boxed{\\frac{1}{2}} and \\boxed {3") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{2} then \\boxed{ 2 }") == "2"
    assert extract_answer("<answer> 7 </answer> \\boxed{8}") == "7"
    assert format_reward("<think>a</think> <answer>5</answer>\n").value == 1.0
    assert format_reward("<think>a</think><answer> </answer>").reason == "empty answer"
    assert format_reward("x<think>a</think><answer>5</answer>").value == 0.0
    assert language_reward("<think>the 中 answer</think>", target_language="en").value == pytest.approx(2 / 3)
    assert language_reward("<think>中文 ok</think>", target_language="zh").value == pytest.approx(2 / 3)


# --- hostile inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10_000, 20_000, MB5 // len("\\boxed{")])
def test_unclosed_boxed_is_linear(n: int) -> None:
    assert _timed(extract_answer, "\\boxed{" * n) is None
    assert _timed(extract_answer, "\\boxed{42} " + "\\boxed{" * n) == "42"


def test_nested_and_alternating_braces_are_linear() -> None:
    half = MB5 // 2
    assert _timed(extract_answer, "\\boxed{" + "{" * half + "}" * half + "}") == "{" * half + "}" * half
    assert _timed(extract_answer, "\\boxed{" + "{" * MB5) is None
    assert _timed(extract_answer, "\\boxed{1}" + "}" * MB5) == "1"
    assert _timed(extract_answer, "\\boxed{" + "{}" * half) is None
    assert _timed(extract_answer, "\\boxed{x}" + "\\boxed{{}" * (MB5 // 9)) == "x"


def test_what_stands_between_boxes_is_read_cheaply() -> None:
    # Only gaps of up to MAX_JOIN_CHARS are decoded and matched, so megabytes between the boxes, or
    # the longest gap of separators that still joins, cost one scan.
    assert _timed(extract_answer, "\\boxed{1}" + " and" * (MB5 // 4) + "\\boxed{2}") == "2"
    joined = "\\boxed{1}" + ", \\quad" * ((MAX_JOIN_CHARS - 1) // 8) + " \\boxed{2}"
    assert _timed(extract_answer, joined) == "1, 2"
    superseded = "\\boxed{1}" + "\\," * MAX_JOIN_CHARS + "\\boxed{2}"
    assert _timed(extract_answer, superseded) == "2"
    assert _timed(extract_answer, "x</think>" + "\\boxed{1} or " * MAX_BOXED) == "1"


def test_unclosed_answer_tags_are_linear() -> None:
    assert _timed(extract_answer, "<answer>" * (MB5 // 8)) is None
    assert _timed(extract_answer, "</answer>" * (MB5 // 9)) is None


@pytest.mark.parametrize("text", [
    "<think>" * 32_000,
    "<think>" * (MB5 // 7),
    "<think>" + "a " * (MB5 // 2),
    "<think>" + "word ж 中 " * (MB5 // 9) + "</think>",
    "<think>" + "a" * MB5 + "ж</think>",
    " " * MB5,
    "<think>x</think><answer>" + "x" * MB5,
    "<think>x</think><answer>" + "</think>" * (MB5 // 8),
])
def test_format_and_language_are_linear(text: str) -> None:
    _timed(format_reward, text)
    for lang in ("en", "zh"):
        _timed(language_reward, text, target_language=lang)


def test_language_share_on_5mb_is_exact() -> None:
    score = _timed(language_reward, "<think>" + "word ж 中 " * (MB5 // 9) + "</think>", target_language="en")
    assert score.value == pytest.approx(1 / 3)


def test_a_huge_answer_is_wrong_without_a_verifier_call() -> None:
    def check(verifier: str, answer: str, ground_truth: str) -> bool:
        raise AssertionError("the verifier must not see a 5 MB answer")

    score = _timed(accuracy_reward, "<answer>" + "1" * MB5 + "</answer>", "1", verifier="arithmetic", check=check)
    assert score.value == 0.0 and str(MAX_ANSWER_CHARS) in (score.reason or "") and not score.failed


def test_the_whole_reward_of_a_5mb_sample_is_bounded() -> None:
    cfg = RewardConfig(verifier="arithmetic", format_weight=0.5, language_weight=0.5)
    fn = build_reward_fn(cfg, max_response_tokens=64, check=lambda v, a, g: a == g)
    prompt = Prompt(0, "Q Assistant: <think>", "42", "arithmetic")
    for text in ["x</think>" + "\\boxed{" * (MB5 // 7) + "\\boxed{42}", "a " * (MB5 // 2) + "</think><answer>42</answer>"]:
        result = _timed(fn, prompt, Completion((1,) * 80, text, (0.0,) * 80, "length"))
        assert result.correct and result.error is None
