"""`TrainConfig`: one GRPO run, its sections, and `validate()`, which checks the whole and each field."""

from __future__ import annotations

from dataclasses import dataclass, field

from reward_server.config import ConfigError, RewardConfig
from trainer.config_checks import (
    MAX_LR,
    MAX_TIMEOUT_S,
    TOP_P_REFUSED,
    _check_finite,
    _check_output_dir,
    _in_range,
    _require,
    check_reward,
)
from trainer.config_sections import (
    AlgorithmConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    ModelConfig,
    RolloutConfig,
)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    """Run name; outputs go to output_dir/name."""
    output_dir: str = "runs"
    """Where metrics, TensorBoard events, plots and checkpoints are written."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    total_steps: int = 100
    """Rollout steps to run."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    stall_warning_s: float = 900.0
    """A step phase running longer than this logs what it waits for (which call, which actors, since when),
    and again at each further multiple; the calls' own deadlines still decide when to give up (0: off)."""
    resume: bool = True
    """Continue from the newest intact checkpoint in the run directory if there is one; False starts
    over at step 0 and moves the earlier run's outputs to `previous/<UTC time>/` (nothing is deleted)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and ground truth."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """vLLM rollout engines."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Megatron learner and reference."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """GRPO hyper-parameters."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward functions and actors."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the actors run."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""

    @property
    def sequences_per_step(self) -> int:
        """N = B x G."""
        return self.algorithm.prompts_per_step * self.algorithm.group_size

    @property
    def sequences_per_update(self) -> int:
        """Sequences in one optimizer step's mini-batch."""
        return self.sequences_per_step // self.algorithm.updates_per_step

    @property
    def needs_reference(self) -> bool:
        return self.algorithm.kl_coef > 0

    def validate(self, *, training: bool = True) -> TrainConfig:
        """Check the configuration as a whole; returns self so calls can chain. `training=False`: the config
        only starts engines and reward actors (rejection sampling), so what only training needs is not asked."""
        _check_finite(self, "")
        a, lr, ro = self.algorithm, self.learner, self.rollout
        _require(a.max_sampling_rounds >= 1, "algorithm.max_sampling_rounds must be >= 1")
        _require(a.group_size >= 2, "algorithm.group_size must be >= 2: advantages are relative to the group")
        _require(a.prompts_per_step >= 1, "algorithm.prompts_per_step must be >= 1")
        _require(a.updates_per_step >= 1, "algorithm.updates_per_step must be >= 1")
        _require(a.epochs_per_step >= 1, "algorithm.epochs_per_step must be >= 1")
        _require(lr.data_parallel_size >= 1, "learner.data_parallel_size must be >= 1")
        _require(a.kl_clamp > 0, "algorithm.kl_clamp must be > 0: KL estimates lie in [-kl_clamp, kl_clamp]")
        _require(a.advantage_eps >= 0, "algorithm.advantage_eps must be >= 0")
        _require(
            self.sequences_per_step % a.updates_per_step == 0,
            f"N = prompts_per_step x group_size = {self.sequences_per_step} must split evenly "
            f"into algorithm.updates_per_step = {a.updates_per_step} mini-batches",
        )
        per_rank = self.sequences_per_update // lr.data_parallel_size
        _require(
            self.sequences_per_update % lr.data_parallel_size == 0,
            f"each mini-batch of {self.sequences_per_update} sequences must split evenly over "
            f"learner.data_parallel_size = {lr.data_parallel_size} ranks",
        )
        _require(per_rank >= 1, "fewer sequences per update than data-parallel ranks")
        _require(0 <= a.clip_eps_low < 1, "algorithm.clip_eps_low must be in [0, 1)")
        _require(a.clip_eps_high >= 0, "algorithm.clip_eps_high must be >= 0")
        _require(a.dual_clip_c == 0 or a.dual_clip_c > 1, "algorithm.dual_clip_c must be 0 or > 1")
        _require(a.kl_coef >= 0, "algorithm.kl_coef must be >= 0")
        _require(a.tis_cap == 0 or a.tis_cap >= 1, "algorithm.tis_cap must be 0 (off) or >= 1")
        _require(a.max_staleness >= 1, "algorithm.max_staleness must be >= 1 (async_mode's bound on the lag)")
        _require(not (a.one_step_off_policy and a.async_mode and a.max_staleness != 1),
                 "algorithm.one_step_off_policy is async_mode with max_staleness = 1: set async_mode and "
                 "max_staleness only")
        _require(not (a.lag_bound and self.cluster.colocate),
                 "algorithm.async_mode (one_step_off_policy) needs engines that generate while the learner "
                 "trains, not cluster.colocate (colocated engines sleep then)")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            _require(getattr(lr, name) >= 1, f"learner.{name} must be >= 1")
        _require(lr.sequences_per_microbatch >= 1, "learner.sequences_per_microbatch must be >= 1")
        _require(lr.tokens_per_microbatch >= 0, "learner.tokens_per_microbatch must be >= 0 (0: off)")
        _require(not lr.pack_sequences or lr.tokens_per_microbatch > 0,
                 "learner.pack_sequences needs learner.tokens_per_microbatch > 0: the budget of real tokens "
                 "each packed micro-batch is filled to")
        _require(ro.num_engines >= 1 and ro.tensor_parallel_size >= 1, "rollout needs >= 1 engine of size >= 1")
        _require(
            self.model.max_prompt_tokens + self.model.max_response_tokens <= ro.max_model_len,
            f"model.max_prompt_tokens + model.max_response_tokens = "
            f"{self.model.max_prompt_tokens + self.model.max_response_tokens} exceeds "
            f"rollout.max_model_len = {ro.max_model_len}",
        )
        if self.cluster.colocate:
            ranks = lr.tensor_parallel_size * lr.pipeline_parallel_size * lr.data_parallel_size
            _require(ro.tensor_parallel_size == 1 and ro.num_engines <= ranks,
                     f"cluster.colocate puts engine i on learner rank i's device: it needs "
                     f"rollout.tensor_parallel_size = 1 and rollout.num_engines <= {ranks} learner ranks")
        _require(self.reward.num_actors >= 1, "reward.num_actors must be >= 1")
        _require(self.eval.samples_per_prompt >= 1, "eval.samples_per_prompt must be >= 1")
        _require(self.total_steps >= 0, "total_steps must be >= 0")
        _require(self.cluster.address in ("local", "auto") or ":" in self.cluster.address,
                 "cluster.address must be 'local', 'auto' or host:port")
        _check_ranges(self)
        if training:
            _require(self.rollout.sampling.top_p == 1.0, TOP_P_REFUSED.format(top_p=self.rollout.sampling.top_p))
        return self


