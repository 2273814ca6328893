"""Run configuration: frozen dataclasses, every default here and nowhere else.

An example is a Python function returning a `TrainConfig` (see `examples/configs.py`). The
command line changes single fields with `--set section.field=value`; the value is parsed
against the field's declared type, and an unknown key or a value of the wrong type is an
error that names the key. `TrainConfig.validate()` checks the whole and derives the rest.

Batch sizes use the project's vocabulary: B = `prompts_per_step`, G = `group_size`,
N = B x G sequences per step.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

AdvantageEstimator = Literal["grpo", "dr_grpo", "rloo"]
KLEstimator = Literal["k1", "k2", "k3"]
LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
OldLogprobSource = Literal["learner", "rollout"]
CpuLinear = Literal["onednn", "torch"]
CPU_LINEAR_KERNELS: tuple[str, ...] = typing.get_args(CpuLinear)


@dataclass(frozen=True)
class ModelConfig:
    path: str = "artifacts/tiny-qwen2"
    """Hugging Face model directory (config.json, safetensors, tokenizer); policy and reference start here."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype for the engines and the learner (float32 on CPU)."""
    max_prompt_tokens: int = 128
    """Prompts longer than this are rejected when the data set is loaded."""
    max_response_tokens: int = 64
    """Most tokens sampled per completion (vLLM `max_tokens`)."""


