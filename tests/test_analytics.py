"""R1-Zero analytics: reflection words, the chain of thought's language mix, pass@k; golden values,
invariants, hostile text in linear time, and the metrics and plot of a run carrying them."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

from trainer.analytics import (
    language_counts,
    language_mix,
    pass_at_k,
    pass_at_ks,
    reflection_accuracy,
    reflection_count,
    reflection_stats,
)
from trainer.evaluate import pass_at_1


@pytest.mark.parametrize("text, count", [
    ("", 0),
    ("Wait, wait. Wait.", 3),                       # R1's aha moment
    ("I should verify: re-check, recheck and double-check.", 4),
    ("double  check it, then check again; let me think\tagain", 3),
    ("waiting awaits await wait-", 1),              # whole words only: 'wait-' counts, the others do not
    ("unverified reverify verifying", 1),
    ("我想Wait这里", 1),                              # bounded by letters, not by \\b: CJK next to it is fine
    ("HMM... Reconsider. RE-EVALUATE", 3),
])
def test_reflection_count(text, count):
    assert reflection_count(text) == count


def test_reflection_accuracy_splits_by_reflection_and_leaves_out_an_empty_kind():
    texts = ["7, wait, check: 7", "7", "wait 3", "8", "9"]
    assert reflection_accuracy(texts, [True, False, False, True, False]) == {
        "reflection_accuracy_with": 0.5, "reflection_accuracy_without": pytest.approx(1 / 3)}
    assert reflection_accuracy(["7", "8"], [True, False]) == {"reflection_accuracy_without": 0.5}
    with pytest.raises(ValueError, match="2 responses but 1"):
        reflection_accuracy(["7", "8"], [True])


def test_reflection_stats():
    stats = reflection_stats(["wait wait", "no reflection here", "verify"])
    assert stats == {"reflection_words_per_response": 1.0, "reflection_frac": pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        reflection_stats([])


def test_language_counts_and_mix():
    assert language_counts("I think 我想 ça привет 42") == {"en": 3, "zh": 2, "other": 1}
    mix = language_mix(["one two three", "我想 four", None, ""])
    assert mix["cot_lang/en"] == pytest.approx(4 / 6) and mix["cot_lang/zh"] == pytest.approx(2 / 6)
    assert mix["cot_lang/other"] == 0.0
    assert mix["cot_mixed_frac"] == pytest.approx(1 / 2)   # of the chains that have words
    assert mix["cot_frac"] == pytest.approx(3 / 4)          # None: no chain of thought at all
    assert mix["cot_words_per_response"] == pytest.approx(6 / 4)
    assert sum(mix[f"cot_lang/{x}"] for x in ("en", "zh", "other")) == pytest.approx(1.0)
    assert language_mix([None])["cot_lang/en"] == 0.0       # nothing to share out: zeros, not NaN
    assert language_mix(["1+2=3"])["cot_words_per_response"] == 0.0


def brute_pass_at_k(group: list[bool], k: int) -> float:
    n, c = len(group), sum(group)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_golden_values_and_invariants():
    assert pass_at_k([[True, False, False, False]], 2) == pytest.approx(0.5)    # 1 - C(3,2)/C(4,2)
    assert pass_at_k([[True, False, False, False]], 4) == 1.0
    assert pass_at_k([[False] * 4, [True] * 4], 3) == 0.5
    rng = random.Random(0)
    for _ in range(200):
        groups = [[rng.random() < 0.3 for _ in range(8)] for _ in range(5)]
        assert pass_at_k(groups, 1) == pytest.approx(pass_at_1(groups))
        values = [pass_at_k(groups, k) for k in range(1, 9)]
        assert values == sorted(values)                                            # more tries never hurt
        for k in (2, 5):
            assert values[k - 1] == pytest.approx(sum(brute_pass_at_k(g, k) for g in groups) / 5)
    assert 0.99 < pass_at_k([[True] + [False] * 999], 995) <= 1.0                   # no overflow at large n
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k([[True, False]], 3)


def test_pass_at_ks_keys():
    assert list(pass_at_ks([[True] * 8])) == ["pass@2", "pass@4", "pass@8"]
    assert list(pass_at_ks([[True] * 6, [False] * 7])) == ["pass@2", "pass@4", "pass@6"]
    assert pass_at_ks([[True]]) == {}


HOSTILE = {
    "one letter": "w" * 500_000,
    "prefixes": "wai " * 125_000,
    "blank run after a phrase start": "double" + " " * 500_000 + "x",
    "hyphen chain": "re-" * 165_000,
    "all matches": "wait " * 100_000,
    "cjk and latin": "我想wait" * 80_000,
    "combining marks": "\u0301" * 500_000,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_linear(name):
    """Half a megabyte of each in well under the bound, and twice the text takes about twice the time, not four times."""
    text = HOSTILE[name]

    def cost(t: str) -> float:
        start = time.perf_counter()
        reflection_count(t)
        language_counts(t)
        return time.perf_counter() - start

    small = min(cost(text[: len(text) // 2]) for _ in range(2))
    full = min(cost(text) for _ in range(2))
    assert full < 5.0, f"{name}: {full:.2f} s for 0.5 MB"
    assert full < 3.5 * small + 0.2, f"{name}: {small:.3f} s for half, {full:.3f} s for all: not linear"


def test_rollout_stats_and_evaluation_carry_the_analytics(tmp_path):
    from trainer.batch import rollout_stats
    from trainer.metrics import MetricsLogger, plot_curves
    from trainer.templates import r1_zero
    from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch

    def c(text: str) -> Completion:
        return Completion(token_ids=(1, 2), text=text, rollout_logprobs=(0.0, 0.0), finish_reason="stop")

    rollout = RolloutBatch(prompts=(Prompt(0, r1_zero("q"), "1"),), prompt_token_ids=((1,),),
                           completions=((c("Wait, 1+0=1</think><answer>1</answer>"), c("我想 one</think>x")),),
                           policy_version=0)
    scored = ScoredBatch(rollout, ((RewardResult(1.0, {}, True), RewardResult(0.0, {}, False)),))
    stats = rollout_stats(scored)
    assert stats["reflection_words_per_response"] == 0.5 and stats["reflection_frac"] == 0.5
    assert stats["reflection_accuracy_with"] == 1.0 and stats["reflection_accuracy_without"] == 0.0
    assert stats["cot_lang/en"] == pytest.approx(2 / 4) and stats["cot_lang/zh"] == pytest.approx(2 / 4)
    assert stats["cot_mixed_frac"] == 0.5 and stats["cot_frac"] == 1.0

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(0, "eval", {"pass@1": 0.2, "cons@k": 0.3, "k": 4.0, "response_length_mean": 9.0})  # an older line
    for step in (1, 2):
        logger.log(step, "train", stats | {"accuracy": 0.5})
    logger.log(2, "eval", {"pass@1": 0.4, "cons@k": 0.5, "k": 4.0, "pass@2": 0.6, "pass@4": 0.7,
                           "response_length_mean": 8.0, "reflection_words_per_response": 0.25})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["cot_lang/zh"] == pytest.approx(0.5)
    assert plot_curves(tmp_path).stat().st_size > 10_000
