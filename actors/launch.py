"""Start the actor system of a `SystemPlan`, and own it: every entry point (train, sft, reject, the pipeline's
stages) starts its roles here, from a plan of plain values that `trainer.roles.plan_system` decided from the
config. Nothing here reads a config.

    SystemPlan --start_system--> Ray (init_ray) -> placement groups, where each bundle landed -> output_dir
        probe -> weight-sync backend -> rollout engines -> learner ranks -> reference ranks -> judge engines
        -> weight-sync group -> reward actors
        == Started (engines, learner, reference, judge, rewards, weight_sync); Started.shutdown() stops them

A role the plan leaves out (None) is not started. `Started` records each part as it starts and shuts down
exactly those, in the same order, then the placement groups, then Ray through the `shutdown_ray` that matches its
`init_ray`: a Ray that was already up (a test session's, a pipeline's) stays up. A start that fails part way
(an error, Ctrl-C, SIGTERM) shuts down what had started before it raises.

Colocated runs (engines and learner ranks share GPUs, see `trainer.system`): the engines start first, each
measuring free memory against its share, then sleep while the learner starts; once the weight-sync group is
formed, the learner moves to host memory and the engines wake.

The role classes (`LearnerGroup`, `EngineGroup`, `RewardGroup`, `WeightSync`) are looked up in this module's
namespace when a role starts, so a test can put a recording stand-in in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import ray

from actors.engine_group import EngineGroup
from actors.learner import OptimizerSettings
from actors.learner_group import LearnerGroup
from actors.rollout import RolloutWorker, cpu_threads_bind
from actors.weight_sync import Backend, WeightSync, choose_backend, shm_free_bytes
from cluster.placement import Placed, Placement, ResourceSpec
from cluster.ray_init import init_ray, shutdown_ray
from cluster.storage import check_shared_dir
from reward_server.reward_group import RewardConfig, RewardGroup


@dataclass(frozen=True)
class EnginePlan:
    """Rollout (or judge) engines: `RolloutWorker`'s settings, and the group's."""

    role: str
    """Their role in the placement ('rollout' or 'judge')."""
    num_engines: int
    model_path: str
    dtype: str
    tensor_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    enable_sleep_mode: bool
    cpu_kvcache_gib: float
    cpu_linear: str
    enforce_eager: bool | None
    seed: int
    use_gpu: bool
    generate_timeout_s: float
    control_timeout_s: float
    start_timeout_s: float
    max_restarts: int = 0
    """Engines that die or hang are replaced in their bundle, this many times per run."""
    replaceable: bool = False
    """An engine that dies is started again in its bundle and takes the current weights from the weight sync
    (a training run's rollout engines)."""
    first_index: int = 0
    """Engine index of the first (the judge's engines follow the rollout engines')."""
    defer_reload: bool = False
    """Async rollouts: a replacement made during a generate takes its weights at the next weight push
    (`actors.engine_group.EngineGroup.defer_reload`)."""


@dataclass(frozen=True)
class LearnerPlan:
    """Learner ranks: `LearnerGroup`'s arguments, every one, plus where its ranks go."""

    model_path: str
    tp: int
    pp: int
    dp: int
    dtype: str
    seed: int
    optimizer: OptimizerSettings | None
    """None: a frozen reference."""
    sequences_per_microbatch: int
    tokens_per_microbatch: int
    pack_sequences: bool
    recompute: str
    role: str
    temperature: float
    hold_reference: bool
    use_gpu: bool
    cpus_per_actor: float
    timeout_s: float
    node_resource: str


@dataclass(frozen=True)
class RewardPlan:
    """`RewardGroup`'s arguments."""

    config: RewardConfig
    max_response_tokens: int
    num_actors: int
    cpus_per_actor: float


@dataclass(frozen=True)
class SyncPlan:
    """`WeightSync`'s settings (the backend is chosen at start, from where the actors were placed)."""

    timeout_s: float
    bucket_bytes: int
    checksum_every: int
    push_bytes: int
    min_bytes_per_s: float


@dataclass(frozen=True)
class SystemPlan:
    """Everything `start_system` starts, decided from a config before anything starts."""

    entry: str
    """The entry point ('grpo', 'sft', 'reject'), as `trainer.roles.ENTRY_ROLES` names it."""
    address: str
    num_cpus: int | None
    use_gpu: bool
    colocate: bool
    """Engine i and learner rank i share a GPU (`resources.colocated`): the engines sleep while the learner works."""
    engines_colocated: tuple[bool, ...]
    """For each engine, whether it shares learner rank i's GPU (what the weight-sync backend depends on)."""
    resources: ResourceSpec
    probe_timeout_s: float
    """Deadline of the tasks that ask where the bundles landed."""
    shared_dir: str = ""
    """A directory every learner node must see as the driver does (`cluster.storage`); '': no check."""
    engines: EnginePlan | None = None
    learner: LearnerPlan | None = None
    reference: LearnerPlan | None = None
    judge: EnginePlan | None = None
    rewards: RewardPlan | None = None
    sync: SyncPlan | None = None


@dataclass
class Started:
    """The actor groups `start_system` started, and what it reserved; `shutdown` stops exactly these."""

    placement: Placement | None = None
    engines: Any = None
    """actors.engine_group.EngineGroup (EngineGroupProtocol) of the rollout engines."""
    learner: Any = None
    """actors.learner_group.LearnerGroup (LearnerGroupProtocol) of the policy."""
    reference: Any = None
    judge: Any = None
    rewards: Any = None
    weight_sync: Any = None
    backend: Backend | None = None
    """The weight-transfer backend the rollout engines were started for."""
    parts: list[Any] = field(default_factory=list)
    """Every group started, in the order it started (and is shut down: the engines first)."""
    ray_open: bool = False
    """`init_ray` was called; `shutdown` makes the matching `shutdown_ray`."""

    def add(self, part: Any) -> Any:
        self.parts.append(part)
        return part

    def shutdown(self) -> None:
        """Stop every group started, free the placement groups, then leave Ray as it was found."""
        while self.parts:
            part = self.parts.pop(0)
            try:
                part.shutdown()
            except Exception as e:  # a dead actor must not keep the others alive
                print(f"shutdown: {type(e).__name__}: {e}")
        if self.placement is not None:
            self.placement.remove()
            self.placement = None
        if self.ray_open:
            self.ray_open = False
            shutdown_ray()


def start_system(plan: SystemPlan) -> Started:
    """Start every role of `plan` (see the module docstring); on a failure, stop what started, then raise.

    Every question to the cluster is asked first, once (Ray, placement groups, where each bundle landed, the
    output_dir probe, /dev/shm on learner rank 0's node); then the actors start from the answers."""
    from actors.versions import check_installed

    check_installed()  # vLLM / Megatron-core releases, before any actor starts (actors.versions)
    started = Started()
    try:
        init_ray(plan.address, num_cpus=plan.num_cpus)
        started.ray_open = True
        started.placement = placement = Placement(plan.resources)
        locate = ("learner", "rollout") if plan.sync is not None else ("learner",) if plan.learner is not None else ()
        placed = placement.placed(locate, plan.probe_timeout_s)
        if plan.shared_dir:
            check_shared_dir(plan.shared_dir, placed.nodes["learner"])
        # CPU weight sync: shared memory when every engine is on rank 0's node and /dev/shm there has room.
        shm_free = None
        if plan.sync is not None and not plan.use_gpu:
            [shm_free, *_] = placement.run_on("learner", shm_free_bytes, plan.probe_timeout_s)
        _start_roles(plan, started, placed, shm_free)
    except BaseException:  # an error, Ctrl-C or SIGTERM while starting: what started goes too
        started.shutdown()
        raise
    return started


def _start_roles(plan: SystemPlan, started: Started, placed: Placed, shm_free: int | None) -> None:
    if plan.engines is not None:
        started.backend = backend = weight_sync_backend(plan, placed, shm_free)
        engines = started.engines = started.add(start_engine_group(plan.engines, placed, backend))
        if plan.colocate:
            engines.wait_until_up()  # up, having taken their share of free memory; then out of the learner's way
            engines.sleep()
    if plan.learner is not None:  # not colocated: while vLLM starts
        started.learner = started.add(start_learner_group(plan.learner, placed))
    if plan.reference is not None:
        started.reference = started.add(start_learner_group(plan.reference, None))
    if plan.judge is not None:
        started.judge = started.add(start_engine_group(plan.judge, placed, None))
        started.judge.wait_until_up()
    if plan.sync is not None:
        connect_weight_sync(plan, started)
    if plan.rewards is not None:  # last: they score the first rollouts, and come up while those are generated
        r = plan.rewards
        started.rewards = started.add(RewardGroup(
            r.config, r.max_response_tokens, r.num_actors, r.cpus_per_actor,
            judge_engines=started.judge.engine_actors if started.judge is not None else ()))


def weight_sync_backend(plan: SystemPlan, placed: Placed, shm_free: int | None) -> Backend:
    """The transfer backend, chosen once for both sides from where the engines and learner rank 0 landed
    (`actors.weight_sync.choose_backend`); without a learner nothing is sent, the engines only need one."""
    colocated = plan.engines_colocated
    if plan.sync is None:
        return choose_backend(use_gpu=plan.use_gpu, engines_colocated=colocated,
                              engines_on_sender_node=[False] * len(colocated))
    return choose_backend(use_gpu=plan.use_gpu, engines_colocated=colocated,
                          engines_on_sender_node=engines_on_rank0_node(placed.nodes),
                          shm_free_bytes=shm_free, bucket_bytes=plan.sync.bucket_bytes)


def engines_on_rank0_node(nodes: Mapping[str, Sequence[str]]) -> list[bool]:
    """For each engine, whether its bundle is on learner rank 0's node (`nodes`: role -> Ray's node id of
    each actor's bundle, as placed)."""
    [rank0, *_] = nodes["learner"]
    return [node == rank0 for node in nodes["rollout"]]


def start_engine_group(ep: EnginePlan, placed: Placed, backend: str | None) -> Any:
    """The engines of `ep` as one EngineGroup; an engine that dies is started again in its bundle."""
    def start(i: int) -> Any:
        return start_engine(ep, placed, backend, i)

    return EngineGroup([start(i) for i in range(ep.num_engines)], [ep.tensor_parallel_size] * ep.num_engines,
                       generate_timeout_s=ep.generate_timeout_s, control_timeout_s=ep.control_timeout_s,
                       start_timeout_s=ep.start_timeout_s, max_restarts=ep.max_restarts,
                       start_engine=start if ep.replaceable else None, defer_reload=ep.defer_reload)


def start_engine(ep: EnginePlan, placed: Placed, backend: str | None, i: int) -> Any:
    """Engine i of `ep` in its placement bundle (at start, and again when it died or hung)."""
    remote: Any = ray.remote(RolloutWorker)
    return remote.options(**placed.options[ep.role][i]).remote(
        **engine_kwargs(ep, i, backend, placed.bundle_indices[ep.role]))


def engine_kwargs(ep: EnginePlan, i: int, backend: str | None, bundle_indices: list[int] | None) -> dict[str, Any]:
    """`RolloutWorker`'s arguments for engine i of `ep` (CPU engines: each bound to its own cores)."""
    return dict(
        model_path=ep.model_path, dtype=ep.dtype, tensor_parallel_size=ep.tensor_parallel_size,
        max_model_len=ep.max_model_len, gpu_memory_utilization=ep.gpu_memory_utilization,
        enable_sleep_mode=ep.enable_sleep_mode, cpu_kvcache_gib=ep.cpu_kvcache_gib, cpu_linear=ep.cpu_linear,
        enforce_eager=ep.enforce_eager,        seed=ep.seed, engine_index=ep.first_index + i,
        cpu_threads=None if ep.use_gpu else cpu_threads_bind(i, ep.num_engines), use_gpu=ep.use_gpu,
        weight_transfer_backend=backend, bundle_indices=bundle_indices)


def start_learner_group(lp: LearnerPlan, placed: Placed | None) -> Any:
    """A LearnerGroup with every argument of `lp`, in the system's 'learner' bundles (the policy) or in a
    placement group of its own (`placed` None: the reference)."""
    where: Callable[[int], dict[str, Any]] | None = placed.options_for("learner") if placed else None
    return LearnerGroup(**{f.name: getattr(lp, f.name) for f in fields(lp)}, placement=where)


def connect_weight_sync(plan: SystemPlan, started: Started) -> None:
    """Form the transfer group (learner rank 0 -> every engine) once; colocated: then the learner leaves
    the GPUs, so the engines' KV cache finds the memory free."""
    s, engines, learner = plan.sync, started.engines, started.learner
    assert s is not None and engines is not None and learner is not None and started.backend is not None, \
        "weight sync joins the engines and the learner"
    sync = started.weight_sync = WeightSync(engines, learner, backend=started.backend, timeout_s=s.timeout_s,
                                            bucket_bytes=s.bucket_bytes, checksum_every=s.checksum_every,
                                            push_bytes=s.push_bytes, min_bytes_per_s=s.min_bytes_per_s)
    sync.connect()
    engines.reload_weights = sync.reload  # a replaced engine gets the current weights from it
    if plan.colocate:
        learner.offload()
        engines.wake_up()
