"""Rule-based rewards (DeepSeek-R1, arXiv:2501.12948, section 2.2.2) and the composite scorer.

Each component is a pure function returning a `Score`: its value, and why it is low. Components:

- accuracy: the final answer (after `</think>`: the last `<answer>`, else the last `\\boxed{}`, with
  the boxes that only separators join to it read as one list; `reward_server.verifiers.final_answer`)
  checked by the task's verifier (symbolic math, arithmetic, countdown); 1 or 0. Evaluation extracts
  answers with the same function. For the `code` verifier the answer's last fenced Python block runs
  against the row's test cases in a sandbox (`reward_server.code_verifier`): 1 when all pass, or the
  share passed with partial credit.
- format: R1-Zero layout, `<think>...</think>` then `<answer>...</answer>` and nothing else.
- language: R1's language-consistency reward, the share of chain-of-thought words in the target
  language.
- overlong: DAPO's soft overlong punishment (arXiv:2503.14476, eq. 13).

`build_reward_fn` unpacks a `RewardConfig` into a `RewardFn`: the weighted sum, every component
unweighted in `components`, and `error` set when the verifier raised or timed out (reward 0 for
accuracy, never an exception: a sample is never dropped, so G never changes).

Hostile text is cheap: answer extraction, format and language each make one linear pass over the
text (no regex that can backtrack quadratically), so only the verifier needs, and gets, a killable
time limit (`reward_server.sandbox`); a 5 MB completion scores in well under a second.

Departures from the papers: R1 does not define the language reward for a chain of thought with no
words; here it is 0 (nothing to reward). Words are runs of letters, and each CJK character counts
as one word, since Chinese has no spaces.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from reward_server.code_sandbox import CodeSandbox, SandboxLimits
from reward_server.code_verifier import CodeVerdict, CodeVerifier, extract_program
from reward_server.config import RewardConfig
from reward_server.response_format import (
    COLD_START_MARKER,
    chain_of_thought,
    completion_for_reward,
    split_readable,
)
from reward_server.samples import Completion, Prompt, RewardResult
from reward_server.sandbox import VerifierError, VerifierSandbox, VerifierTimeout
from reward_server.textscan import TARGET_LETTERS, count_words
from reward_server.verifiers import final_answer, verify_arithmetic, verify_countdown

VERIFIER_NAMES = ("math", "arithmetic", "countdown", "code")
"""Accuracy verifiers a config or a `Prompt.task` may name."""

MAX_ANSWER_CHARS = 4096
"""Longer final answers are wrong without a verifier call: real answers are a few dozen characters
(a matrix a few hundred), and megabytes shipped to the verifier worker would only burn its timeout."""

Check = Callable[[str, str, str], bool]
"""(verifier name, answer, ground truth) -> verdict; may raise (VerifierTimeout, any exception)."""


@dataclass(frozen=True)
class Score:
    """One component's value, and why it is low."""

    value: float
    """Unweighted value of the component."""
    reason: str | None = None
    """Why the value is low (diagnostics); None when full marks."""
    failed: bool = False
    """The component did not run to the end (timeout or exception); `reason` says why."""


# -- accuracy ------------------------------------------------------------------------------------


def check_inline(verifier: str, answer: str, ground_truth: str) -> bool:
    """Run a verifier in this process, without a time bound (tests, offline evaluation of trusted
    text). Model text during training goes through a `VerifierSandbox` instead."""
    if verifier == "math":
        from reward_server.math_answer import verify_math  # sympy import only when needed

        return verify_math(answer, ground_truth)
    fns = {"arithmetic": verify_arithmetic, "countdown": verify_countdown}
    if verifier not in fns:
        raise ValueError(f"unknown verifier {verifier!r}; known: {', '.join(VERIFIER_NAMES)}")
    return fns[verifier](answer, ground_truth)


def accuracy_reward(text: str, ground_truth: str, *, verifier: str, check: Check = check_inline) -> Score:
    """1 if the final answer in `text` is accepted by `verifier`, else 0."""
    answer, why = final_answer(text)
    if answer is None:
        return Score(0.0, why)
    if len(answer) > MAX_ANSWER_CHARS:
        return Score(0.0, f"answer longer than {MAX_ANSWER_CHARS} characters")
    try:
        ok = check(verifier, answer, ground_truth)
    except VerifierTimeout:
        return Score(0.0, "timeout", failed=True)
    except VerifierError as exc:  # already the worker's "ExceptionType: message"
        return Score(0.0, str(exc), failed=True)
    except Exception as exc:
        return Score(0.0, f"{type(exc).__name__}: {exc}", failed=True)
    return Score(1.0) if ok else Score(0.0, "wrong answer")


def code_accuracy(verdict: CodeVerdict, *, partial_credit: bool) -> Score:
    """1 when the program passed every case; else 0, or the share passed with `partial_credit`."""
    if verdict.error:
        return Score(0.0, verdict.reason, failed=True)
    if verdict.passed == verdict.total:
        return Score(1.0)
    return Score(verdict.passed / verdict.total if partial_credit else 0.0, verdict.reason or "wrong answer")


