"""Reward-hacking guards as golden tests: what a policy might try in order to collect reward without
the right answer, and the score each attempt must get.

- the last boxed answer counts (a self-correction is graded on its correction); boxes joined to it
  only by separators are one answer, the list of them, and "A or B" is a hedge: both score 0
  against a single-valued reference, so boxing candidates never pays;
- an answer that stands only inside the chain of thought (`<think>`) scores 0;
- the format tags alone (an empty chain of thought or answer) earn no format reward;
- training rewards and evaluation (pass@1, cons@k) grade the same extracted answer.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from reward_server.rewards import accuracy_reward, build_reward_fn, check_inline, format_reward
from reward_server.verifiers import MAX_BOXED, extract_answer, final_answer
from trainer import steps
from trainer.config import EvalConfig, RewardConfig, TrainConfig
from trainer.templates import completion_for_reward
from trainer.types import Completion, Prompt, RolloutBatch, ScoredBatch


def _math(text: str, ground_truth: str) -> float:
    score = accuracy_reward(text, ground_truth, verifier="math")
    assert not score.failed, score
    return score.value


# -- several boxed answers, and hedging ----------------------------------------------------------

SEVERAL_BOXED = [
    "\\boxed{3} \\boxed{4}",
    "\\boxed{4} or maybe \\boxed{3}",
    "r</think> \\boxed{3}, \\boxed{4}",
    "r</think> \\boxed{3} and \\boxed{4}",
    "r</think> $\\boxed{3} \\quad \\text{or} \\quad \\boxed{4}$",
    "r</think><answer>\\boxed{3} or \\boxed{4}</answer>",
    "r</think><answer>\\boxed{3} \\boxed{\\frac{8}{2}}</answer>",
    "r</think> \\boxed{3, 4}",
    "r</think>" + "".join(f"\\boxed{{{i}}}" for i in range(1, 10)),
    "r</think>" + ", ".join(f"\\boxed{{{i}}}" for i in range(1, 10)),
]


@pytest.mark.parametrize("text", SEVERAL_BOXED)
@pytest.mark.parametrize("ground_truth", ["3", "4"])
def test_boxes_listed_together_score_0(text: str, ground_truth: str) -> None:
    assert _math(text, ground_truth) == 0.0


SELF_CORRECTIONS = [
    "so \\boxed{3}. Wait, I dropped a term: \\boxed{4}",
    "first \\boxed{3}, then on reflection \\boxed{4}",
    "r</think> That gives \\boxed{3}.\n\nHmm, let me re-check the last step: 2 + 2 = 4, so \\boxed{4}.",
    "r</think><answer>\\boxed{3} -- no, recounting gives \\boxed{4}</answer>",
    "\\boxed{3}" + " " * 200 + "\\boxed{4}",  # too far apart to be one list
]


@pytest.mark.parametrize("text", SELF_CORRECTIONS)
def test_a_self_correction_is_graded_on_its_last_box(text: str) -> None:
    # R1-style reflection boxes an answer, reconsiders and boxes another; public graders (math-verify,
    # the Qwen and DeepSeek math evaluations, lm-eval's minerva-math) take the last one.
    assert final_answer(text) == ("4", "")
    assert _math(text, "4") == 1.0
    assert _math(text, "3") == 0.0


def test_boxing_every_candidate_earns_only_the_last() -> None:
    # Candidates with words between them are superseded one by one: only the last is graded, so a
    # list of guesses scores what the last guess alone would.
    spam = "r</think>" + " ".join(f"Maybe \\boxed{{{i}}}? Let me check." for i in range(1, 10))
    assert final_answer(spam) == ("9", "")
    for wrong in range(1, 9):
        assert _math(spam, str(wrong)) == 0.0
    assert _math(spam, "9") == 1.0


def test_the_same_boxed_answer_twice_still_counts() -> None:
    assert _math("so \\boxed{4}, that is \\boxed{ 4 }", "4") == 1.0
    assert _math("r</think><answer>\\boxed{4}</answer>", "4") == 1.0


def test_boxed_answers_are_read_as_their_list() -> None:
    # Listing the values is right when the reference lists them (all solutions of an equation).
    assert _math("\\boxed{3} and \\boxed{4}", "3, 4") == 1.0
    assert _math("\\boxed{3} and \\boxed{4}", "3, 4, 5") == 0.0
    many = "".join(f"\\boxed{{{i}}}" for i in range(MAX_BOXED + 1))
    assert final_answer(many) == (None, f"more than {MAX_BOXED} \\boxed{{}}")


HEDGES = [
    "3 or 4",
    "4 or 3",
    "3 \\text{ or } 4",
    "3 \\textrm{or} 4",
    "3 \\lor 4",
    "3 \\vee 4",
    "either 3 or 4",
    "The answer is 3 or maybe 4",
    "3 (or 4)",
    "x = 3 or x = 4",
    "3 OR 4",
    "3 or four",
    "\\boxed{3 \\text{ or } 4}",
]


@pytest.mark.parametrize("answer", HEDGES)
@pytest.mark.parametrize("ground_truth", ["3", "4"])
def test_a_or_b_hedging_scores_0(answer: str, ground_truth: str) -> None:
    assert _math(f"<answer>{answer}</answer>", ground_truth) == 0.0


def test_alternatives_that_restate_one_value_or_list_all_values_count() -> None:
    assert _math("<answer>x = 3 or 3</answer>", "3") == 1.0  # a restatement, not a hedge
    assert _math("<answer>3 or 4</answer>", "3, 4") == 1.0
    assert _math("<answer>x = 3 \\text{ or } x = 4</answer>", "x = 4 \\text{ or } x = 3") == 1.0
    assert _math("<answer>3 or 5</answer>", "3, 4") == 0.0


def test_arithmetic_and_countdown_refuse_lists() -> None:
    assert accuracy_reward("\\boxed{3} \\boxed{4}", "3", verifier="arithmetic").value == 0.0
    spec = '{"numbers": [1, 2], "target": 3}'
    assert accuracy_reward("\\boxed{1+2} \\boxed{2}", spec, verifier="countdown").value == 0.0


# -- an answer only inside <think> -----------------------------------------------------------------

THINK_ONLY = [
    "<think>it is 5 <answer>5</answer></think>",
    "<think>\\boxed{5}</think>",
    "<think>it is \\boxed{5}",  # never closed: all of it is reasoning
    "<think>so <answer>5</answer>",
    "<think>a</think> then <think>on second thought <answer>5</answer>",  # reopened, never closed
    "<think>a</think><think>\\boxed{5}",
]


@pytest.mark.parametrize("text", THINK_ONLY)
def test_an_answer_only_inside_think_scores_0(text: str) -> None:
    score = accuracy_reward(text, "5", verifier="math")
    assert score.value == 0.0 and not score.failed
    assert extract_answer(text) is None


def test_the_answer_after_think_counts() -> None:
    assert _math("<think>maybe 4</think><answer>5</answer>", "5") == 1.0
    assert _math("<think>\\boxed{4}?</think> so \\boxed{5}", "5") == 1.0  # boxes inside <think> are ignored
    assert _math("no reasoning tags at all: \\boxed{5}", "5") == 1.0


def test_think_only_through_the_composite_with_an_opened_think() -> None:
    # The r1_zero prompt opens <think>; a completion that never closes it has no answer.
    fn = build_reward_fn(RewardConfig(verifier="arithmetic", format_weight=1.0), max_response_tokens=64,
                         check=check_inline)
    prompt = Prompt(0, "User: 2+3? Assistant: <think>", "5", "arithmetic")

    def result(text: str):
        return fn(prompt, Completion((1,) * 8, text, (0.0,) * 8, "stop"))

    for text in ["2+3=5 <answer>5</answer>", "2+3=5 \\boxed{5}"]:
        r = result(text)
        assert r.reward == 0.0 and not r.correct and r.components["format"] == 0.0, text
    r = result("2+3=5</think> <answer>5</answer>")
    assert r.correct and r.reward == 2.0


# -- tags alone ------------------------------------------------------------------------------------

TAGS_ALONE = [
    "<think></think><answer></answer>",
    "<think></think><answer>5</answer>",
    "<think> </think>\n<answer> </answer>",
    "<think>\n\n</think>\n<answer>5</answer>\n",
    "<think>r</think><answer>\n</answer>",
    "<think></think>",
    "<answer></answer>",
    "<think><answer></answer></think>",
]


@pytest.mark.parametrize("text", TAGS_ALONE)
def test_tags_alone_earn_no_format_reward(text: str) -> None:
    assert format_reward(text).value == 0.0


def test_format_reward_needs_both_blocks_filled() -> None:
    assert format_reward("<think>r</think><answer>5</answer>").value == 1.0
    assert format_reward("<think></think><answer>5</answer>").reason == "empty <think>"
    assert format_reward("<think>r</think><answer> </answer>").reason == "empty answer"


# -- hostile sizes stay cheap ----------------------------------------------------------------------

MB5 = 5 * 1024 * 1024


def test_megabytes_of_boxes_are_cheap() -> None:
    for text in ["\\boxed{1}" * (MB5 // 9), "x</think>" + "\\boxed{1} \\boxed{2}" * (MB5 // 19),
                 "\\boxed{" + "\\boxed{1}" * (MB5 // 9) + "}"]:
        start = time.perf_counter()
        extract_answer(text)
        assert time.perf_counter() - start < 5.0


# -- one extractor for training and evaluation -----------------------------------------------------

AUDIT = SEVERAL_BOXED + THINK_ONLY + TAGS_ALONE + [
    "<think>x</think><answer>5</answer>",
    "<answer>1</answer> \\boxed{2}",
    "\\boxed{\\frac{1}{2}} and \\boxed {3",
    "<answer>The answer is \\boxed{7}.</answer>",
]


@pytest.mark.parametrize("text", AUDIT)
def test_the_reward_grades_exactly_the_extracted_answer(text: str) -> None:
    seen: list[str] = []

    def check(verifier: str, answer: str, ground_truth: str) -> bool:
        seen.append(answer)
        return False

    score = accuracy_reward(text, "5", verifier="math", check=check)
    answer = extract_answer(text)
    assert seen == ([] if answer is None else [answer])
    assert (score.reason == final_answer(text)[1]) if answer is None else score.reason == "wrong answer"


class _Engines:
    def __init__(self, texts: list[list[str]]):
        self.texts = texts

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, stop, seed, on_part=None):
        groups = tuple(tuple(Completion((1, 2), t, (-0.5, -0.5), "stop") for t in self.texts[p.index][:n])
                       for p in prompts)
        return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((1,) for _ in prompts),
                            completions=groups, policy_version=0)


class _Rewards:
    """The real reward function, run inline."""

    def __init__(self):
        self.fn = build_reward_fn(RewardConfig(verifier="math"), max_response_tokens=64, check=check_inline)

    def score(self, rollout):
        results = tuple(tuple(self.fn(p, c) for c in group)
                        for p, group in zip(rollout.prompts, rollout.completions, strict=True))
        return ScoredBatch(rollout=rollout, results=results)


class _System:
    def __init__(self, texts: list[list[str]]):
        self.engines, self.rewards, self.pad_token_id = _Engines(texts), _Rewards(), 0


def test_evaluation_votes_on_the_answers_the_reward_graded() -> None:
    # Prompt 0: one right answer, one inside an unclosed <think>, two hedging "4 or 5". An extractor
    # that took the last box alone or looked inside <think> would see "5" four times (cons@k 1); the
    # reward's extractor sees "5" once and "4 or 5" twice, so the vote picks a wrong answer.
    texts = [
        ["a</think><answer>5</answer>", "so <answer>5</answer>",
         "b</think>\\boxed{4} or \\boxed{5}", "b</think>\\boxed{4} or \\boxed{5}"],
        ["c</think><answer>5</answer>"] * 4,
    ]
    prompts = [Prompt(i, "Q: 2+3? Assistant: <think>", "5", "math") for i in range(2)]
    cfg = replace(TrainConfig(), eval=EvalConfig(samples_per_prompt=4, temperature=1.0))
    result = steps.evaluate(_System(texts), prompts, cfg, seed=0)  # type: ignore[arg-type]
    assert result["pass@1"] == pytest.approx((1 / 4 + 1) / 2)
    assert result["cons@k"] == 0.5
    answers = [extract_answer(completion_for_reward(prompts[0].text, t)) for t in texts[0]]
    assert answers == ["5", None, "4 or 5", "4 or 5"]