def _check_ranges(cfg: TrainConfig) -> None:
    """Range of every numeric field not checked in `validate()` above (each rule has a test)."""
    m, d, ro, s, lr = cfg.model, cfg.data, cfg.rollout, cfg.rollout.sampling, cfg.learner
    cl, ev = cfg.cluster, cfg.eval
    _require(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
             f"name = {cfg.name!r}: must be a non-empty directory name without '/' (outputs go to output_dir/name)")
    _check_output_dir(cfg.output_dir)
    _in_range("seed", cfg.seed, 0)
    _in_range("checkpoint_every", cfg.checkpoint_every, 0)       # 0: only at the end
    _in_range("model.max_prompt_tokens", m.max_prompt_tokens, 1)
    _in_range("model.max_response_tokens", m.max_response_tokens, 1)
    _in_range("data.eval_size", d.eval_size, 1)
    from trainer.templates import TEMPLATES

    _require(d.template in TEMPLATES, f"data.template = {d.template!r}: expected one of {', '.join(TEMPLATES)}")
    _in_range("rollout.sampling.temperature", s.temperature, 0, low_open=True)  # 0 would make G identical samples
    _in_range("rollout.sampling.top_p", s.top_p, 0, 1, low_open=True)
    _in_range("rollout.sampling.seed", s.seed, 0)
    _in_range("rollout.gpu_memory_utilization", ro.gpu_memory_utilization, 0, 1, low_open=True)
    _in_range("rollout.cpu_kvcache_gib", ro.cpu_kvcache_gib, 0, low_open=True)
    _in_range("rollout.weight_sync_bucket_bytes", ro.weight_sync_bucket_bytes, 1)
    _in_range("rollout.weight_sync_timeout_s", ro.weight_sync_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("rollout.weight_sync_min_bytes_per_s", ro.weight_sync_min_bytes_per_s, 1e6)  # a day per 86 GB
    _in_range("rollout.weight_sync_checksum_every", ro.weight_sync_checksum_every, 0)  # 0: never
    _in_range("rollout.generate_timeout_s", ro.generate_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("rollout.control_timeout_s", ro.control_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("rollout.start_timeout_s", ro.start_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("rollout.max_engine_restarts", ro.max_engine_restarts, 0)
    _check_multi_turn(ro)
    _in_range("stall_warning_s", cfg.stall_warning_s, 0, MAX_TIMEOUT_S)                  # 0: off
    _in_range("learner.verb_timeout_s", lr.verb_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("learner.lr", lr.lr, 0, MAX_LR, low_open=True)
    _in_range("learner.lr_warmup_steps", lr.lr_warmup_steps, 0)
    _in_range("learner.weight_decay", lr.weight_decay, 0)
    _in_range("learner.adam_beta1", lr.adam_beta1, 0, 1, high_open=True)
    _in_range("learner.adam_beta2", lr.adam_beta2, 0, 1, high_open=True)
    _in_range("learner.grad_clip", lr.grad_clip, 0)              # 0: no clipping
    check_reward(cfg.reward, max_response_tokens=m.max_response_tokens)
    _in_range("cluster.cpus_per_actor", cl.cpus_per_actor, 0, low_open=True)
    _in_range("cluster.gpus_per_node", cl.gpus_per_node, 1)
    _in_range("cluster.gpu_memory_gib", cl.gpu_memory_gib, 0, low_open=True)
    if cl.num_cpus is not None:
        _in_range("cluster.num_cpus", cl.num_cpus, 1)
    _in_range("eval.every_steps", ev.every_steps, 0)             # 0: at the start and the end only
    _in_range("eval.temperature", ev.temperature, 0)             # 0: greedy


def _check_multi_turn(ro: RolloutConfig) -> None:
    """`rollout.tools` parses and names tools that import; the multi-turn limits are in range."""
    try:
        ro.tool_settings()
    except (ValueError, ImportError, AttributeError) as err:
        raise ConfigError(str(err)) from None
    mt = ro.multi_turn
    _in_range("rollout.multi_turn.max_turns", mt.max_turns, 1)
    _in_range("rollout.multi_turn.max_tool_output_tokens", mt.max_tool_output_tokens, 1)
    _in_range("rollout.multi_turn.tool_timeout_s", mt.tool_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("rollout.multi_turn.tool_workers", mt.tool_workers, 1)
