"""Wire types: the frozen dataclasses that cross actor boundaries.

Flow of one step (B prompts, G samples each, N = B x G sequences):

    list[Prompt] --rollout--> RolloutBatch --reward--> ScoredBatch --controller--> TrainBatch --learner
                  (each engine's RolloutPart is scored as it arrives, while the other engines generate)

Token-level tensors in a `TrainBatch` are aligned with `input_ids`: position t holds the value for
token `input_ids[:, t]` (its log-probability given the tokens before it). Prompt positions and padding
carry 0 and are False in `response_mask`.

`Prompt`, `Completion`, `RolloutBatch`, `RewardResult` and `ScoredBatch` are defined with the reward actors that
read and write them (`reward_server.samples`) and imported from here like the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from reward_server.samples import Completion as Completion
from reward_server.samples import Prompt as Prompt
from reward_server.samples import RewardResult as RewardResult
from reward_server.samples import RolloutBatch as RolloutBatch
from reward_server.samples import ScoredBatch as ScoredBatch


@dataclass(frozen=True)
class RolloutPart:
    """Groups of a batch that one engine has finished while the others may still generate; the controller
    scores them meanwhile (`trainer.steps.score`)."""

    positions: tuple[int, ...]
    """[B_part] where each group of `batch` sits in the whole batch's prompt order."""
    batch: RolloutBatch
    """[B_part] groups, group i being the batch's group `positions[i]`."""


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
