"""The wire types of scoring: prompts, their sampled completions, and the rewards the reward actors give them.

    RolloutBatch [B][G] (Prompt, Completion) --reward actors--> ScoredBatch [B][G] RewardResult

They cross from the rollout engines to the reward actors and on to the controller; `trainer.types`
re-exports them with the learner's wire types, and shows where each sits in a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Prompt:
    """One data set row, rendered with the template."""

    index: int
    """Position in its data set (stable across epochs; used for resume and logging)."""
    text: str
    """The prompt as the model sees it (template applied)."""
    ground_truth: str
    """What the accuracy verifier compares the final answer with."""
    task: str = "math"
    """Its data source: picks the scorer (`reward.routes`) and, for rule-based ones, the verifier ("math",
    "arithmetic", "countdown", "code")."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion of a prompt."""

    token_ids: tuple[int, ...]
    """Sampled token ids (no prompt)."""
    text: str
    """Detokenised completion."""
    rollout_logprobs: tuple[float, ...]
    """Per-token log-probabilities as vLLM reported them while sampling, one per token id."""
    finish_reason: str
    """'stop' (EOS or a stop string) or 'length' (cut at max tokens)."""
    loss_mask: tuple[bool, ...] = ()
    """[T] False on the tokens the policy did not sample (tool outputs of a multi-turn rollout, which never
    count in the loss); empty: every token is the policy's."""
    turns: int = 0
    """Policy turns of a multi-turn rollout (0: sampled in one go, without tools)."""
    tool_calls: int = 0
    """Tool calls made (each one's output is in `token_ids` with loss mask False)."""
    tool_errors: tuple[str, ...] = ()
    """Why each failed tool call failed (a timeout, the tool's exception); the model saw `Error: <reason>`."""
    tool_outputs: tuple[str, ...] = ()
    """The text of each tool output appended to the response, markers included, in order (each one is in
    `text`, and its tokens in `token_ids` with loss mask False)."""

    def policy_mask(self) -> tuple[bool, ...]:
        """[T] True on the tokens the policy sampled."""
        return self.loss_mask or (True,) * len(self.token_ids)

    def policy_tokens(self) -> int:
        """Tokens the policy sampled: the response's length without its tool outputs."""
        return sum(self.policy_mask())

    def policy_text(self) -> str:
        """`text` without its tool outputs: what the policy wrote."""
        text, out, at = self.text, [], 0
        for start, end in self.tool_spans():
            out.append(text[at:start])
            at = end
        return "".join(out) + text[at:]

    def tool_spans(self) -> tuple[tuple[int, int], ...]:
        """[start, end) character offsets of each tool output in `text`, in order."""
        spans, at = [], 0
        for output in self.tool_outputs:
            i = self.text.find(output, at)
            if i < 0:  # not there as appended (cannot happen for a rollout's own completion): stop
                break
            spans.append((i, i + len(output)))
            at = i + len(output)
        return tuple(spans)


@dataclass(frozen=True)
class RolloutBatch:
    """Groups of G completions for B prompts, all sampled with the same weights."""

    prompts: tuple[Prompt, ...]
    """[B] the prompts, in the order they were asked for."""
    prompt_token_ids: tuple[tuple[int, ...], ...]
    """[B] tokenised prompts."""
    completions: tuple[tuple[Completion, ...], ...]
    """[B][G] completions; group b belongs to prompts[b]."""
    policy_version: int
    """Version of the weights that sampled every completion here."""
    engine_seconds: float = 0.0
    """Wall time the engines spent generating."""

    @property
    def group_size(self) -> int:
        return len(self.completions[0]) if self.completions else 0

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for group in self.completions for c in group)

    def select(self, keep: Sequence[int]) -> RolloutBatch:
        """The groups `keep`, in that order."""
        return RolloutBatch(prompts=tuple(self.prompts[i] for i in keep),
                            prompt_token_ids=tuple(self.prompt_token_ids[i] for i in keep),
                            completions=tuple(self.completions[i] for i in keep),
                            policy_version=self.policy_version, engine_seconds=self.engine_seconds)


@dataclass(frozen=True)
class RewardResult:
    """The score of one completion, with every component on its own."""

    reward: float
    """Weighted sum of the components."""
    components: dict[str, float]
    """Unweighted value of each reward component, e.g. {'accuracy': 1.0, 'format': 1.0}."""
    correct: bool
    """The accuracy verifier accepted the answer."""
    error: str | None = None
    """Why a component failed ('timeout', an exception's text); None when all ran."""


@dataclass(frozen=True)
class ScoredBatch:
    """A rollout batch with its rewards, [B][G] like the completions."""

    rollout: RolloutBatch
    results: tuple[tuple[RewardResult, ...], ...]
    """[B][G] reward of each completion."""

    def rewards(self) -> Tensor:
        """[B, G] float32 total rewards."""
        import torch  # here, so the reward actors that build these do not import torch

        return torch.tensor([[r.reward for r in g] for g in self.results], dtype=torch.float32)
