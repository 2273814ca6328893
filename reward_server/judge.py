"""A generative judge as a reward (DeepSeek-R1, arXiv:2501.12948, section 2.3.3): where no rule can check
an answer, a model served on a rollout engine reads the question, the ground truth and the prediction,
and writes a verdict that is parsed strictly.

    items (prompt, completion) --judge_prompt--> judge prompts --generate (greedy, on an engine)-->
        judge outputs --parse_verdict--> 1 (CORRECT) / 0 (INCORRECT) / 0 with error "malformed verdict"

`parse_verdict` accepts exactly one line `Verdict: CORRECT` or `Verdict: INCORRECT` (the keyword in any
case, the value in capitals, nothing else on the line) and it must be the last non-empty line. Anything
else is malformed: no verdict, two verdict lines (even agreeing ones), text after the verdict, "NOT
CORRECT", "CORRECT." or a lower-case value. A malformed verdict scores 0 and is counted as an error,
like a verifier that raised: the sample stays in its group (G never changes).

`JudgeScorer` is a plain class; its `generate` argument is any function from judge prompts to judge
outputs, so the same code runs on a Ray engine actor (`engine_generate`) and in tests with a fake.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cluster.untyped import ActorHandle
from reward_server.response_format import completion_for_reward, split_readable
from reward_server.samples import Completion, Prompt, RewardResult
from reward_server.verifiers import extract_answer

JUDGE_TEMPLATE = (
    "You are grading an answer to a question against the reference answer.\n"
    "Question: {question}\n"
    "Reference answer: {ground_truth}\n"
    "Answer to grade: {prediction}\n"
    "Is the answer to grade equivalent to the reference answer? Reply with one line, exactly "
    "'Verdict: CORRECT' or 'Verdict: INCORRECT'.\n"
)
"""The judge's instruction; R1 does not publish its prompt."""

VERDICT_RE = re.compile(r"[ \t]*verdict:[ \t]*(CORRECT|INCORRECT)[ \t]*", re.IGNORECASE)
"""One verdict line; `re.IGNORECASE` is undone for the value below (it must be in capitals)."""

MAX_PREDICTION_CHARS = 2000
"""The prediction is cut to this many characters in the judge prompt (the judge's context is finite)."""

MALFORMED = "malformed verdict"


@dataclass(frozen=True)
class Verdict:
    correct: bool


def judge_prompt(question: str, ground_truth: str, prediction: str) -> str:
    """The judge's prompt for one prediction."""
    return JUDGE_TEMPLATE.format(question=question, ground_truth=ground_truth,
                                 prediction=prediction[:MAX_PREDICTION_CHARS])


def parse_verdict(text: str) -> Verdict | None:
    """The verdict of a judge's output, or None when it is malformed (see the module docstring)."""
    lines = [line for line in text.split("\n") if line.strip()]
    is_verdict = [line.strip().lower().startswith("verdict") for line in lines]
    if sum(is_verdict) != 1 or not is_verdict[-1]:
        return None
    match = VERDICT_RE.fullmatch(lines[-1])
    if match is None or match.group(1) not in ("CORRECT", "INCORRECT"):
        return None
    return Verdict(correct=match.group(1) == "CORRECT")


def prediction_of(prompt_text: str, completion_text: str) -> str:
    """What the judge grades: the final answer (`<answer>` or `\\boxed{}`), else the readable format's
    summary, else the text after the chain of thought, else the whole completion."""
    text = completion_for_reward(prompt_text, completion_text)
    answer = extract_answer(text)
    if answer is not None:
        return answer
    readable = split_readable(text)
    if readable is not None:
        return readable[1].strip()
    end = text.rfind("</think>")
    return text[end + len("</think>"):].strip() if end != -1 else text.strip()


Generate = Callable[[list[str]], list[str]]
"""Judge prompts -> judge outputs (one each, in order)."""


class JudgeScorer:
    """Scores (prompt, completion) pairs by asking a judge model; reward = `weight` x verdict."""

    def __init__(self, generate: Generate, *, question_of: Callable[[Prompt], str] | None = None,
                 weight: float = 1.0) -> None:
        """`question_of(prompt)` gives the bare question (default: the rendered prompt text)."""
        self.generate = generate
        self.question_of = question_of or (lambda p: p.text)
        self.weight = weight

    def score(self, items: Sequence[tuple[Prompt, Completion]]) -> list[RewardResult]:
        """One RewardResult per item, in order; never raises for a bad verdict."""
        if not items:
            return []
        prompts = [judge_prompt(self.question_of(p), p.ground_truth, prediction_of(p.text, c.text)) for p, c in items]
        outputs = self.generate(prompts)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"the judge returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._result(parse_verdict(out)) for out in outputs]

    def _result(self, verdict: Verdict | None) -> RewardResult:
        if verdict is None:
            return RewardResult(reward=0.0, components={"judge": 0.0}, correct=False, error=MALFORMED)
        value = 1.0 if verdict.correct else 0.0
        return RewardResult(reward=self.weight * value, components={"judge": value}, correct=verdict.correct)


def engine_generate(engine_actor: ActorHandle, *, max_tokens: int = 32, timeout_s: float = 600.0) -> Generate:
    """A `Generate` on one rollout engine actor (`actors.rollout.RolloutWorker` under Ray): greedy, one
    sample per judge prompt, stopping after the verdict line."""
    import ray

    def generate(texts: list[str]) -> list[str]:
        prompts = [Prompt(index=i, text=t, ground_truth="", task="judge") for i, t in enumerate(texts)]
        batch = ray.get(engine_actor.generate.remote(prompts, n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens,
                                                     stop=("\n\n",), seed=0, expected_version=0), timeout=timeout_s)
        return [group[0].text for group in batch.completions]

    return generate
