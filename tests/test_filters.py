"""R1's rejection-sampling filters: each rule on its own, dedup, and linear time on hostile input."""

from __future__ import annotations

import time

import pytest

from reward_server.filters import (
    Deduplicator,
    FilterSettings,
    code_block,
    first_rejection,
    longest_paragraph,
    mixed_language,
    normalise,
    overlong_paragraph,
    rules,
    script_counts,
)

# --- mixed language ---------------------------------------------------------------------------


def test_english_chain_of_thought_passes():
    assert mixed_language("First add the units: 7+6=13, carry 1. Then the tens.") is None


def test_digits_and_symbols_only_pass():
    assert mixed_language("7+6+0=13,4+8+1=13,3+0+1=4") is None
    assert mixed_language("") is None


def test_one_chinese_character_in_english_rejects_by_default():
    reason = mixed_language("First add the units 所以 carry one")
    assert reason is not None and reason.startswith("mixed_language") and "cjk" in reason


def test_each_cjk_character_is_a_word():
    assert script_counts("我们先算") == {"cjk": 4}
    assert script_counts("add 我们") == {"latin": 1, "cjk": 2}


def test_chinese_target_accepts_chinese_and_rejects_english_words():
    assert mixed_language("我们先算个位", target_language="zh") is None
    assert mixed_language("我们先算 units", target_language="zh") is not None


def test_foreign_share_threshold():
    cot = "one two three four 五"  # 1 foreign word of 5
    assert mixed_language(cot, max_foreign_share=0.2) is None
    assert mixed_language(cot, max_foreign_share=0.19) is not None


def test_cyrillic_glued_to_latin_counts_as_foreign():
    assert mixed_language("helloпривет world") is not None
    assert script_counts("helloпривет") == {"latin": 1, "cyrillic": 1}


def test_accented_latin_is_latin():
    assert mixed_language("café naïve Việt") is None


def test_unknown_target_language_raises():
    with pytest.raises(ValueError, match="unknown target language"):
        mixed_language("x", target_language="xx")


# --- long paragraphs --------------------------------------------------------------------------


def test_paragraph_lengths():
    assert longest_paragraph("") == 0
    assert longest_paragraph("abc") == 3
    assert longest_paragraph("ab\ncd") == 5  # one paragraph of two lines, joined by a newline
    assert longest_paragraph("ab\n\ncdef") == 4
    assert longest_paragraph("ab\n   \t\ncdef\n\n\n") == 4  # whitespace-only lines separate


def test_overlong_paragraph_threshold_is_inclusive():
    assert overlong_paragraph("x" * 10, max_paragraph_chars=10) is None
    reason = overlong_paragraph("x" * 11, max_paragraph_chars=10)
    assert reason == "overlong_paragraph: 11 > 10 characters"


def test_many_short_paragraphs_pass():
    assert overlong_paragraph("\n\n".join(["a short one."] * 1000), max_paragraph_chars=20) is None


def test_overlong_rejects_bad_threshold():
    with pytest.raises(ValueError):
        overlong_paragraph("x", max_paragraph_chars=0)


# --- code blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize("cot", [
    "Let me compute.\n```python\nprint(1)\n```\nDone.",
    "```\nunclosed fence",
    "  ~~~\nx\n~~~",
    "see <CODE>x = 1</CODE>",
])
def test_code_blocks_reject(cot):
    assert code_block(cot) is not None


@pytest.mark.parametrize("cot", ["use `x` here", "a ``` b in the middle of a line", "plain text"])
def test_no_code_block(cot):
    assert code_block(cot) is None


# --- the rules together -----------------------------------------------------------------------


def test_first_rejection_names_the_first_failing_rule_in_order():
    table = rules(FilterSettings(max_paragraph_chars=5))
    assert list(table) == ["mixed_language", "overlong_paragraph", "code_block"]
    assert first_rejection("ok", table) is None
    name, _ = first_rejection("```\n我", table)
    assert name == "mixed_language"
    name, _ = first_rejection("```\nabcdef", table)
    assert name == "overlong_paragraph"
    name, _ = first_rejection("```\na", table)
    assert name == "code_block"


def test_code_rule_can_be_turned_off():
    assert "code_block" not in rules(FilterSettings(reject_code=False))


# --- dedup ------------------------------------------------------------------------------------


def test_normalise():
    assert normalise("  The  Answer\n\tis ５ ") == "the answer is 5"


def test_dedup_per_prompt_after_normalisation():
    d = Deduplicator()
    assert not d.seen("p1", "7+6=13 so 13")
    assert d.seen("p1", " 7+6=13   SO 13\n")
    assert not d.seen("p2", "7+6=13 so 13")  # same text, another prompt
    assert not d.seen("p1", "7+6=14 so 14")
    assert len(d) == 3


# --- linear time on hostile input -------------------------------------------------------------

HOSTILE = {
    "one letter": lambda n: "a" * n,
    "letters and digits": lambda n: "a1" * (n // 2),
    "cjk": lambda n: "我" * n,
    "alternating scripts": lambda n: "aп" * (n // 2),
    "newlines": lambda n: "\n" * n,
    "spaces then newline": lambda n: " " * (n - 1) + "\n",
    "blank-ish lines": lambda n: " \n" * (n // 2),
    "backticks": lambda n: "`" * n,
    "fence starts": lambda n: "``\n" * (n // 3),
    "unclosed code tags": lambda n: "<code" * (n // 5),
    "whitespace runs": lambda n: " \t" * (n // 2),
}


def _time(fn, text: str) -> float:
    start = time.perf_counter()
    fn(text)
    return time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_rule_is_linear_on_hostile_input(name):
    """Four times the hostile input takes about four times as long (quadratic would take sixteen; the
    bound of eight, plus 50 ms of slack, leaves room for a busy machine), and 200k characters take
    seconds at most (a backtracking pattern on such input takes minutes)."""
    make = HOSTILE[name]
    table = rules(FilterSettings())
    check = [*table.values(), normalise, lambda t: Deduplicator().seen("k", t)]
    small_text, large_text = make(50_000), make(200_000)
    for fn in check:
        for _attempt in range(3):  # a busy machine can stall one measurement; quadratic fails all three
            small, large = _interleaved_minimum(fn, small_text, large_text)
            if large < 8 * small + 0.05:
                break
        assert large < 3.0, f"{name}: {large:.3f}s for 200k characters"
        assert large < 8 * small + 0.05, f"{name}: 50k took {small:.4f}s, 200k took {large:.4f}s"


def _interleaved_minimum(fn, small_text: str, large_text: str) -> tuple[float, float]:
    """Fastest of five timings of each input, the two sizes taken in turn so both see the same load."""
    small, large = float("inf"), float("inf")
    for _ in range(5):
        small = min(small, _time(fn, small_text))
        large = min(large, _time(fn, large_text))
    return small, large