@dataclass(frozen=True)
class DataConfig:
    train_path: str = "artifacts/data/arithmetic/train.jsonl"
    """JSONL or Parquet with fields `prompt` and `ground_truth` (and optionally `task`)."""
    eval_path: str = "artifacts/data/arithmetic/heldout.jsonl"
    """Held-out split, same fields."""
    template: str = "r1_zero"
    """Prompt template name from `trainer.templates.TEMPLATES`."""
    eval_size: int = 128
    """Held-out prompts used per evaluation (the first ones of the file)."""
    shuffle: bool = True
    """Shuffle the training prompts every epoch (seeded by `TrainConfig.seed`)."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    """Sampling temperature for training rollouts (and for pass@1 evaluation, as R1 reports it). The learner
    computes every logprob (policy, old policy, reference) at this temperature, softmax(logits / T), the
    distribution the samples came from."""
    top_p: float = 1.0
    """Nucleus sampling mass. Training needs 1: vLLM reports logprobs renormalised over the nucleus, which the
    learner does not compute (rejection sampling may use less)."""
    stop: tuple[str, ...] = ("</answer>",)
    """Stop strings; the stop string itself is kept in the completion."""
    seed: int = 0
    """Base sampling seed; each step and engine derive their own from it."""


@dataclass(frozen=True)
class RolloutConfig:
    num_engines: int = 1
    """Independent vLLM engines (each a Ray actor); scale these for more rollout throughput."""
    tensor_parallel_size: int = 1
    """Devices per engine (k)."""
    gpu_memory_utilization: float = 0.5
    """Share of each GPU an engine may take (ignored on CPU)."""
    enable_sleep_mode: bool = False
    """Free engine memory while the learner trains (GPU, colocated runs)."""
    max_model_len: int = 256
    """Prompt plus response length the engine reserves for."""
    cpu_kvcache_gib: float = 1.0
    """KV-cache size per engine on CPU (vLLM's VLLM_CPU_KVCACHE_SPACE)."""
    cpu_linear: CpuLinear = "onednn"
    """Linear kernels of CPU engines. "onednn", vLLM's own, on weights repacked at every load (each sync runs
    vLLM's layerwise reload): a sequence's logprobs do not depend on which sequences share its batch, so
    seeded rollouts, and a resume after an engine failure, repeat bit for bit. "torch": torch's kernels on
    the weights as loaded, which a sync copies into in place (3.2x faster at 110M parameters), but torch's
    CPU GEMM rounds differently with the batch size, so logprobs move in their last bits with the
    engine's batching (README, Performance)."""
    weight_sync_bucket_bytes: int = 64 * 2**20
    """Tensors are streamed to the engines in buckets of at most this many bytes."""
    weight_sync_timeout_s: float = 120.0
    """Bound on each bucket of a weight sync: any wait inside one (its announcement, its transfer, an engine's
    load and acknowledgement) raises after this long, naming the bucket. Also the fixed part of the deadline
    of a whole sync, which adds the model's bytes at `weight_sync_min_bytes_per_s`."""
    weight_sync_min_bytes_per_s: float = 50e6
    """Bandwidth floor of a whole weight sync (TP/PP gathers, every bucket, the engines' reload; twice the bytes
    on checksum steps, which hash them on both sides): a sync is given weight_sync_timeout_s + bytes / this
    before it counts as hung. 50 MB/s is far below NCCL, gloo and shared memory; a 7B bf16 model gets 420 s."""
    weight_sync_checksum_every: int = 10
    """Compare every engine's weight checksums with learner rank 0's every this many syncs (0: never)."""
    generate_timeout_s: float = 1800.0
    """A step's generation that takes longer raises, naming the engine that did not answer."""
    control_timeout_s: float = 300.0
    """Deadline of the engines' short calls: versions, checksums, sleep, wake-up, memory, shutdown."""
    start_timeout_s: float = 1800.0
    """Deadline for every engine to load its model and answer after it was started."""
    max_engine_restarts: int = 3
    """Engines that die or hang are replaced (and their groups generated again) this many times per run;
    one more failure stops the run with a summary of all of them (0: the first failure stops it)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings for training rollouts."""


@dataclass(frozen=True)
class LearnerConfig:
    tensor_parallel_size: int = 1
    """Megatron tensor-parallel ranks."""
    pipeline_parallel_size: int = 1
    """Megatron pipeline stages."""
    data_parallel_size: int = 1
    """Data-parallel replicas of the TP x PP model."""
    lr: float = 1e-6
    """Peak learning rate."""
    lr_warmup_steps: int = 0
    """Linear warm-up optimizer steps."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """Schedule after warm-up; cosine decays to 10% of `lr` at the last step."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    sequences_per_microbatch: int = 16
    """Sequences per forward/backward; gradients accumulate over micro-batches."""
    tokens_per_microbatch: int = 0
    """Token budget of a micro-batch (its sequences x its longest length): dynamic batch size, sequences
    grouped longest first, at most sequences_per_microbatch each; 0 splits by sequence count alone."""
    activation_recompute: Literal["none", "selective", "full"] = "none"
    """Recompute activations in backward: selective (attention core only) or full (each layer)."""
    reference_colocated: bool = True
    """Reference model shares the policy's ranks (True) or gets its own workers (False)."""
    verb_timeout_s: float = 1800.0
    """Deadline of each learner call on all ranks (start-up, logprobs, forward-backward, step, save, load)."""


@dataclass(frozen=True)
class AlgorithmConfig:
    prompts_per_step: int = 8
    """B: prompts sampled per step."""
    group_size: int = 8
    """G: completions per prompt."""
    advantage_estimator: AdvantageEstimator = "grpo"
    """grpo: (r - mean)/(std + eps); dr_grpo: r - mean; rloo: leave-one-out baseline."""
    advantage_eps: float = 1e-6
    """Added to the group std so a zero-variance group gives 0, not NaN."""
    clip_eps_low: float = 0.2
    """Lower clip of the importance ratio, 1 - clip_eps_low."""
    clip_eps_high: float = 0.2
    """Upper clip, 1 + clip_eps_high (DAPO clip-higher uses 0.28)."""
    dual_clip_c: float = 0.0
    """Dual-clip bound for negative advantages (e.g. 3.0); 0 disables."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference model (0 skips the reference)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator (Schulman's k1, k2, k3)."""
    kl_in_reward: bool = False
    """Subtract kl_coef x KL from the reward instead of adding it to the loss."""
    kl_clamp: float = 10.0
    """Per-token KL estimates are clamped to [-kl_clamp, kl_clamp]."""
    loss_aggregation: LossAggregation = "token_mean"
    """How per-token losses become one number (see trainer.grpo.aggregate_loss)."""
    old_logprobs_source: OldLogprobSource = "learner"
    """learner: recompute old logprobs; rollout: use vLLM's with truncated importance sampling."""
    old_logprobs_from_update: bool = True
    """When a step is exactly on-policy (one update, one epoch, learner old logprobs, no KL in the reward),
    the update's own forward gives the old logprobs (detached, as TRL does): no second forward pass."""
    tis_cap: float = 2.0
    """Cap C of the truncated importance-sampling weight min(pi_old / pi_rollout, C); 0 disables."""
    one_step_off_policy: bool = False
    """Sample step t+1 on the engines while the learner trains on step t (trainer.overlap): the rollouts lag
    the learner by one policy version (logged as policy_version_lag), corrected by the truncated importance
    weight (tis_cap). Off: every step samples with the weights of the step before it."""
    updates_per_step: int = 1
    """Optimizer steps per rollout step: the N sequences are split into this many mini-batches."""
    epochs_per_step: int = 1
    """Passes over the step's sequences."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more until B groups are useful."""
    max_sampling_rounds: int = 3
    """With dynamic sampling, give up filling B groups after this many rounds."""
    overlong_filter: bool = False
    """Mask completions cut at max_response_tokens out of the loss (DAPO)."""


ScorerKind = Literal["rule", "judge", "reward_model", "code"]
"""How a data source is scored: the rule-based reward, a generative judge, reward models, or the rule-based
reward with the `code` verifier (its programs run against the row's test cases)."""
SCORER_KINDS: tuple[str, ...] = typing.get_args(ScorerKind)


@dataclass(frozen=True)
class JudgeConfig:
    model_path: str = ""
    """Hugging Face directory of the generative judge ('': no judge). It is served on engines of its own,
    apart from the rollout engines: it is another model, and it never takes the policy's weights."""
    num_engines: int = 1
    """Judge engines (vLLM, one Ray actor each); the reward actors share them."""
    tensor_parallel_size: int = 1
    """Devices per judge engine."""
    max_model_len: int = 1024
    """Judge prompt (question, reference, prediction) plus verdict length the engine reserves for."""
    max_tokens: int = 16
    """Most tokens of a verdict; the judge decodes greedily and stops at a blank line."""
    gpu_memory_utilization: float = 0.3
    """Share of its GPU a judge engine may take (ignored on CPU)."""
    cpu_kvcache_gib: float = 0.25
    """KV-cache size per judge engine on CPU."""
    weight: float = 1.0
    """Reward of a CORRECT verdict (INCORRECT and malformed ones score 0)."""
    timeout_s: float = 600.0
    """Deadline of one reward actor's batch of judge prompts; past it the batch scores 0 with the error."""


@dataclass(frozen=True)
class CodeRewardConfig:
    partial_credit: bool = False
    """Accuracy is the share of test cases passed, instead of 1 only when every case passes."""
    workers: int = 0
    """Programs a reward actor runs at once (0: the CPUs the actor's process may use)."""
    case_wall_s: float | None = None
    """Wall-clock limit of one test case (None: `reward_server.code_sandbox.SandboxLimits.wall_s`)."""
    memory_bytes: int | None = None
    """Address-space limit of a program (None: `SandboxLimits.memory_bytes`)."""


@dataclass(frozen=True)
class RewardModelConfig:
    helpfulness_path: str = ""
    """Sequence-classification reward model (one logit) scoring prompt + summary, as R1 judges helpfulness
    ('': none)."""
    helpfulness_weight: float = 1.0
    """Weight of sigmoid(helpfulness logit)."""
    harmlessness_path: str = ""
    """Reward model scoring prompt + the whole response (reasoning too), as R1 judges harmlessness ('': none)."""
    harmlessness_weight: float = 1.0
    """Weight of sigmoid(harmlessness logit)."""
    batch_size: int = 16
    """Texts per reward-model forward pass in a reward actor."""
    max_tokens: int = 1024
    """Scored texts are cut to this many tokens."""


@dataclass(frozen=True)
class RewardConfig:
    verifier: Literal["math", "arithmetic", "countdown", "code"] = "math"
    """Accuracy checker: symbolic math, the demo tasks' exact verifiers, or `code` (the answer's last fenced
    Python block runs against the row's test cases in a sandbox; docs/code_rewards.md)."""
    accuracy_weight: float = 1.0
    """Weight of the accuracy reward (1 for a correct answer)."""
    format_weight: float = 0.0
    """Weight of the R1-Zero format reward (<think>...</think><answer>...</answer>)."""
    language_weight: float = 0.0
    """Weight of the language-consistency reward (R1)."""
    target_language: Literal["en", "zh"] = "en"
    """Language the chain of thought should be written in."""
    overlong_weight: float = 0.0
    """Weight of DAPO's soft overlong punishment."""
    overlong_buffer_tokens: int = 16
    """Length of the soft punishment ramp before max_response_tokens."""
    num_actors: int = 1
    """Stateless reward actors (K)."""
    timeout_s: float = 5.0
    """Per-sample limit; a verifier past it is killed and scores 0 with reason `timeout`."""
    max_error_fraction: float = 0.5
    """A sample whose reward raises or times out scores 0 with its error recorded (`reward_errors`); the
    run stops only when more than this share of one step's samples failed (a broken verifier or scorer
    would otherwise train on zeros). 1 never stops."""
    score_while_generating: bool = True
    """Score each engine's groups as soon as that engine has finished, while the others still generate
    (`trainer.steps.score`); false scores the whole batch after the last engine (same rewards)."""
    routes: tuple[str, ...] = ()
    """Scorer per data source (a prompt's `task`), as `source:scorer` pairs with scorer one of rule, judge,
    reward_model, code; e.g. `--set reward.routes=general:reward_model,trivia:judge`. R1's RL for all scenarios:
    rule-based rewards for reasoning prompts, reward models for general ones."""
    default_scorer: ScorerKind = "rule"
    """Scorer of every data source that `routes` does not name."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The generative judge, for sources routed to `judge`."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The reward models, for sources routed to `reward_model`."""
    code: CodeRewardConfig = field(default_factory=CodeRewardConfig)
    """The `code` verifier: partial credit, parallel programs and sandbox limits. `timeout_s` is a sample's
    budget over all its test cases."""

    def route_map(self) -> dict[str, str]:
        """`routes` as {source: scorer}; raises ConfigError on a malformed or repeated pair."""
        out: dict[str, str] = {}
        for pair in self.routes:
            source, sep, kind = (part.strip() for part in pair.partition(":"))
            _require(bool(sep) and bool(source) and bool(kind),
                     f"reward.routes: {pair!r} is not of the form source:scorer")
            _require(kind in SCORER_KINDS,
                     f"reward.routes: {pair!r} names scorer {kind!r}; expected one of {', '.join(SCORER_KINDS)}")
            _require(source not in out, f"reward.routes: source {source!r} is routed twice")
            out[source] = kind
        return out

    def scorers_used(self) -> set[str]:
        """The scorer kinds some data source may be routed to (the default included)."""
        return set(self.route_map().values()) | {self.default_scorer}


@dataclass(frozen=True)
class ClusterConfig:
    address: str = "local"
    """'local' starts Ray on this machine (127.0.0.1); 'auto' joins the cluster of a `ray job submit`."""
    colocate: bool = False
    """Engines free their device memory (vLLM sleep mode) while the learner trains, for GPUs they share."""
    use_gpu: bool = False
    """Reserve GPUs for engines and learner ranks; False runs everything on CPU."""
    num_cpus: int | None = None
    """CPUs for a local Ray (None: all of this machine's)."""
    cpus_per_actor: float = 0.5
    """Logical CPUs each actor reserves (small on one machine, so everything fits)."""
    rollout_node_resource: str = ""
    """Custom Ray resource (`ray start --resources`) marking the nodes that may host engines ('': any)."""
    learner_node_resource: str = ""
    """Custom Ray resource marking the nodes that may host learner and reference ranks ('': any)."""
    gpus_per_node: int = 8
    """GPUs on each node of the cluster (`python -m trainer plan` lays the roles out on nodes of this size)."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU; `python -m trainer plan` refuses a layout whose estimate exceeds it."""


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 10
    """Evaluate held-out accuracy at the start, every this many steps and at the end (0: start and end)."""
    samples_per_prompt: int = 4
    """k: samples per prompt for pass@1 (averaged over k) and cons@k (majority vote)."""
    temperature: float = 1.0
    """Evaluation sampling temperature."""


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
        _require(not (a.one_step_off_policy and self.cluster.colocate),
                 "algorithm.one_step_off_policy needs engines that generate while the learner trains, "
                 "not cluster.colocate (colocated engines sleep then)")
        _require(not (a.one_step_off_policy and ro.max_engine_restarts),
                 "algorithm.one_step_off_policy needs rollout.max_engine_restarts = 0: a replaced engine reloads "
                 "the learner's weights, which would run on the learner while it trains")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            _require(getattr(lr, name) >= 1, f"learner.{name} must be >= 1")
        _require(lr.sequences_per_microbatch >= 1, "learner.sequences_per_microbatch must be >= 1")
        _require(lr.tokens_per_microbatch >= 0, "learner.tokens_per_microbatch must be >= 0 (0: off)")
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


# --- SFT and rejection sampling (the R1 stages around RL) -----------------------------------


@dataclass(frozen=True)
class SFTDataConfig:
    train_path: str = "artifacts/data/sft/arithmetic/train.jsonl"
    """JSONL with fields `prompt` (the bare question) and `response` (the text after the rendered prompt)."""
    valid_path: str = "artifacts/data/sft/arithmetic/valid.jsonl"
    """Validation split, same fields; its loss is logged as `valid_loss`."""
    template: str = "r1_zero"
    """Prompt template name from `trainer.templates.TEMPLATES`, applied to `prompt`."""
    valid_size: int = 256
    """Validation samples used (the first ones of the file)."""
    max_sample_tokens: int = 256
    """Samples whose prompt + response + EOS is longer are dropped when loading (and counted)."""
    shuffle: bool = True
    """Shuffle the training samples every epoch (seeded by `SFTConfig.seed`)."""


@dataclass(frozen=True)
class SFTConfig:
    name: str = "sft"
    """Run name; outputs go to output_dir/name."""
    output_dir: str = "runs"
    """Where metrics, checkpoints and the exported Hugging Face model (hf/) are written."""
    seed: int = 0
    """Seed for the data order and initialisation."""
    epochs: int = 2
    """Passes over the training samples (R1 fine-tunes two epochs)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    samples_per_step: int = 64
    """Samples per optimizer step; the last step of an epoch takes what is left."""
    tokens_per_microbatch: int = 4096
    """Token budget of one forward/backward: rows x longest row (padding included) stays within it."""
    eval_every_steps: int = 20
    """Validation loss at the start, every this many steps and at the end (0: start and end)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    resume: bool = True
    """Continue from the latest checkpoint in the run directory if there is one."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune (`path`, `dtype`; the token limits of GRPO do not apply)."""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    """Training and validation samples."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Megatron learner; `sequences_per_microbatch` caps the rows of a packed micro-batch."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the learner ranks run."""

    def validate(self) -> SFTConfig:
        """Check the configuration as a whole; returns self so calls can chain."""
        _check_finite(self, "")
        _require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                 f"name = {self.name!r}: must be a non-empty directory name without '/'")
        _in_range("epochs", self.epochs, 1)
        _in_range("max_steps", self.max_steps, 0)
        _in_range("samples_per_step", self.samples_per_step, 1)
        _in_range("eval_every_steps", self.eval_every_steps, 0)
        _in_range("checkpoint_every", self.checkpoint_every, 0)
        _in_range("data.valid_size", self.data.valid_size, 1)
        _in_range("data.max_sample_tokens", self.data.max_sample_tokens, 2)
        _require(self.tokens_per_microbatch >= self.data.max_sample_tokens,
                 f"tokens_per_microbatch = {self.tokens_per_microbatch} must hold the longest sample "
                 f"(data.max_sample_tokens = {self.data.max_sample_tokens})")
        from trainer.templates import TEMPLATES

        _require(self.data.template in TEMPLATES,
                 f"data.template = {self.data.template!r}: expected one of {', '.join(TEMPLATES)}")
        lr = self.learner
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                     "sequences_per_microbatch"):
            _in_range(f"learner.{name}", getattr(lr, name), 1)
        _in_range("learner.lr", lr.lr, 0, MAX_LR, low_open=True)
        _in_range("learner.grad_clip", lr.grad_clip, 0)
        _require(lr.tokens_per_microbatch == 0, f"learner.tokens_per_microbatch = {lr.tokens_per_microbatch}: SFT "
                 f"packs its micro-batches by tokens_per_microbatch (= {self.tokens_per_microbatch}); set that instead")
        _in_range("cluster.cpus_per_actor", self.cluster.cpus_per_actor, 0, low_open=True)
        _check_output_dir(self.output_dir)
        return self


