"""The actor groups of a run, built from the config: rollout engines, learner (+ reference), reward group,
and the weight sync between them.

This is the only trainer module besides the controller that touches Ray. Each group is created by a
builder that unpacks its config section into plain arguments; the controller sees the groups through
the protocols of `trainer.protocols`.

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

Colocated placement: bundle i of one placement group holds one whole GPU, learner rank i's; learner rank i
and engine i (for i < rollout.num_engines) each take a share of it (`COLOCATED_GPU_SHARE`). Ray keeps a
fractional demand inside a bundle on that bundle's GPU, and a bundle of one whole GPU cannot share a
device with another bundle, so no two learner ranks ever land on one GPU (NCCL would refuse them). The
weight sync is then CUDA IPC from learner rank i to engine i (`actors.weight_sync`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from actors.learner_group import LearnerGroup
from cluster.placement import Placement, ResourceSpec, RoleSpec
from cluster.ray_init import init_ray, shutdown_ray
from trainer.config import ClusterConfig, LearnerConfig, TrainConfig
from trainer.protocols import (
    EngineGroupProtocol,
    LearnerGroupProtocol,
    RewardGroupProtocol,
    WeightSyncProtocol,
)
from trainer.types import TrainBatch

if TYPE_CHECKING:
    from torch import Tensor

    from actors.engine_group import EngineGroup
    from actors.weight_sync import Backend


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
    placement: Placement
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
        from transformers import AutoTokenizer

        from actors.engine_group import EngineGroup
        from actors.versions import check_installed
        from actors.weight_sync import choose_backend, shm_free_bytes

        check_installed()  # vLLM / Megatron-core releases, before any actor starts (actors.versions)
        init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        placement = Placement(resource_spec(cfg))
        ro = cfg.rollout
        require_shared_output_dir(cfg, placement)
        # Decided before an engine or learner starts, for both sides: a layout no backend can serve fails here.
        shm_free = None if cfg.cluster.use_gpu else placement.run_on("learner", shm_free_bytes, ro.start_timeout_s)[0]
        backend = choose_backend(use_gpu=cfg.cluster.use_gpu, engines_colocated=engines_colocated(cfg),
                                 engines_on_sender_node=engines_on_rank0_node(placement, ro.start_timeout_s),
                                 shm_free_bytes=shm_free, bucket_bytes=ro.weight_sync_bucket_bytes)
        engines = EngineGroup(start_engines(cfg, placement, backend), [ro.tensor_parallel_size] * ro.num_engines,
                              generate_timeout_s=ro.generate_timeout_s, control_timeout_s=ro.control_timeout_s,
                              start_timeout_s=ro.start_timeout_s, max_restarts=ro.max_engine_restarts,
                              start_engine=lambda i: start_engine(cfg, placement, backend, i))
        try:
            return cls._build_around(cfg, engines, placement, backend, tokenizer)
        except BaseException:  # an error, Ctrl-C or SIGTERM while starting: the engines' processes go too
            try:
                engines.shutdown()
            except Exception as e:  # an engine that never came up
                print(f"shutdown after a failed start: {type(e).__name__}: {e}")
            placement.remove()
            shutdown_ray()
            raise

    @classmethod
    def _build_around(cls, cfg: TrainConfig, engines: EngineGroup, placement: Placement, backend: Backend,
                      tokenizer: Any) -> System:
        """The rest of `build`, once the engines are starting: learner, reference, judge, rewards, sync."""
        from actors.weight_sync import WeightSync
        from reward_server.reward_group import RewardGroup

        ro = cfg.rollout
        if cfg.cluster.colocate:
            engines.wait_until_up()  # up, having taken their share of free memory; then out of the learner's way
            engines.sleep()
        learner = start_learner(cfg, role="policy", placement=placement)  # non-colocated: while vLLM starts
        reference = None
        if cfg.needs_reference and not cfg.learner.reference_colocated:
            reference = start_learner(cfg, role="reference")
        judge = start_judge(cfg, placement)
        rewards = RewardGroup(cfg.reward, cfg.model.max_response_tokens, cfg.reward.num_actors,
                              cfg.cluster.cpus_per_actor, judge_engines=judge.engine_actors if judge else ())
        weight_sync = WeightSync(engines, learner, backend=backend, timeout_s=ro.weight_sync_timeout_s,
                                 bucket_bytes=ro.weight_sync_bucket_bytes, checksum_every=ro.weight_sync_checksum_every,
                                 push_bytes=model_bytes(cfg), min_bytes_per_s=ro.weight_sync_min_bytes_per_s)
        weight_sync.connect()
        engines.reload_weights = weight_sync.reload  # a replaced engine gets the current weights from it
        if cfg.cluster.colocate:  # the learner leaves first, so the engines' KV cache finds the memory free
            learner.offload()
            engines.wake_up()
        return cls(engines, learner, reference, rewards, weight_sync, placement, tokenizer,
                   tokenizer.pad_token_id, cfg, judge=judge)

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
        for part in (self.engines, self.learner, self.reference, self.rewards, self.judge):
            if part is not None:
                try:
                    part.shutdown()
                except Exception as e:  # a dead actor must not keep the others alive
                    print(f"shutdown: {type(e).__name__}: {e}")
        self.placement.remove()
        shutdown_ray()


def require_shared_output_dir(cfg: TrainConfig, placement: Placement) -> None:
    """Refuse to start unless the driver and every node of a learner rank read and write the same files
    under `output_dir` (cluster.storage): checkpoint shards, manifest and export must land in one place.
    The path is probed as the run passes it to the ranks (a relative one resolved where each runs)."""
    from cluster.storage import check_shared_dir

    try:
        check_shared_dir(cfg.output_dir, placement.node_ids("learner", cfg.rollout.start_timeout_s))
    except BaseException:
        placement.remove()
        raise


def engines_colocated(cfg: TrainConfig) -> list[bool]:
    """For each engine, whether it shares a learner rank's GPU: colocated bundle i holds engine i and
    learner rank i on one GPU (see resource_spec), so every engine does or none."""
    return [cfg.cluster.use_gpu and cfg.cluster.colocate] * cfg.rollout.num_engines


def engines_on_rank0_node(placement: Placement, timeout_s: float) -> list[bool]:
    """For each engine, whether its bundle is on learner rank 0's node (Ray's node ids, as placed)."""
    [rank0, *_] = placement.node_ids("learner", timeout_s)
    return [node == rank0 for node in placement.node_ids("rollout", timeout_s)]


COLOCATED_GPU_SHARE = 0.5
"""Share of its bundle's one GPU that each colocated actor (engine i, learner rank i) asks for; the engine
sleeps while the learner trains, so in practice each uses the whole memory in turn. A bundle reserves the
whole GPU, so a learner rank without an engine still has its GPU to itself (`cluster.placement`)."""


def resource_spec(cfg: TrainConfig) -> ResourceSpec:
    """Rollout engines, policy learner ranks and the judge's engines, as `cluster.placement` places them.

    Colocated: one bundle per learner rank holding its whole GPU, engine i in learner rank i's bundle
    (`cluster.placement.colocated_bundles`); the judge's engines, another model, get GPUs of their own."""
    gpu = 1.0 if cfg.cluster.use_gpu else 0.0
    cl, lc = cfg.cluster, cfg.learner
    cpus = cl.cpus_per_actor
    learner_ranks = lc.tensor_parallel_size * lc.pipeline_parallel_size * lc.data_parallel_size
    if cfg.cluster.colocate:
        share = gpu * COLOCATED_GPU_SHARE
        return ResourceSpec(roles=(
            RoleSpec("rollout", cfg.rollout.num_engines, cpus, share, node_resource=cl.rollout_node_resource),
            RoleSpec("learner", learner_ranks, cpus, share, node_resource=cl.learner_node_resource),
            *judge_roles(cfg)),
            colocated=("rollout", "learner"))
    tp = cfg.rollout.tensor_parallel_size
    return ResourceSpec(roles=(
        RoleSpec("rollout", cfg.rollout.num_engines, cpus, gpu * tp, bundles_per_actor=tp if gpu else 1,
                 node_resource=cl.rollout_node_resource),
        RoleSpec("learner", learner_ranks, cpus, gpu, node_resource=cl.learner_node_resource),
        *judge_roles(cfg),
    ))


