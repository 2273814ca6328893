"""The actor groups of a run, built from the config: rollout engines, learner (+ reference), reward pool.

This is the only trainer module besides the controller that touches Ray. Each group is created by a
builder that unpacks its config section into plain arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray

from cluster.learner_group import LearnerGroup
from cluster.placement import Placement, ResourceSpec, RoleSpec
from cluster.ray_init import LOOPBACK, free_port, init_ray, shutdown_ray
from trainer.config import TrainConfig


@dataclass
class System:
    engines: Any
    """actors.dispatch.EngineGroup: N vLLM engines used as one."""
    learner: LearnerGroup
    """Policy ranks (TP x PP x DP), holding the reference when it is colocated."""
    reference: LearnerGroup | None
    """Reference ranks when not colocated with the policy (kl_coef > 0 only)."""
    rewards: Any
    """reward_server.pool.RewardPool: K stateless reward actors."""
    placement: Placement
    tokenizer: Any
    pad_token_id: int
    cfg: TrainConfig

    @classmethod
    def build(cls, cfg: TrainConfig) -> System:
        from transformers import AutoTokenizer

        from actors.dispatch import EngineGroup
        from reward_server.pool import RewardPool

        init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        placement = Placement(resource_spec(cfg))
        engine_actors = start_engines(cfg, placement)   # vLLM starts while the learner builds
        learner = start_learner(cfg, role="policy", placement=placement)
        reference = None
        if cfg.needs_reference and not cfg.learner.reference_colocated:
            reference = start_learner(cfg, role="reference")
        rewards = RewardPool(cfg.reward, cfg.model.max_response_tokens, cfg.reward.num_actors,
                             cfg.cluster.cpus_per_actor)
        engines = EngineGroup(engine_actors, [cfg.rollout.tensor_parallel_size] * cfg.rollout.num_engines)
        system = cls(engines, learner, reference, rewards, placement, tokenizer, tokenizer.pad_token_id, cfg)
        system.connect_weight_sync()
        return system

    def compute_ref_logprobs(self, batch: Any) -> Any:
        if self.reference is not None:
            return self.reference.compute_logprobs(batch)
        return self.learner.compute_ref_logprobs(batch)

    def connect_weight_sync(self) -> None:
        """Form the transfer group once: learner rank 0 sends, every engine worker receives."""
        port, timeout = free_port(LOOPBACK), self.cfg.rollout.weight_sync_timeout_s
        rest: list[Any] = []

        def connect() -> Any:
            refs = [w.init_weight_sync.remote(LOOPBACK, port, self.engines.world_size, timeout)
                    for w in self.learner.workers]
            rest.extend(refs[1:])
            return refs[0]

        self.engines.init_weight_sync(connect, host=LOOPBACK, port=port, timeout_s=timeout)
        ray.get(rest, timeout=timeout)

    def sync_weights(self, version: int) -> dict[str, float]:
        """Push the learner's weights to every engine as `version`; every engine must then report it."""
        rest: list[Any] = []
        start = time.perf_counter()

        def send() -> Any:
            refs = self.learner.push_weights_async(version, self.cfg.rollout.weight_sync_bucket_bytes)
            rest.extend(refs[1:])
            return refs[0]

        self.wake_engines()
        stats = self.engines.sync_weights(send, version, self.cfg.rollout.weight_sync_timeout_s)
        ray.get(rest, timeout=self.cfg.rollout.weight_sync_timeout_s)
        return {"weight_sync_bytes": float(stats.get("bytes", 0)), "weight_sync_s": time.perf_counter() - start}

    def sleep_engines(self) -> None:
        """Colocated runs: free the engines' device memory while the learner trains."""
        if self.cfg.cluster.colocate:
            ray.get([a.sleep.remote() for a in self.engines.engine_actors])

    def wake_engines(self) -> None:
        if self.cfg.cluster.colocate:
            ray.get([a.wake_up.remote() for a in self.engines.engine_actors])

    def shutdown(self) -> None:
        for part in (self.engines, self.learner, self.reference, self.rewards):
            if part is not None:
                try:
                    part.shutdown()
                except Exception as e:  # a dead actor must not keep the others alive
                    print(f"shutdown: {type(e).__name__}: {e}")
        self.placement.remove()
        shutdown_ray()


COLOCATED_GPU_SHARE = 0.5
"""Share of a GPU each colocated role (engine, learner rank) reserves; the engine sleeps while the
learner trains, so in practice each uses the whole memory in turn."""


def resource_spec(cfg: TrainConfig) -> ResourceSpec:
    """Rollout engines and policy learner ranks, as `cluster.placement` places them."""
    gpu = 1.0 if cfg.cluster.use_gpu else 0.0
    cpus, lc = cfg.cluster.cpus_per_actor, cfg.learner
    learner_ranks = lc.tensor_parallel_size * lc.pipeline_parallel_size * lc.data_parallel_size
    if cfg.cluster.colocate:
        share = gpu * COLOCATED_GPU_SHARE
        return ResourceSpec(roles=(RoleSpec("rollout", cfg.rollout.num_engines, cpus, share),
                                   RoleSpec("learner", learner_ranks, cpus, share)),
                            colocated=("rollout", "learner"))
    return ResourceSpec(roles=(
        RoleSpec("rollout", cfg.rollout.num_engines, cpus, gpu * cfg.rollout.tensor_parallel_size),
        RoleSpec("learner", learner_ranks, cpus, gpu),
    ))


def start_engines(cfg: TrainConfig, placement: Placement) -> list[Any]:
    from actors.rollout import RolloutWorker, rollout_worker_kwargs

    remote = ray.remote(RolloutWorker)
    return [remote.options(**placement.options("rollout", i)).remote(**rollout_worker_kwargs(cfg, i))
            for i in range(cfg.rollout.num_engines)]


def start_learner(cfg: TrainConfig, *, role: str, placement: Placement | None = None) -> LearnerGroup:
    from actors.learner import OptimizerSettings

    lc = cfg.learner
    optimizer = OptimizerSettings(
        lr=lc.lr, warmup_steps=lc.lr_warmup_steps, schedule=lc.lr_schedule,
        total_steps=cfg.total_steps * cfg.algorithm.updates_per_step * cfg.algorithm.epochs_per_step,
        weight_decay=lc.weight_decay, beta1=lc.adam_beta1, beta2=lc.adam_beta2, grad_clip=lc.grad_clip,
    )
    return LearnerGroup(
        model_path=cfg.model.path, tp=lc.tensor_parallel_size, pp=lc.pipeline_parallel_size,
        dp=lc.data_parallel_size, dtype=cfg.model.dtype, seed=cfg.seed,
        optimizer=optimizer if role == "policy" else None,
        sequences_per_microbatch=lc.sequences_per_microbatch, role=role,
        hold_reference=role == "policy" and cfg.needs_reference and lc.reference_colocated,
        use_gpu=cfg.cluster.use_gpu, cpus_per_actor=cfg.cluster.cpus_per_actor,
        placement=placement.options_for("learner") if placement is not None else None,
    )
