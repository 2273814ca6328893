"""Which roles each entry point starts, and the plan that starts them: every decision taken from the config
here, before anything starts, into plain values (`actors.launch.SystemPlan`) that `actors.launch.start_system`
starts. `python -m trainer plan` reads the same table and the same `resource_spec`.

    ENTRY_ROLES[entry] --plan_system(cfg, entry)--> SystemPlan --actors.launch.start_system--> Started

Entry points: "grpo" is `python -m trainer train` and a pipeline's grpo stage (its held-out evaluation uses
the same engines and reward actors); "sft" and "reject" are those commands and the pipeline's stages of
those kinds. A role in an entry's row starts when the config needs it: the reference only with a KL term
and `learner.reference_colocated` off (else the policy's ranks hold it), the judge only when a data source
is routed to it.

Placement (`cluster.placement`): rollout engines, policy learner ranks and the judge's engines are placed
together in the run's placement groups (`resource_spec`); reference ranks reserve their own, reward actors
take CPUs where Ray puts them. Colocated (`cluster.colocate`, an entry with engines and a learner): bundle i
holds one whole GPU, learner rank i's, shared with engine i (`COLOCATED_GPU_SHARE` each). Ray keeps a
fractional demand inside a bundle on that bundle's GPU, and a bundle of one whole GPU cannot share a device
with another bundle, so no two learner ranks ever land on one GPU (NCCL would refuse them); the weight sync
is then CUDA IPC from learner rank i to engine i (`actors.weight_sync`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from actors.launch import EnginePlan, LearnerPlan, RewardPlan, SyncPlan, SystemPlan
from actors.learner import OptimizerSettings
from cluster.placement import ResourceSpec, RoleSpec
from trainer.config import AlgorithmConfig, RolloutConfig, SFTConfig, TrainConfig
from trainer.model_shape import DTYPE_BYTES, model_shape

Entry = Literal["grpo", "sft", "reject"]
Role = Literal["rollout", "learner", "reference", "judge", "reward"]

ENTRY_ROLES: dict[Entry, tuple[Role, ...]] = {
    "grpo": ("rollout", "learner", "reference", "judge", "reward"),
    "sft": ("learner",),
    "reject": ("rollout", "judge", "reward"),
}
"""The roles each entry point may start; `roles_started` says which of them a config needs."""


def roles_started(cfg: TrainConfig, entry: Entry) -> tuple[Role, ...]:
    """The roles of `entry`'s row that `cfg` needs: the reference only with a KL term and ranks of its own
    (`learner.reference_colocated` off), the judge only when a data source is routed to it."""
    def needed(role: Role) -> bool:
        if role == "reference":
            return cfg.needs_reference and not cfg.learner.reference_colocated
        if role == "judge":
            return "judge" in cfg.reward.scorers_used()
        return True

    return tuple(role for role in ENTRY_ROLES[entry] if needed(role))


COLOCATED_GPU_SHARE = 0.5
"""Share of its bundle's one GPU that each colocated actor (engine i, learner rank i) asks for; the engine
sleeps while the learner trains, so in practice each uses the whole memory in turn. A bundle reserves the
whole GPU, so a learner rank without an engine still has its GPU to itself (`cluster.placement`)."""


def colocated(cfg: TrainConfig, entry: Entry = "grpo") -> bool:
    """Engines and learner ranks share GPUs: asked for, and the entry starts both."""
    return cfg.cluster.colocate and {"rollout", "learner"} <= set(ENTRY_ROLES[entry])


def engines_colocated(cfg: TrainConfig, entry: Entry = "grpo") -> list[bool]:
    """For each engine, whether it shares a learner rank's GPU: colocated bundle i holds engine i and
    learner rank i on one GPU (see resource_spec), so every engine does or none."""
    return [cfg.cluster.use_gpu and colocated(cfg, entry)] * cfg.rollout.num_engines


def resource_spec(cfg: TrainConfig, entry: Entry = "grpo") -> ResourceSpec:
    """The rollout engines, policy learner ranks and judge's engines of `entry`, as `cluster.placement`
    places them (a role the entry does not start is left out)."""
    gpu = 1.0 if cfg.cluster.use_gpu else 0.0
    cl, lc, ro = cfg.cluster, cfg.learner, cfg.rollout
    wanted = roles_started(cfg, entry)
    ranks = lc.tensor_parallel_size * lc.pipeline_parallel_size * lc.data_parallel_size
    if colocated(cfg, entry):
        share = gpu * COLOCATED_GPU_SHARE
        rollout = RoleSpec("rollout", ro.num_engines, cl.cpus_per_actor, share, node_resource=cl.rollout_node_resource)
        learner = RoleSpec("learner", ranks, cl.cpus_per_actor, share, node_resource=cl.learner_node_resource)
        return ResourceSpec(roles=(rollout, learner, *judge_roles(cfg)), colocated=("rollout", "learner"))
    tp = ro.tensor_parallel_size
    specs = []
    if "rollout" in wanted:
        specs.append(RoleSpec("rollout", ro.num_engines, cl.cpus_per_actor, gpu * tp, bundles_per_actor=tp if gpu else 1,
                              node_resource=cl.rollout_node_resource))
    if "learner" in wanted:
        specs.append(RoleSpec("learner", ranks, cl.cpus_per_actor, gpu, node_resource=cl.learner_node_resource))
    if "judge" in wanted:
        specs += judge_roles(cfg)
    return ResourceSpec(roles=tuple(specs))


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


def sft_view(cfg: SFTConfig) -> TrainConfig:
    """An SFT stage as the plan and the builder read it: a learner only, micro-batches of samples up to
    `data.max_sample_tokens` long (as prompts with no response) within `tokens_per_microbatch`,
    `samples_per_step` sequences per optimizer step, no reference."""
    return TrainConfig(
        name=cfg.name, output_dir=cfg.output_dir, seed=cfg.seed,
        model=replace(cfg.model, max_prompt_tokens=cfg.data.max_sample_tokens, max_response_tokens=0),
        learner=replace(cfg.learner, tokens_per_microbatch=cfg.tokens_per_microbatch), cluster=cfg.cluster,
        algorithm=AlgorithmConfig(prompts_per_step=cfg.samples_per_step, group_size=1, kl_coef=0.0),
    )


def plan_system(cfg: TrainConfig, entry: Entry, *, optimizer_steps: int | None = None,
                shared_dir: str | None = None) -> SystemPlan:
    """Every role `entry` starts for `cfg` (an SFT stage: its `sft_view`; rejection sampling: its
    `engine_config()`), as plain values. `optimizer_steps`: the LR schedule's length (GRPO: from the config);
    `shared_dir`: the directory every learner node must share (GRPO: `output_dir`)."""
    wanted, cl, ro = roles_started(cfg, entry), cfg.cluster, cfg.rollout
    a = cfg.algorithm
    steps = optimizer_steps if optimizer_steps is not None else cfg.total_steps * a.updates_per_step * a.epochs_per_step
    has_learner = "learner" in wanted
    engines = _engines(cfg, entry) if "rollout" in wanted else None
    sync = None
    if engines is not None and has_learner:
        sync = SyncPlan(timeout_s=ro.weight_sync_timeout_s, bucket_bytes=ro.weight_sync_bucket_bytes,
                        checksum_every=ro.weight_sync_checksum_every, push_bytes=model_bytes(cfg),
                        min_bytes_per_s=ro.weight_sync_min_bytes_per_s)
    return SystemPlan(
        entry=entry, address=cl.address, num_cpus=cl.num_cpus, use_gpu=cl.use_gpu, colocate=colocated(cfg, entry),
        engines_colocated=tuple(engines_colocated(cfg, entry)),
        resources=resource_spec(cfg, entry), probe_timeout_s=ro.start_timeout_s,
        shared_dir=(cfg.output_dir if shared_dir is None else shared_dir) if has_learner else "",
        engines=engines, judge=_judge(cfg) if "judge" in wanted else None,
        learner=_learner(cfg, entry, "policy", steps) if has_learner else None,
        reference=_learner(cfg, entry, "reference", steps) if "reference" in wanted else None,
        rewards=RewardPlan(cfg.reward, cfg.model.max_response_tokens, cfg.reward.num_actors, cl.cpus_per_actor)
        if "reward" in wanted else None,
        sync=sync)


def _engines(cfg: TrainConfig, entry: Entry) -> EnginePlan:
    ro, trains = cfg.rollout, "learner" in ENTRY_ROLES[entry]
    return EnginePlan(
        role="rollout", num_engines=ro.num_engines, model_path=cfg.model.path, dtype=cfg.model.dtype,
        tensor_parallel_size=ro.tensor_parallel_size, max_model_len=ro.max_model_len,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        enable_sleep_mode=ro.enable_sleep_mode or colocated(cfg, entry),  # colocated engines must free memory
        cpu_kvcache_gib=ro.cpu_kvcache_gib, cpu_linear=ro.cpu_linear, enforce_eager=ro.enforce_eager, seed=cfg.seed, use_gpu=cfg.cluster.use_gpu,
        generate_timeout_s=ro.generate_timeout_s, control_timeout_s=ro.control_timeout_s,
        start_timeout_s=ro.start_timeout_s, max_restarts=ro.max_engine_restarts if trains else 0,
        replaceable=trains,  # a replaced engine takes the current weights from the weight sync
        defer_reload=trains and cfg.algorithm.lag_bound > 0)  # ... at the next push, while the learner may train


def _judge(cfg: TrainConfig) -> EnginePlan:
    j, ro = cfg.reward.judge, cfg.rollout
    return EnginePlan(
        role="judge", num_engines=j.num_engines, model_path=j.model_path, dtype=cfg.model.dtype,
        tensor_parallel_size=j.tensor_parallel_size, max_model_len=j.max_model_len,
        gpu_memory_utilization=j.gpu_memory_utilization, enable_sleep_mode=False, cpu_kvcache_gib=j.cpu_kvcache_gib,
        cpu_linear=RolloutConfig.cpu_linear, enforce_eager=ro.enforce_eager, seed=cfg.seed, use_gpu=cfg.cluster.use_gpu, generate_timeout_s=j.timeout_s,
        control_timeout_s=ro.control_timeout_s, start_timeout_s=ro.start_timeout_s, first_index=ro.num_engines)


def _learner(cfg: TrainConfig, entry: Entry, role: str, optimizer_steps: int) -> LearnerPlan:
    """Every `LearnerConfig` setting, and the cluster fields the learner reads, unpacked here once."""
    lc, cl = cfg.learner, cfg.cluster
    optimizer = OptimizerSettings(
        lr=lc.lr, warmup_steps=lc.lr_warmup_steps, schedule=lc.lr_schedule, total_steps=optimizer_steps,
        weight_decay=lc.weight_decay, beta1=lc.adam_beta1, beta2=lc.adam_beta2, grad_clip=lc.grad_clip)
    samples = "rollout" in ENTRY_ROLES[entry]  # logprobs of the distribution the rollouts came from, else T = 1
    return LearnerPlan(
        model_path=cfg.model.path, tp=lc.tensor_parallel_size, pp=lc.pipeline_parallel_size,
        dp=lc.data_parallel_size, dtype=cfg.model.dtype, seed=cfg.seed,
        optimizer=optimizer if role == "policy" else None, sequences_per_microbatch=lc.sequences_per_microbatch,
        tokens_per_microbatch=lc.tokens_per_microbatch, pack_sequences=lc.pack_sequences,
        recompute=lc.activation_recompute, role=role,
        temperature=cfg.rollout.sampling.temperature if samples else 1.0,
        hold_reference=role == "policy" and cfg.needs_reference and lc.reference_colocated,
        use_gpu=cl.use_gpu, cpus_per_actor=cl.cpus_per_actor, timeout_s=lc.verb_timeout_s,
        node_resource=cl.learner_node_resource)


def model_bytes(cfg: TrainConfig) -> int:
    """Bytes of the policy's weights in the run's dtype: what one weight sync sends (its deadline scales with it)."""
    shape, _ = model_shape(cfg.model.path)
    return shape.num_params * DTYPE_BYTES[cfg.model.dtype]