# -- format --------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"</?(?:think|answer)>")
_FORMAT_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def format_reward(text: str) -> Score:
    """1 for `<think>...</think><answer>...</answer>` (R1-Zero), else 0. `text` must already carry
    the `<think>` the prompt opened (see `reward_server.response_format.completion_for_reward`). A text that opens
    with the cold-start marker is checked as R1's readable format instead (`readable_format_reward`).

    Exactly one think block, then exactly one answer block, both non-empty (the tags alone earn
    nothing), only whitespace around and between: the text's tags must be these four in this order. Found by one regex scan that stops at the
    fifth tag (linear; a tempered `(?:(?!tag).)*` pattern backtracks over megabytes of text).
    """
    if text.startswith(COLD_START_MARKER):
        return readable_format_reward(text)
    tags = list(itertools.islice(_TAG_RE.finditer(text), len(_FORMAT_TAGS) + 1))
    if [t.group() for t in tags] != _FORMAT_TAGS:
        return Score(0.0, "not <think>...</think><answer>...</answer>")
    think, end_think, answer, end_answer = tags
    gaps = (text[: think.start()], text[end_think.end() : answer.start()], text[end_answer.end() :])
    if any(gap.strip() for gap in gaps):
        return Score(0.0, "not <think>...</think><answer>...</answer>")
    if not text[think.end() : end_think.start()].strip():
        return Score(0.0, "empty <think>")
    if not text[answer.end() : end_answer.start()].strip():
        return Score(0.0, "empty answer")
    return Score(1.0)


def readable_format_reward(text: str) -> Score:
    """1 for R1's readable format `|special_token|reasoning|special_token|summary` (arXiv:2501.12948,
    2.3.1) whose summary ends with one non-empty `<answer>...</answer>` and whose reasoning holds no tag."""
    parts = split_readable(text)
    if parts is None:
        return Score(0.0, "not |special_token|reasoning|special_token|summary")
    reasoning, summary = parts
    tags = list(itertools.islice(_TAG_RE.finditer(summary), 3))
    if (_TAG_RE.search(reasoning) is not None or [t.group() for t in tags] != ["<answer>", "</answer>"]
            or summary[tags[1].end():].strip()):
        return Score(0.0, "summary does not end with its one <answer>...</answer>")
    if not summary[tags[0].end():tags[1].start()].strip():
        return Score(0.0, "empty answer")
    return Score(1.0)


# -- language consistency ------------------------------------------------------------------------


def language_reward(text: str, *, target_language: str) -> Score:
    """Share (0..1) of the chain-of-thought's words written in `target_language` (R1). The chain of
    thought is the reasoning between the cold-start markers, else the text between the first `<think>`
    and the first `</think>` after it (`reward_server.response_format.chain_of_thought`)."""
    if target_language not in TARGET_LETTERS:
        raise ValueError(f"unknown target language {target_language!r}; known: {', '.join(TARGET_LETTERS)}")
    # chain_of_thought uses str.find, not `<think>(.*?)</think>`: the lazy regex rescans to the end from
    # every unclosed `<think>` (32,000 of them took 22 s).
    cot = chain_of_thought(text)
    if cot is None:
        return Score(0.0, "no <think>...</think>")
    words, target = count_words(cot, target_language)
    if not words:
        return Score(0.0, "no words in the chain of thought")
    share = target / words
    return Score(share) if share == 1.0 else Score(share, f"{1 - share:.0%} of words not {target_language}")


# -- overlong ------------------------------------------------------------------------------------


def overlong_penalty(num_tokens: int, *, max_response_tokens: int, buffer_tokens: int) -> Score:
    """DAPO soft overlong punishment (arXiv:2503.14476, eq. 13): 0 up to `max - buffer` tokens,
    linear down to -1 at `max`, -1 beyond. A zero buffer is the hard cut: -1 only beyond `max`."""
    soft_start = max_response_tokens - buffer_tokens
    if num_tokens > max_response_tokens:
        return Score(-1.0, "longer than max_response_tokens")
    if num_tokens <= soft_start:
        return Score(0.0)
    return Score((soft_start - num_tokens) / buffer_tokens, "in the overlong buffer")


# -- the composite -------------------------------------------------------------------------------