def judge_roles(cfg: TrainConfig) -> tuple[RoleSpec, ...]:
    """The judge's engines, when a data source is routed to it: a role of their own on the rollout nodes.

    Not engines of the rollout group: the judge is another model, it must never take the policy's weights
    in a sync, and the rollout group refuses to sample from an engine that does not hold the policy version."""
    if "judge" not in cfg.reward.scorers_used():
        return ()
    j, gpu = cfg.reward.judge, 1.0 if cfg.cluster.use_gpu else 0.0
    return (RoleSpec("judge", j.num_engines, cfg.cluster.cpus_per_actor, gpu * j.tensor_parallel_size,
                     bundles_per_actor=j.tensor_parallel_size if gpu else 1,
                     node_resource=cfg.cluster.rollout_node_resource),)


def start_judge(cfg: TrainConfig, placement: Placement) -> EngineGroup | None:
    """The judge's engines as an EngineGroup (started, then waited for), or None when no source uses it."""
    if not judge_roles(cfg):
        return None
    from actors.engine_group import EngineGroup
    from actors.rollout import RolloutWorker, cpu_threads_bind

    j, ro = cfg.reward.judge, cfg.rollout
    remote: Any = ray.remote(RolloutWorker)
    actors = [remote.options(**placement.options("judge", i)).remote(
        j.model_path, dtype=cfg.model.dtype, tensor_parallel_size=j.tensor_parallel_size,
        max_model_len=j.max_model_len, gpu_memory_utilization=j.gpu_memory_utilization,
        cpu_kvcache_gib=j.cpu_kvcache_gib, seed=cfg.seed, engine_index=ro.num_engines + i,
        cpu_threads=None if cfg.cluster.use_gpu else cpu_threads_bind(i, j.num_engines),
        use_gpu=cfg.cluster.use_gpu, bundle_indices=placement.bundle_indices("judge"))
        for i in range(j.num_engines)]
    judge = EngineGroup(actors, [j.tensor_parallel_size] * j.num_engines, generate_timeout_s=j.timeout_s,
                        control_timeout_s=ro.control_timeout_s, start_timeout_s=ro.start_timeout_s)
    judge.wait_until_up()
    return judge