@dataclass(frozen=True)
class RejectionConfig:
    name: str = "reject"
    """Job name; outputs go to output_dir/name (sft.jsonl, report.json)."""
    output_dir: str = "runs"
    """Where the kept samples and the report are written."""
    seed: int = 0
    """Sampling seed."""
    samples_per_prompt: int = 8
    """k: completions sampled per prompt."""
    prompts_per_batch: int = 64
    """Prompts sent to the engines at once."""
    max_prompts: int = 0
    """Use the first this many prompts of `data.train_path` (0: all)."""
    keep_per_prompt: int = 0
    """Keep at most this many accepted samples per prompt (0: every one that passes)."""
    max_paragraph_chars: int = 1000
    """Filter: a chain-of-thought paragraph longer than this rejects the sample."""
    max_foreign_share: float = 0.0
    """Filter: largest share of chain-of-thought words outside `reward.target_language` (0: none)."""
    reject_code: bool = True
    """Filter: a fenced code block in the chain of thought rejects the sample."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to sample from (`--checkpoint DIR` replaces `path`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts (`train_path`) and the template."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Engines and sampling settings."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Correctness is the reward actors' `correct`."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the engines and reward actors run."""

    def engine_config(self) -> TrainConfig:
        """The run config the engine and reward-group builders of `trainer.system` take."""
        return TrainConfig(name=self.name, output_dir=self.output_dir, seed=self.seed, model=self.model,
                           data=self.data, rollout=self.rollout, reward=self.reward, cluster=self.cluster)

    def validate(self) -> RejectionConfig:
        """Check the configuration as a whole; returns self so calls can chain."""
        for name in ("samples_per_prompt", "prompts_per_batch", "max_paragraph_chars"):
            _in_range(name, getattr(self, name), 1)
        _in_range("max_prompts", self.max_prompts, 0)
        _in_range("keep_per_prompt", self.keep_per_prompt, 0)
        _in_range("max_foreign_share", self.max_foreign_share, 0, 1)
        self.engine_config().validate(training=False)
        return self


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


