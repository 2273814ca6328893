"""What the controller may ask of the actor groups: typed protocols, so the loop never touches `Any`.

    controller ──► EngineGroupProtocol   N vLLM engines    (actors.engine_group.EngineGroup)
               ──► LearnerGroupProtocol  TP x PP x DP ranks (actors.learner_group.LearnerGroup)
               ──► RewardGroupProtocol    K reward actors    (reward_server.reward_group.RewardGroup)
               ──► WeightSyncProtocol    learner rank 0 ──► every engine (actors.weight_sync.WeightSync)

Each group is a plain object in the driver that fans a verb out to its actors and waits with a
deadline; a failure names the actor and the root cause (`cluster.calls.RemoteCallError`). This module
imports neither Ray nor the actors, so the controller and its tests can use fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from torch import Tensor

from reward_server.tools import ToolSettings
from trainer.types import Prompt, RolloutBatch, RolloutPart, ScoredBatch, TrainBatch, WeightVersion


class StaleEngineError(RuntimeError):
    """An engine does not hold the weight version the controller expects (raised by a rollout worker asked
    to sample, and by the engine group's version check)."""


class EngineGroupProtocol(Protocol):
    """Rollout engines used as one."""

    expected_version: int
    """The weight version every engine must hold before it may sample."""
    tp_sizes: list[int]
    """Tensor-parallel size of each engine."""

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 stop: Sequence[str], seed: int | None,
                 on_part: Callable[[RolloutPart], None] | None = None, tools: ToolSettings | None = None
                 ) -> RolloutBatch:
        """B prompts -> B groups of n completions in prompt order; refuses engines holding another version.
        `on_part` gets each engine's groups as soon as that engine has finished them (each group once);
        `tools`: the tools of each data source, for multi-turn rollouts."""
        ...

    def wait_until_up(self) -> list[WeightVersion]:
        """Wait (with the start-up deadline) until every engine loaded its model."""
        ...

    def versions(self, with_checksums: bool = False) -> list[WeightVersion]: ...

    def check_versions(self) -> None:
        """Raise unless every engine holds `expected_version`."""
        ...

    def sleep(self, level: int = 1) -> None:
        """Free the engines' device memory (colocated runs, while the learner works)."""
        ...

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate: ["weights"], then ["kv_cache"]; None: both."""
        ...

    def memory(self) -> list[dict[str, float]]: ...

    def shutdown(self) -> None: ...


class LearnerGroupProtocol(Protocol):
    """The policy (or reference) ranks; every verb runs on all ranks together."""

    def compute_logprobs(self, batch: TrainBatch) -> Tensor:
        """[N, L] logprobs of the batch's tokens under the current weights."""
        ...

    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor:
        """[N, L] logprobs under the frozen reference."""
        ...

    def forward_backward(self, batch: TrainBatch, loss_name: str, num_tokens: int, num_sequences: int,
                         loss_kwargs: dict) -> dict[str, float]: ...

    def optim_step(self) -> dict[str, float]: ...

    def save(self, directory: str | Path) -> None: ...

    def load(self, directory: str | Path) -> None: ...

    def export_hf(self, directory: str | Path) -> None: ...

    def offload(self) -> None:
        """Move parameters, optimizer state and the reference to host memory while colocated engines
        generate; the verbs that need them are refused until `onload`."""
        ...

    def onload(self) -> None:
        """Every rank's state back on its device, bit for bit."""
        ...

    def memory(self) -> list[dict[str, float]]: ...

    def shutdown(self) -> None: ...


class RewardGroupProtocol(Protocol):
    """Stateless scorers."""

    def score(self, rollout: RolloutBatch) -> ScoredBatch:
        """Rewards for every completion, [B][G] in the rollout's order; never drops a sample."""
        ...

    def shutdown(self) -> None: ...


class WeightSyncProtocol(Protocol):
    """The one owner of weight sync (the group was formed when the system was built)."""

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's weights to every engine as `version` and prove they hold it; metrics."""
        ...


class SystemProtocol(Protocol):
    """The groups of a run as the controller's steps see them (trainer.system.System)."""

    engines: EngineGroupProtocol
    learner: LearnerGroupProtocol
    rewards: RewardGroupProtocol
    pad_token_id: int

    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor:
        """Reference logprobs, from the reference ranks or the policy ranks that hold it."""
        ...
