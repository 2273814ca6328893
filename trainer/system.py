"""The actor groups of a run, built from the config: rollout engines, learner (+ reference), reward group,
and the weight sync between them.

The groups are started by the one builder of every entry point: `trainer.roles.plan_system` decides them
from the config (which roles, placement, every setting), `actors.launch.start_system` starts them and owns
them (`System.shutdown` stops exactly what it started, Ray included when it started Ray). The controller
sees the groups through the protocols of `trainer.protocols`.

Colocated runs (engines and learner ranks share GPUs): engines start first, each measuring free memory
against `rollout.gpu_memory_utilization`, then sleep while the learner starts. In the loop the engines
sleep while the learner computes logprobs and trains, and wake in stages for the weight sync: their
weights first (the sync writes into them), then the learner moves its parameters and optimizer state to
host memory (`LearnerWorker.offload`), then the engines' KV cache takes what it freed. Verbs that read or
write the learner's state outside that window (load, save, export) run inside `learner_turn()`.

    step:  generate (engines awake, learner offloaded) -> sleep_engines: engines sleep, learner onloads
           -> logprobs, train -> sync_weights: wake weights, push, learner offloads, wake KV cache

A sleep that a weight sync follows (`sleep_engines(until_sync=True)`, the training step's) asks for vLLM's
level 2: the engines drop their weights instead of copying them to host and back, since the sync writes
every one (an engine whose reload would not restore them sleeps at level 1, see
`actors.rollout.deepest_sleep_level`). Any other sleep is level 1, and engines that dropped their weights
are never woken without a sync.

Colocated placement: see `trainer.roles`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import TrainConfig
from trainer.protocols import (
    EngineGroupProtocol,
    LearnerGroupProtocol,
    RewardGroupProtocol,
    WeightSyncProtocol,
)
from trainer.types import TrainBatch

if TYPE_CHECKING:
    from torch import Tensor

    from actors.launch import Started


@dataclass
class System:
    engines: EngineGroupProtocol
    """actors.engine_group.EngineGroup: N vLLM engines used as one."""
    learner: LearnerGroupProtocol
    """Policy ranks (TP x PP x DP), holding the reference when it is colocated."""
    reference: LearnerGroupProtocol | None
    """Reference ranks when not colocated with the policy (kl_coef > 0 only)."""
    rewards: RewardGroupProtocol
    """reward_server.reward_group.RewardGroup: K stateless reward actors."""
    weight_sync: WeightSyncProtocol
    """actors.weight_sync.WeightSync: learner rank 0 -> every engine, group formed at build."""
    started: Started | None
    """What the builder started and reserved (None: groups handed in, owned by the caller)."""
    tokenizer: Any
    pad_token_id: int
    cfg: TrainConfig
    engines_asleep: bool = False
    """Colocated runs: the engines freed their memory (sleep_engines) and the sync must wake them."""
    weights_dropped: bool = False
    """The engines slept for a weight sync (level 2 where they can): only the sync may wake them."""
    judge: EngineGroupProtocol | None = None
    """actors.engine_group.EngineGroup of the judge's engines (data sources routed to the judge), else None."""

    @classmethod
    def build(cls, cfg: TrainConfig) -> System:
        """Every role of a GRPO run, started by the one builder (`trainer.roles`, `actors.launch`)."""
        from transformers import AutoTokenizer

        from actors.launch import start_system
        from trainer.roles import plan_system

        plan = plan_system(cfg, "grpo")  # every decision, before anything starts
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        started = start_system(plan)
        return cls(started.engines, started.learner, started.reference, started.rewards, started.weight_sync,
                   started, tokenizer, tokenizer.pad_token_id, cfg, judge=started.judge)

    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor:
        if self.reference is not None:
            return self.reference.compute_logprobs(batch)
        return self.learner.compute_ref_logprobs(batch)

    def sync_weights(self, version: int) -> dict[str, float]:
        """Push the learner's weights to every engine as `version`; every engine must then report it.

        Colocated: the learner must be on its GPUs to send, so awake engines are put to sleep first (a
        resume); the engines wake in stages around the learner's offload."""
        start = time.perf_counter()
        self.sleep_engines(until_sync=True)
        if self.engines_asleep:
            self.engines.wake_up(["weights"])  # level 2: room for the weights, whose bytes the push writes
        metrics = self.weight_sync.push(version)
        if self.engines_asleep:
            self.learner.offload()
            self.engines.wake_up(["kv_cache"])  # after the learner left: the cache gets what it freed
            self.engines_asleep = self.weights_dropped = False
        return metrics | {"weight_sync_s": time.perf_counter() - start}

    def sleep_engines(self, *, until_sync: bool = False) -> None:
        """Colocated runs: free the engines' device memory while the learner computes and trains.

        `until_sync`: the engines' next step is `sync_weights`, which writes every weight, so they may drop
        theirs (vLLM's level 2) instead of copying them to host memory and back (level 1)."""
        if self.cfg.cluster.colocate and not self.engines_asleep:
            self.engines.sleep(2 if until_sync else 1)
            self.learner.onload()
            self.engines_asleep, self.weights_dropped = True, until_sync

    def wake_engines(self) -> None:
        """Colocated runs: the learner back to host memory, then the engines wake (weights and KV cache)."""
        if self.weights_dropped:
            raise RuntimeError("the engines slept for a weight sync and may have dropped their weights (vLLM "
                               "sleep level 2): only sync_weights may wake them")
        if self.engines_asleep:
            self.learner.offload()
            self.engines.wake_up()
            self.engines_asleep = False

    @contextmanager
    def learner_turn(self) -> Iterator[None]:
        """The learner's state on its devices for the block (load, save, export), the engines asleep in
        colocated runs; as it was afterwards. Without colocation the learner never leaves: a no-op."""
        was_asleep = self.engines_asleep
        self.sleep_engines()
        try:
            yield
        finally:
            if not was_asleep:
                self.wake_engines()

    def load_learner(self, directory: Path) -> None:
        with self.learner_turn():
            self.learner.load(directory)

    def save_learner(self, directory: Path) -> None:
        with self.learner_turn():
            self.learner.save(directory)

    def export_learner(self, directory: Path) -> None:
        """The policy as a Hugging Face directory (written by learner rank 0)."""
        with self.learner_turn():
            self.learner.export_hf(directory)

    def memory_metrics(self) -> dict[str, float]:
        """GiB per role now (the largest over its actors): logged every step."""
        out: dict[str, float] = {}
        for role, per_actor in (("rollout", self.engines.memory()), ("learner", self.learner.memory())):
            for key in sorted({k for m in per_actor for k in m}):
                out[f"memory/{role}_{key}"] = max(m.get(key, 0.0) for m in per_actor)
        return out

    def shutdown(self) -> None:
        """Stop exactly what the builder started (`actors.launch.Started.shutdown`), Ray included if it started Ray."""
        if self.started is not None:
            self.started.shutdown()