class RewardFn:
    """`score(prompt, completion) -> RewardResult`: the weighted sum of the components."""

    def __init__(
        self,
        *,
        verifier: str,
        weights: dict[str, float],
        target_language: str,
        max_response_tokens: int,
        overlong_buffer_tokens: int,
        check: Check,
        code: CodeVerifier | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.weights = weights
        self.target_language = target_language
        self.max_response_tokens = max_response_tokens
        self.overlong_buffer_tokens = overlong_buffer_tokens
        self.check = check
        self.code = code
        self._close = close

    def verifier_of(self, prompt: Prompt) -> str:
        """Prompt.task picks the verifier per sample when it names one (mixed-task data sets)."""
        return prompt.task if prompt.task in VERIFIER_NAMES else self.verifier

    def score_many(self, items: Sequence[tuple[Prompt, Completion]]) -> list[RewardResult]:
        """`self(prompt, completion)` for each item, in order; the programs of `code` samples run in parallel."""
        accuracies = self._code_accuracies(items)
        return [self(p, c, accuracy=accuracies.get(i)) for i, (p, c) in enumerate(items)]

    def _code_accuracies(self, items: Sequence[tuple[Prompt, Completion]]) -> dict[int, Score]:
        """Accuracy of each `code` sample of `items`, by index."""
        out: dict[int, Score] = {}
        jobs: dict[int, tuple[str, str]] = {}
        for i, (prompt, completion) in enumerate(items):
            if self.verifier_of(prompt) != "code":
                continue
            program, why = extract_program(completion_for_reward(prompt.text, completion.text))
            if program is None:
                out[i] = Score(0.0, why)
            elif self.code is None:
                out[i] = Score(0.0, "no code verifier was built", failed=True)
            else:
                jobs[i] = (program, prompt.ground_truth)
        if jobs and self.code is not None:
            verdicts = self.code.verify_many(list(jobs.values()))
            for i, verdict in zip(jobs, verdicts, strict=True):
                out[i] = code_accuracy(verdict, partial_credit=self.code.partial_credit)
        return out

    def __call__(self, prompt: Prompt, completion: Completion, *, accuracy: Score | None = None) -> RewardResult:
        """`accuracy`: already computed (`score_many`), else computed here."""
        text = completion_for_reward(prompt.text, completion.text)
        verifier = self.verifier_of(prompt)
        if accuracy is None:
            accuracy = (self._code_accuracies([(prompt, completion)])[0] if verifier == "code" else
                        accuracy_reward(text, prompt.ground_truth, verifier=verifier, check=self.check))
        scores = {
            "accuracy": accuracy,
            "format": format_reward(text),
            "language": language_reward(text, target_language=self.target_language),
            "overlong": overlong_penalty(  # the policy's own tokens: a tool's output is not its length
                completion.policy_tokens(),
                max_response_tokens=self.max_response_tokens,
                buffer_tokens=self.overlong_buffer_tokens,
            ),
        }
        # Only the verifier can fail; the other components are total functions of the text.
        accuracy = scores["accuracy"]
        return RewardResult(
            reward=sum(self.weights[name] * s.value for name, s in scores.items()),
            components={name: s.value for name, s in scores.items()},
            correct=accuracy.value == 1.0,
            error=accuracy.reason if accuracy.failed else None,
        )

    score = __call__

    def close(self) -> None:
        """Stop the verifier worker, if this function owns one."""
        if self._close is not None:
            self._close()


def build_reward_fn(cfg: RewardConfig, *, max_response_tokens: int, check: Check | None = None) -> RewardFn:
    """Unpack `cfg` into a `RewardFn`. Without `check`, verifiers run in a `VerifierSandbox` with
    the configured per-sample timeout."""
    if cfg.verifier not in VERIFIER_NAMES:
        raise ValueError(f"unknown verifier {cfg.verifier!r}; known: {', '.join(VERIFIER_NAMES)}")
    if cfg.target_language not in TARGET_LETTERS:
        raise ValueError(f"unknown target language {cfg.target_language!r}")
    if cfg.overlong_weight and not 0 <= cfg.overlong_buffer_tokens <= max_response_tokens:
        raise ValueError(
            f"overlong_buffer_tokens={cfg.overlong_buffer_tokens} must be in [0, max_response_tokens="
            f"{max_response_tokens}]"
        )
    close = None
    if check is None:
        sandbox = VerifierSandbox(cfg.timeout_s)
        check, close = sandbox.check, sandbox.close
    return RewardFn(
        verifier=cfg.verifier,
        weights={
            "accuracy": cfg.accuracy_weight,
            "format": cfg.format_weight,
            "language": cfg.language_weight,
            "overlong": cfg.overlong_weight,
        },
        target_language=cfg.target_language,
        max_response_tokens=max_response_tokens,
        overlong_buffer_tokens=max(0, min(cfg.overlong_buffer_tokens, max_response_tokens)),
        check=check,
        code=build_code_verifier(cfg),
        close=close,
    )


def build_code_verifier(cfg: RewardConfig) -> CodeVerifier:
    """The `code` verifier of `cfg.code`: a sample's budget is `cfg.timeout_s` over all its cases."""
    limits = SandboxLimits()
    if cfg.code.case_wall_s is not None:
        limits = replace(limits, wall_s=cfg.code.case_wall_s)
    if cfg.code.memory_bytes is not None:
        limits = replace(limits, memory_bytes=cfg.code.memory_bytes)
    return CodeVerifier(CodeSandbox(limits, workers=cfg.code.workers), partial_credit=cfg.code.partial_credit,
                        sample_budget_s=cfg.timeout_s)