def start_engines(cfg: TrainConfig, placement: Placement, backend: str) -> list[Any]:
    return [start_engine(cfg, placement, backend, i) for i in range(cfg.rollout.num_engines)]


def start_engine(cfg: TrainConfig, placement: Placement, backend: str, i: int) -> Any:
    """Rollout engine i in its placement bundle (at start, and again when it died or hung)."""
    from actors.rollout import RolloutWorker, rollout_worker_kwargs

    remote: Any = ray.remote(RolloutWorker)
    return remote.options(**placement.options("rollout", i)).remote(
        **rollout_worker_kwargs(cfg, i, backend), bundle_indices=placement.bundle_indices("rollout"))


def model_bytes(cfg: TrainConfig) -> int:
    """Bytes of the policy's weights in the run's dtype: what one weight sync sends (its deadline scales with it)."""
    from trainer.plan import DTYPE_BYTES, model_shape

    shape, _ = model_shape(cfg.model.path)
    return shape.num_params * DTYPE_BYTES[cfg.model.dtype]


def start_learner(cfg: TrainConfig, *, role: str, placement: Placement | None = None) -> LearnerGroup:
    lc = cfg.learner
    return start_learner_group(
        lc, model_path=cfg.model.path, dtype=cfg.model.dtype, cluster=cfg.cluster, seed=cfg.seed, role=role,
        optimizer_steps=cfg.total_steps * cfg.algorithm.updates_per_step * cfg.algorithm.epochs_per_step,
        tokens_per_microbatch=lc.tokens_per_microbatch,
        temperature=cfg.rollout.sampling.temperature,  # logprobs of the distribution the rollouts came from
        hold_reference=role == "policy" and cfg.needs_reference and lc.reference_colocated,
        placement=placement.options_for("learner") if placement is not None else None)


def start_learner_group(lc: LearnerConfig, *, model_path: str, dtype: str, cluster: ClusterConfig, seed: int,
                        role: str, optimizer_steps: int, tokens_per_microbatch: int, temperature: float = 1.0,
                        hold_reference: bool = False,
                        placement: Callable[[int], dict[str, Any]] | None = None) -> LearnerGroup:
    """The learner ranks of any entry point (GRPO's policy and reference, SFT), every `LearnerConfig` setting
    unpacked here once, so no entry point can drop one. `optimizer_steps`: the LR schedule's length."""
    from actors.learner import OptimizerSettings

    optimizer = OptimizerSettings(
        lr=lc.lr, warmup_steps=lc.lr_warmup_steps, schedule=lc.lr_schedule, total_steps=optimizer_steps,
        weight_decay=lc.weight_decay, beta1=lc.adam_beta1, beta2=lc.adam_beta2, grad_clip=lc.grad_clip,
    )
    return LearnerGroup(
        model_path=model_path, tp=lc.tensor_parallel_size, pp=lc.pipeline_parallel_size,
        dp=lc.data_parallel_size, dtype=dtype, seed=seed, optimizer=optimizer if role == "policy" else None,
        sequences_per_microbatch=lc.sequences_per_microbatch, tokens_per_microbatch=tokens_per_microbatch,
        recompute=lc.activation_recompute, role=role, temperature=temperature, hold_reference=hold_reference,
        use_gpu=cluster.use_gpu, cpus_per_actor=cluster.cpus_per_actor, timeout_s=lc.verb_timeout_s,
        node_resource=cluster.learner_node_resource, placement=placement,
    )
