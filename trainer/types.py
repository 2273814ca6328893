"""Wire types: the frozen dataclasses that cross actor boundaries.

Flow of one step (B prompts, G samples each, N = B x G sequences):

    list[Prompt] --rollout--> RolloutBatch --reward--> ScoredBatch --controller--> TrainBatch --learner
                  (each engine's RolloutPart is scored as it arrives, while the other engines generate)

Token-level tensors in a `TrainBatch` are aligned with `input_ids`: position t holds the value for
token `input_ids[:, t]` (its log-probability given the tokens before it). Prompt positions and padding
carry 0 and are False in `response_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
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
class RolloutPart:
    """Groups of a batch that one engine has finished while the others may still generate; the controller
    scores them meanwhile (`trainer.steps.score`)."""

    positions: tuple[int, ...]
    """[B_part] where each group of `batch` sits in the whole batch's prompt order."""
    batch: RolloutBatch
    """[B_part] groups, group i being the batch's group `positions[i]`."""


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
        return torch.tensor([[r.reward for r in g] for g in self.results], dtype=torch.float32)


@dataclass(frozen=True)
class TrainBatch:
    """Padded tensors for the learner. All [N, L] tensors share the `input_ids` alignment."""

    input_ids: Tensor
    """[N, L] int64 prompt + completion tokens, right-padded."""
    attention_mask: Tensor
    """[N, L] bool, True on real (non-pad) tokens."""
    response_mask: Tensor
    """[N, L] bool, True on completion tokens that count in the loss."""
    advantages: Tensor
    """[N] float32 group-relative advantage of each sequence."""
    old_logprobs: Tensor
    """[N, L] float32 logprobs of the policy that sampled (or 0 before they are computed)."""
    ref_logprobs: Tensor
    """[N, L] float32 reference-model logprobs (zeros when kl_coef = 0)."""
    rollout_logprobs: Tensor
    """[N, L] float32 logprobs as vLLM reported them."""
    policy_version: int = 0
    """Version of the weights that sampled these sequences."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Per-sequence tensors the loss does not need (kept for metrics), e.g. rewards [N]."""

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Completion tokens that count in the loss."""
        return int(self.response_mask.sum())

    def select(self, index: Tensor | slice) -> TrainBatch:
        """Rows `index` of every [N, ...] tensor (a mini- or micro-batch)."""
        return TrainBatch(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            advantages=self.advantages[index],
            old_logprobs=self.old_logprobs[index],
            ref_logprobs=self.ref_logprobs[index],
            rollout_logprobs=self.rollout_logprobs[index],
            policy_version=self.policy_version,
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def replace(self, **changes: object) -> TrainBatch:
        import dataclasses

        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WeightVersion:
    """What one engine reports after a weight sync."""

    engine: int
    """Engine index."""
    policy_version: int
    """Version it now holds."""
    checksums: dict[str, str] = field(default_factory=dict)
    """Per-tensor checksums, when asked for."""
