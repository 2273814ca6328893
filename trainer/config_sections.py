"""The sections of a run's configuration: model, data, rollout engines, learner, algorithm, cluster, eval.

Frozen dataclasses, every default here and nowhere else; `trainer.config` gathers them (with the reward
section, `reward_server.config`) and says how a config is built, changed and checked. Batch sizes use the
project's vocabulary: B = `prompts_per_step`, G = `group_size`, N = B x G sequences per step.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from reward_server.tools import ToolSettings, parse_tool_routes

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
class MultiTurnConfig:
    max_turns: int = 4
    """Policy turns per response in a multi-turn rollout (so at most max_turns - 1 tool calls); the response's
    whole length, tool outputs included, stays within model.max_response_tokens."""
    max_tool_output_tokens: int = 64
    """Tokens of one tool output appended to the response (its markers included); a longer output is cut."""
    tool_timeout_s: float = 10.0
    """Deadline of one tool call: past it the tool process is killed, and the model reads `Error: timeout`."""
    tool_workers: int = 2
    """Tool processes per rollout engine (tool calls of concurrent samples run on them in parallel)."""


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
    enforce_eager: bool | None = None
    """vLLM's enforce_eager: run the model without torch.compile (and, on GPU, without CUDA graphs). None: eager on
    CPU, where compiling costs 20-40 s at every engine start and the tiny models sample the same tokens either
    way; compiled on GPU, where CUDA graphs pay."""
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
    tools: tuple[str, ...] = ()
    """Tools per data source (a prompt's `task`), as `source:tool[+tool...]`; `*` is every source not named.
    A tool is a registered name (`calculator`, `python`: reward_server/tools.py) or `module:Class`, either
    ending in `@json` for calls in Qwen2.5's `<tool_call>` JSON format instead of the tool's markers. The
    prompts of those sources are generated turn by turn: generation stops at a tool call, the tool runs in
    a tool process, its output is appended (masked out of the loss), and generation goes on. E.g.
    `--set rollout.tools=math:python`. Empty: no tools, one turn."""
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    """Limits of multi-turn rollouts (only read when `tools` names some)."""

    def tool_settings(self) -> ToolSettings | None:
        """What the engines need to run tools (None without tools); raises ValueError on a bad `tools` pair."""
        if not self.tools:
            return None
        m = self.multi_turn
        return ToolSettings(by_source=parse_tool_routes(self.tools), max_turns=m.max_turns,
                            max_tool_output_tokens=m.max_tool_output_tokens, timeout_s=m.tool_timeout_s,
                            workers=m.tool_workers)


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
    """Token budget of a micro-batch, its sequences x its longest length (or, with pack_sequences, the sum of
    its lengths): dynamic batch size, sequences grouped longest first, at most sequences_per_microbatch
    each; 0 splits by sequence count alone."""
    pack_sequences: bool = False
    """Pack each micro-batch's sequences end to end, without padding, up to tokens_per_microbatch real tokens
    (at most sequences_per_microbatch sequences; a longer sequence goes alone): the model computes on no
    padding. Logprobs and gradients equal the padded path's to float tolerance. Needs
    tokens_per_microbatch > 0. Off by default until it has run on a GPU (docs/gpu_check.md)."""
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
    async_mode: bool = False
    """Asynchronous rollouts (trainer.overlap, docs/async.md): the engines sample the next steps while the learner
    trains, each step's groups by weights at most `max_staleness` versions behind the learner (logged as
    policy_version_lag), corrected per token by the truncated importance weight (tis_cap). Off: every step
    samples with the weights of the step before it (synchronous, on-policy)."""
    max_staleness: int = 1
    """With async_mode: K >= 1, how many versions a step's groups may lag the weights the learner starts the
    step from; the engines run up to K steps ahead. Groups beyond it are dropped (counted, async/dropped_groups)."""
    one_step_off_policy: bool = False
    """Deprecated spelling of async_mode with max_staleness = 1 (kept so older configs run unchanged)."""
    updates_per_step: int = 1
    """Optimizer steps per rollout step: the N sequences are split into this many mini-batches."""
    epochs_per_step: int = 1
    """Passes over the step's sequences."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more until B groups are useful."""
    max_sampling_rounds: int = 3
    """With dynamic sampling, give up filling B groups after this many rounds."""
    overlong_filter: bool = False
    """Mask completions cut at max_response_tokens out of the loss (DAPO); a multi-turn response's tool outputs
    count in that budget, so one cut inside or after a tool output is dropped too (docs/multi_turn.md)."""
    shuffle_rewards: bool = False
    """A control experiment, never a recipe: permute each group's rewards at random before the advantages
    (`trainer.grpo.shuffle_within_groups`), so the reward says nothing about which response earned it."""

    @property
    def lag_bound(self) -> int:
        """Versions a step's groups may lag the learner: 0 synchronous, max_staleness with async_mode, 1 with
        the deprecated one_step_off_policy."""
        if self.async_mode:
            return self.max_staleness
        return 1 if self.one_step_off_policy else 0

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