TOP_P_REFUSED = (
    "rollout.sampling.top_p = {top_p} cannot be trained on: vLLM samples from the top-p nucleus renormalised and "
    "reports those logprobs, while the learner's (policy, old policy, reference) are over the whole vocabulary, "
    "so the importance ratio and the loss would be taken against a policy the samples did not come from. Use "
    "top_p = 1 (a temperature other than 1 is supported: the learner scales its logits by 1 / T)")
"""Training with top-p < 1 is refused rather than warned about (most peers warn): its loss is silently off."""

MAX_LR = 1.0
"""Largest accepted learning rate: Adam moves every parameter by about `lr` per step, so anything near 1
destroys a trained model in one step; a value above it is a typo (1e308 was accepted and ran)."""

MAX_TIMEOUT_S = 86_400.0
"""Longest accepted timeout (a day): longer ones overflow the waits they feed (`inf` did), or hang a run."""


def _check_output_dir(output_dir: str) -> None:
    """An empty `output_dir` would write the run into whatever directory the command was started from."""
    _require(bool(output_dir.strip()), f"output_dir = {output_dir!r}: must name a directory (e.g. runs)")


def _check_finite(obj: Any, prefix: str) -> None:
    """Every float field of every section is finite: `inf` and NaN pass comparisons they should fail."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key} = {item}: must be a finite number")


def _in_range(key: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False,
              high_open: bool = False) -> None:
    """`value` lies in the interval from `low` to `high`; the message names the field and the interval."""
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        hi = "inf)" if high == math.inf else f"{high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} = {value!r} is out of range: allowed {'(' if low_open else '['}{low:g}, {hi}")


def _check_ranges(cfg: TrainConfig) -> None:
    """Range of every numeric field not checked in `validate()` above (each rule has a test)."""
    m, d, ro, s, lr = cfg.model, cfg.data, cfg.rollout, cfg.rollout.sampling, cfg.learner
    rw, cl, ev = cfg.reward, cfg.cluster, cfg.eval
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
    _in_range("stall_warning_s", cfg.stall_warning_s, 0, MAX_TIMEOUT_S)                  # 0: off
    _in_range("learner.verb_timeout_s", lr.verb_timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("learner.lr", lr.lr, 0, MAX_LR, low_open=True)
    _in_range("learner.lr_warmup_steps", lr.lr_warmup_steps, 0)
    _in_range("learner.weight_decay", lr.weight_decay, 0)
    _in_range("learner.adam_beta1", lr.adam_beta1, 0, 1, high_open=True)
    _in_range("learner.adam_beta2", lr.adam_beta2, 0, 1, high_open=True)
    _in_range("learner.grad_clip", lr.grad_clip, 0)              # 0: no clipping
    for name in ("accuracy_weight", "format_weight", "language_weight", "overlong_weight"):
        _in_range(f"reward.{name}", getattr(rw, name), 0)
    _require(rw.accuracy_weight + rw.format_weight + rw.language_weight > 0,
             "reward.accuracy_weight, format_weight and language_weight are all 0: every reward would be 0")
    if rw.overlong_weight:
        _in_range("reward.overlong_buffer_tokens", rw.overlong_buffer_tokens, 0, m.max_response_tokens)
    _in_range("reward.timeout_s", rw.timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("reward.max_error_fraction", rw.max_error_fraction, 0, 1)
    _in_range("reward.code.workers", rw.code.workers, 0)       # 0: the actor's CPUs
    if rw.code.case_wall_s is not None:
        _in_range("reward.code.case_wall_s", rw.code.case_wall_s, 0, MAX_TIMEOUT_S, low_open=True)
    if rw.code.memory_bytes is not None:
        _in_range("reward.code.memory_bytes", rw.code.memory_bytes, 1 << 24)  # an interpreter needs ~16 MiB
    _check_scorers(rw)
    _in_range("cluster.cpus_per_actor", cl.cpus_per_actor, 0, low_open=True)
    _in_range("cluster.gpus_per_node", cl.gpus_per_node, 1)
    _in_range("cluster.gpu_memory_gib", cl.gpu_memory_gib, 0, low_open=True)
    if cl.num_cpus is not None:
        _in_range("cluster.num_cpus", cl.num_cpus, 1)
    _in_range("eval.every_steps", ev.every_steps, 0)             # 0: at the start and the end only
    _in_range("eval.temperature", ev.temperature, 0)             # 0: greedy


def _check_scorers(rw: RewardConfig) -> None:
    """The routes parse, and every scorer a source may be routed to has its model."""
    used, j, rm = rw.scorers_used(), rw.judge, rw.reward_model
    if "judge" in used:
        _require(bool(j.model_path), "reward.routes send a data source to the judge, but reward.judge.model_path "
                                     "is empty")
        _in_range("reward.judge.num_engines", j.num_engines, 1)
        _in_range("reward.judge.tensor_parallel_size", j.tensor_parallel_size, 1)
        _in_range("reward.judge.max_tokens", j.max_tokens, 1)
        _in_range("reward.judge.max_model_len", j.max_model_len, j.max_tokens + 1)
        _in_range("reward.judge.gpu_memory_utilization", j.gpu_memory_utilization, 0, 1, low_open=True)
        _in_range("reward.judge.cpu_kvcache_gib", j.cpu_kvcache_gib, 0, low_open=True)
        _in_range("reward.judge.weight", j.weight, 0, low_open=True)
        _in_range("reward.judge.timeout_s", j.timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    if "reward_model" in used:
        _require(bool(rm.helpfulness_path or rm.harmlessness_path),
                 "reward.routes send a data source to reward_model, but reward.reward_model.helpfulness_path "
                 "and harmlessness_path are both empty")
        for name in ("helpfulness", "harmlessness"):
            if getattr(rm, f"{name}_path"):
                _in_range(f"reward.reward_model.{name}_weight", getattr(rm, f"{name}_weight"), 0, low_open=True)
        _in_range("reward.reward_model.batch_size", rm.batch_size, 1)
        _in_range("reward.reward_model.max_tokens", rm.max_tokens, 1)


# --- `--set a.b=value` overrides -------------------------------------------------------------


AnyConfig = typing.TypeVar("AnyConfig")
"""A config dataclass (`TrainConfig`, `SFTConfig`, `RejectionConfig`)."""


def apply_overrides(cfg: AnyConfig, overrides: list[str]) -> AnyConfig:
    """Return `cfg` with each `section.field=value` applied, parsed against the field type."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        cfg = _set_path(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {full_key!r}: {type(obj).__name__} has no field {name!r} "
                          f"(fields: {known})")
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, name)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full_key!r} is a section; set one of its fields, e.g. {full_key}.<field>=...")
        value = parse_value(raw, hints[name], full_key)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {full_key!r}: {name!r} is not a section")
        value = _set_path(current, path[1:], raw, full_key)
    return dataclasses.replace(obj, **{name: value})


def parse_value(raw: str, hint: Any, key: str) -> Any:
    """Parse the text `raw` as a value of type `hint` (bool, int, float, str, Literal, Optional, tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ConfigError(f"{key}={raw!r}: expected one of {', '.join(map(str, args))}")
    if origin is tuple:
        parts = [p.strip() for p in raw.split(",") if p.strip()] if raw else []
        return tuple(parse_value(p, args[0], key) for p in parts)
    if hint is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected a bool (true/false)")
    if hint in (int, float):
        try:
            value = hint(raw)  # int() and float() already accept 1_000
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected {hint.__name__}") from None
        if value != value:  # NaN passes every later comparison silently
            raise ConfigError(f"{key}={raw!r}: NaN is not a valid setting")
        return value
    if hint is str:
        return raw
    raise ConfigError(f"{key}: fields of type {hint} cannot be set from the command line")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for logging and checkpoints."""
    return dataclasses.asdict(cfg)
