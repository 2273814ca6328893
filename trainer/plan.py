"""`python -m trainer plan --example NAME`: which GPUs and nodes each role gets, and an estimate of the
memory on each GPU, computed from the config alone. Nothing starts: no Ray cluster, no vLLM, no CUDA.
GRPO examples plan every role; an SFT stage plans its learner alone (`sft_view`), and rejection sampling
its engines and reward actors alone (`RejectionConfig.engine_config()`).

The layout comes from `trainer.system.resource_spec`, the function the run itself places its actors
with (importing that module loads the Ray package; it starts nothing). Reference ranks that are not
colocated and reward actors are placed by their own groups and added here.

The model's shape comes from `config.json` in `model.path` when that directory exists; otherwise from
`KNOWN_SHAPES` (the published configs of the models the examples use), looked up by the model
directory's name (the last component of `model.path`, so `--set model.path=/x/Qwen2.5-7B` plans a 7B),
else by the example's name through `EXAMPLE_MODELS` (for a model an earlier stage writes, such as
`runs/tiny_cpu_sft/hf`). Neither is an error that lists the known names; every example in
`examples/configs.py` must resolve (tests/test_plan.py checks it).

The memory model (per GPU, GiB = 2**30 bytes), and where it simplifies:
- learner weights: the parameters of the heaviest pipeline stage (ceil(layers / PP) layers plus the
  embedding or output layer), divided by TP; norms are counted as split too (< 0.1% of a model).
  The vocabulary is not padded.
- gradients: Megatron DDP's fp32 buffer (`grad_reduce_in_fp32`), 4 bytes per local parameter.
- optimizer: Megatron's distributed optimizer, sharded over DP: fp32 main parameters (only when the
  model is not fp32 already) plus Adam's two fp32 moments: 12 or 8 bytes per parameter, / DP.
- activations of the largest micro-batch: `sequences_per_microbatch` sequences at the longest length
  (`max_prompt_tokens + max_response_tokens`), or at most `tokens_per_microbatch` tokens (one sequence
  at least) when that budget is set; per token and layer in the compute dtype:
  4h (two norm inputs and outputs) + (2 heads + 2 kv_heads) x head_dim / TP (q, k, v, attention output)
  + 3 x intermediate / TP (gate, up, their product), plus heads / TP x seq for the softmax
  probabilities where attention is not fused (the CPU path; on GPUs flash attention stores none).
  Selective recomputation drops that last term; full recomputation keeps only each layer's input (h)
  and one layer's activations while it recomputes (`learner.activation_recompute` picks the mode the
  peak uses; all three are printed). Under 1F1B the first pipeline stage holds
  min(PP, micro-batches) micro-batches in flight. The logits add vocab / TP x (dtype + 4 fp32) bytes
  per token (the logits and one fp32 copy for the log-softmax).
- reference: same weights as the policy; colocated on GPU it lives on the host and visits the GPU for
  its forward, so it counts in the reference phase (with forward-only activations), not in training.
- runtime: `LEARNER_RUNTIME_GIB` for CUDA context, NCCL communicators and allocator slack.
- engine: vLLM takes `gpu_memory_utilization` x GPU memory and fills what its weights (parameters / TP)
  and its profiled activations leave with KV cache, 2 x layers x max(1, kv_heads / TP) x head_dim x
  dtype bytes per token. The activations are estimated for `ENGINE_PROFILE_TOKENS` tokens (4h + 3 x
  intermediate / TP per token) plus `ENGINE_SAMPLER_SEQS` rows of fp32 logits. vLLM refuses to start
  when the KV cache cannot hold one `max_model_len` sequence, and so does this plan.
- colocated (engine i and learner rank i on GPU i): the engine sleeps (`ENGINE_ASLEEP_GIB` left) while
  the learner trains, and the learner moves to the host (`LEARNER_RUNTIME_GIB` left) while the engine
  generates; the GPU must hold the larger of the two phases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from trainer.config import AlgorithmConfig, SFTConfig, TrainConfig

Stage = Literal["grpo", "sft", "reject"]
"""What a plan covers: a GRPO run (every role), an SFT stage (learner only), rejection sampling (engines)."""

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LEARNER_RUNTIME_GIB = 2.0
"""CUDA context, NCCL communicators and allocator slack of one learner rank (an allowance, not measured)."""
ENGINE_ASLEEP_GIB = 1.0
"""What a sleeping vLLM engine keeps on its GPU (CUDA context, graphs) after level-1 sleep."""
ENGINE_PROFILE_TOKENS = 8192
"""Tokens of vLLM's profiling forward: the engines' `max_num_batched_tokens` (actors.rollout's budget)."""
ENGINE_SAMPLER_SEQS = 256
"""Sequences vLLM's profile samples from (its default `max_num_seqs`), each with a row of fp32 logits."""


class PlanError(ValueError):
    """The plan cannot be computed (no model shape); the message says what to provide."""


# --- model shape ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, in Hugging Face `config.json` terms (a Qwen2-style decoder)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = True

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        heads = int(config["num_attention_heads"])
        return cls(
            hidden_size=int(config["hidden_size"]), num_layers=int(config["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            intermediate_size=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type", "qwen2") == "qwen2" or bool(config.get("attention_bias", False)),
        )

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v (with bias in Qwen2), o, gate, up, down, two RMSNorms."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * (q + 2 * kv) + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        output = 0 if self.tie_word_embeddings else self.embedding_params
        return self.num_layers * self.layer_params + self.embedding_params + output + self.hidden_size

    def describe(self) -> str:
        return (f"{self.num_params / 1e9:.3g}B parameters: hidden {self.hidden_size}, {self.num_layers} layers, "
                f"{self.num_heads} heads ({self.num_kv_heads} KV) x {self.head_dim}, MLP {self.intermediate_size}, "
                f"vocab {self.vocab_size}, {'tied' if self.tie_word_embeddings else 'untied'} embeddings")


KNOWN_SHAPES: dict[str, ModelShape] = {
    # Published config.json of each model (huggingface.co/Qwen/<name>), for plans made without the files.
    "Qwen2.5-0.5B": ModelShape(896, 24, 14, 2, 64, 4864, 151936, True),
    "Qwen2.5-1.5B": ModelShape(1536, 28, 12, 2, 128, 8960, 151936, True),
    "Qwen2.5-7B": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Qwen2.5-Math-7B": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Qwen2.5-Coder-7B-Instruct": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    # examples/build_tiny.py's defaults; the vocabulary is its BPE limit plus the four tags (an upper bound).
    "tiny-qwen2": ModelShape(128, 4, 2, 2, 64, 384, 1028, True),
    # examples/build_student.py: the distillation student, every other layer of tiny-qwen2 pretrained further
    "tiny-student": ModelShape(128, 2, 2, 2, 64, 384, 1028, True),
    # examples/build_tiny_code.py: the code task's base, tiny-qwen2's shape with a BPE limit of 512
    "tiny-qwen2-code": ModelShape(128, 4, 2, 2, 64, 384, 516, True),
}
"""Model directory name -> shape, used when `model.path` holds no config.json."""

EXAMPLE_MODELS: dict[str, str] = {
    "tiny_cpu": "tiny-qwen2",
    "tiny_cpu_r1_rl": "tiny-qwen2",  # starts from the cold-start SFT of the tiny model
    "tiny_cpu_distill": "tiny-student",
    "qwen25_gsm8k_r1_zero": "Qwen2.5-1.5B",
    "qwen25_math_r1_zero": "Qwen2.5-7B",
}
"""Example name -> the `KNOWN_SHAPES` entry of its model, for a model path that names no known model."""


def model_shape(model_path: str, example: str = "") -> tuple[ModelShape, str]:
    """The shape of the model at `model_path` (of example `example`) and where it came from."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return ModelShape.from_hf_config(json.loads(config.read_text())), str(config)
    name = Path(model_path).name
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name], f"known shape of {name!r} ({config} not found)"
    if example in EXAMPLE_MODELS:
        known = EXAMPLE_MODELS[example]
        return KNOWN_SHAPES[known], f"known shape of {known!r}, the model of example {example!r} ({config} not found)"
    raise PlanError(f"{config} not found, and neither {name!r} nor example {example!r} is in trainer.plan's "
                    f"KNOWN_SHAPES ({', '.join(KNOWN_SHAPES)}) or EXAMPLE_MODELS: point model.path at the "
                    f"model directory, or add its shape")


# --- layout ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleRow:
    """One line of the roles table."""

    role: str
    actors: int
    gpus_each: float
    detail: str


def roles(cfg: TrainConfig, stage: Stage = "grpo") -> list[RoleRow]:
    """Actors and devices of every role of `stage`, the engines' and learner's from
    `trainer.system.resource_spec` (an SFT learner reserves one GPU per rank itself, as the reference does)."""
    from trainer.system import resource_spec

    spec = resource_spec(cfg)
    lc, ro = cfg.learner, cfg.rollout
    engine, learner = spec.role("rollout"), spec.role("learner")
    colocated = bool(spec.colocated) and stage == "grpo"
    parallel = f"TP={lc.tensor_parallel_size} x PP={lc.pipeline_parallel_size} x DP={lc.data_parallel_size}"
    rows = []
    if stage != "sft":
        rows.append(RoleRow("rollout engines (vLLM)", engine.num_actors, 0.0 if colocated else engine.gpus_per_actor,
                            f"TP={ro.tensor_parallel_size} each" + (", sharing the learner ranks' GPUs" * colocated)))
    if stage == "sft":
        rows.append(RoleRow("learner (Megatron)", learner.num_actors, 1.0 if cfg.cluster.use_gpu else 0.0, parallel))
    if stage == "grpo":
        rows.append(RoleRow("learner (Megatron)", learner.num_actors, 1.0 if colocated and cfg.cluster.use_gpu
                            else learner.gpus_per_actor, parallel))
        if cfg.needs_reference and not lc.reference_colocated:
            rows.append(RoleRow("reference (Megatron)", learner.num_actors, 1.0 if cfg.cluster.use_gpu else 0.0,
                                "own ranks, same TP x PP x DP"))
    if stage == "grpo":
        rows += [RoleRow("judge engines (vLLM)", judge.num_actors, judge.gpus_per_actor,
                         f"TP={cfg.reward.judge.tensor_parallel_size} each, a model of its own") for judge in spec.roles if judge.name == "judge"]
    if stage != "sft":
        rows.append(RoleRow("reward actors", cfg.reward.num_actors, 0.0, f"{cfg.cluster.cpus_per_actor:g} CPUs each"))
    return rows


def layout(cfg: TrainConfig, stage: Stage = "grpo") -> list[list[str]]:
    """GPU labels per node: engines first (each TP group on one node), then learner ranks, then reference
    ranks, filling nodes of `cluster.gpus_per_node` in order, as PACK places groups created in that order."""
    per_node, lc = cfg.cluster.gpus_per_node, cfg.learner
    tp, pp = lc.tensor_parallel_size, lc.pipeline_parallel_size
    ranks = tp * pp * lc.data_parallel_size

    def rank_label(role: str, r: int) -> str:
        return f"{role} {r} (tp{r % tp} pp{(r // tp) % pp} dp{r // (tp * pp)})"

    groups: list[list[str]] = []  # each group must share a node
    if cfg.cluster.colocate and stage == "grpo":
        engines = cfg.rollout.num_engines  # engine i shares learner rank i's GPU, one whole GPU per rank
        groups += [[(f"engine {r} + " if r < engines else "") + rank_label("learner", r)] for r in range(ranks)]
    else:
        k = cfg.rollout.tensor_parallel_size
        if stage != "sft":
            groups += [[f"engine {e}" + (f" tp{i}" if k > 1 else "") for i in range(k)]
                       for e in range(cfg.rollout.num_engines)]
        if stage != "reject":
            groups += [[rank_label("learner", r)] for r in range(ranks)]
    if stage == "grpo" and cfg.needs_reference and not lc.reference_colocated:
        groups += [[rank_label("reference", r)] for r in range(ranks)]
    if stage == "grpo" and cfg.cluster.use_gpu:  # the judge's engines: GPUs of their own, colocated or not
        from trainer.system import judge_roles

        for judge in judge_roles(cfg):
            k = judge.bundles_per_actor
            groups += [[f"judge {j}" + (f" tp{i}" if k > 1 else "") for i in range(k)] for j in range(judge.num_actors)]
    nodes: list[list[str]] = [[]]
    for group in groups:
        if len(nodes[-1]) + len(group) > per_node:
            nodes.append([])
        nodes[-1].extend(group)
    return nodes


# --- memory ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnerMemory:
    """Bytes on one learner GPU, by component (see the module docstring for the model)."""

    params_per_rank: int
    weights: float
    reference: float
    gradients: float
    optimizer: float
    activations: dict[str, float]
    """Training activations of one micro-batch (logits included) per recomputation mode."""
    forward_activations: float
    """A forward without gradients (logprobs): one layer plus the logits."""
    microbatch_tokens: int
    runtime: float


def learner_memory(shape: ModelShape, cfg: TrainConfig) -> LearnerMemory:
    lc, m = cfg.learner, cfg.model
    tp, pp, dp = lc.tensor_parallel_size, lc.pipeline_parallel_size, lc.data_parallel_size
    b = DTYPE_BYTES[m.dtype]
    h, layers = shape.hidden_size, math.ceil(shape.num_layers / pp)
    embeddings = 2 if pp == 1 and not shape.tie_word_embeddings else 1
    params = (layers * shape.layer_params + embeddings * shape.embedding_params + h) // tp

    seq = m.max_prompt_tokens + m.max_response_tokens
    tokens = lc.sequences_per_microbatch * seq
    if lc.tokens_per_microbatch:  # packed up to the budget; a longer sequence goes alone
        tokens = min(tokens, max(lc.tokens_per_microbatch, seq))
    per_layer = (4 * h + (2 * shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim // tp
                 + 3 * shape.intermediate_size // tp)                      # elements per token
    unfused = 0 if cfg.cluster.use_gpu else shape.num_heads // tp * seq   # softmax probabilities
    logits = tokens * shape.vocab_size // tp * (b + 4)
    microbatches = max(1, cfg.sequences_per_update // dp // lc.sequences_per_microbatch)
    in_flight = min(pp, microbatches)

    def stages(first_stage_per_mb: float) -> float:
        # stage 0 holds `in_flight` micro-batches; the last stage one, plus the logits
        return max(in_flight * first_stage_per_mb, first_stage_per_mb + logits) if pp > 1 else \
            first_stage_per_mb + logits

    activations = {
        "none": stages(tokens * layers * (per_layer + unfused) * b),
        "selective": stages(tokens * layers * per_layer * b),
        "full": stages(tokens * (layers * h + per_layer + unfused) * b),
    }
    optimizer_bytes = (4 if b < 4 else 0) + 8
    return LearnerMemory(
        params_per_rank=params, weights=params * b,
        reference=params * b if cfg.needs_reference and lc.reference_colocated else 0.0,
        gradients=params * 4.0, optimizer=params * optimizer_bytes / dp,
        activations=activations, forward_activations=tokens * (per_layer + unfused) * b + logits,
        microbatch_tokens=tokens, runtime=LEARNER_RUNTIME_GIB * GIB if cfg.cluster.use_gpu else 0.0,
    )


@dataclass(frozen=True)
class EngineMemory:
    """Bytes on one GPU of a vLLM engine."""

    budget: float
    weights: float
    activations: float
    kv_cache: float
    kv_bytes_per_token: int

    @property
    def kv_tokens(self) -> int:
        return max(0, int(self.kv_cache // self.kv_bytes_per_token))


def engine_memory(shape: ModelShape, cfg: TrainConfig) -> EngineMemory:
    k, b = cfg.rollout.tensor_parallel_size, DTYPE_BYTES[cfg.model.dtype]
    budget = cfg.rollout.gpu_memory_utilization * cfg.cluster.gpu_memory_gib * GIB
    weights = shape.num_params * b / k
    profile_tokens = max(ENGINE_PROFILE_TOKENS, cfg.rollout.max_model_len)
    activations = (profile_tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size // k) * b
                   + ENGINE_SAMPLER_SEQS * shape.vocab_size * 4)
    kv_per_token = 2 * shape.num_layers * max(1, shape.num_kv_heads // k) * shape.head_dim * b
    return EngineMemory(budget, weights, activations, budget - weights - activations, kv_per_token)


# --- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuKind:
    """GPUs that hold the same roles, their estimate and whether it fits."""

    name: str
    count: int
    lines: tuple[tuple[str, float, str], ...]
    """(what, GiB, note) in the order printed."""
    peak_gib: float
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    example: str
    cfg: TrainConfig
    shape: ModelShape
    shape_source: str
    roles: tuple[RoleRow, ...]
    nodes: tuple[tuple[str, ...], ...]
    gpu_kinds: tuple[GpuKind, ...]
    recompute: str
    """Activation recomputation mode the learner's peak assumes (`learner.activation_recompute`)."""
    stage: Stage = "grpo"

    @property
    def available_gib(self) -> float:
        return self.cfg.cluster.gpu_memory_gib

    @property
    def fits(self) -> bool:
        return all(k.peak_gib <= self.available_gib and not k.problems for k in self.gpu_kinds)

    def refusal(self) -> str:
        """Why the plan does not fit, with the numbers and the settings that would change them."""
        reasons = [f"{k.name}: needs {k.peak_gib:.1f} GiB of {self.available_gib:g} GiB per GPU"
                   for k in self.gpu_kinds if k.peak_gib > self.available_gib]
        reasons += [f"{k.name}: {p}" for k in self.gpu_kinds for p in k.problems]
        needed = max(k.peak_gib for k in self.gpu_kinds)
        return ("the plan does not fit: " + "; ".join(reasons) +
                f". Larger GPUs: --set cluster.gpu_memory_gib={math.ceil(needed)}; or shard more "
                "(learner.tensor_parallel_size, pipeline_parallel_size, data_parallel_size), use smaller "
                "micro-batches (learner.sequences_per_microbatch, tokens_per_microbatch), activation "
                "recomputation (learner.activation_recompute=full), shorter sequences (model.max_*_tokens), "
                "or give the engines more memory (rollout.gpu_memory_utilization, rollout.tensor_parallel_size)")

    def render(self) -> str:
        cl = self.cfg.cluster
        out = [f"plan for {self.example} ({self.cfg.model.path}, {self.cfg.model.dtype})",
               f"  model: {self.shape.describe()}", f"  shape from {self.shape_source}", "", "roles:"]
        for r in self.roles:
            out.append(f"  {r.role:24s} {r.actors:4d} actors  {r.gpus_each:g} GPU each  {r.detail}")
        if self.cfg.needs_reference and self.cfg.learner.reference_colocated:
            out.append(f"  {'reference (Megatron)':24s} colocated on the learner ranks")
        if not cl.use_gpu:
            out += ["", "CPU run (cluster.use_gpu=false): no GPUs are reserved; the figures below are host "
                    "memory per process, not checked against anything."]
        else:
            total = sum(len(n) for n in self.nodes)
            out += ["", f"layout: {total} GPUs on {len(self.nodes)} node(s) of {cl.gpus_per_node} "
                    f"(cluster.gpus_per_node), filled in creation order as Ray's PACK would:"]
            out += [f"  node {i}: " + " | ".join(f"GPU {g}: {label}" for g, label in enumerate(node))
                    for i, node in enumerate(self.nodes)]
        where = f"GPU (GiB; cluster.gpu_memory_gib = {self.available_gib:g}" if cl.use_gpu else "process (GiB"
        learner = "" if self.stage == "reject" else f"; learner activations with recompute={self.recompute}"
        out += ["", f"memory per {where}{learner}):"]
        for kind in self.gpu_kinds:
            out.append(f"  {kind.name} (x{kind.count})")
            out += [f"    {what:44s} {gib:9.3f}  {note}".rstrip() for what, gib, note in kind.lines]
            verdict = "fits" if kind.peak_gib <= self.available_gib and not kind.problems else "DOES NOT FIT"
            if cl.use_gpu:
                out.append(f"    {'peak':44s} {kind.peak_gib:9.3f}  of {self.available_gib:g}: {verdict}")
            else:
                out.append(f"    {'peak':44s} {kind.peak_gib:9.3f}  (host memory)")
            out += [f"    problem: {p}" for p in kind.problems]
        return "\n".join(out)


def make_plan(cfg: TrainConfig, *, example: str = "config", stage: Stage = "grpo") -> Plan:
    """The plan of a validated config (`example` names it, and picks a known shape if need be). An SFT
    or rejection-sampling stage passes its `sft_view` / `RejectionConfig.engine_config()` and `stage`."""
    recompute = cfg.learner.activation_recompute
    shape, source = model_shape(cfg.model.path, example)
    lm = learner_memory(shape, cfg)
    kinds = [] if stage == "reject" else [_learner_kind(cfg, lm, recompute)]
    if stage != "sft":  # the engines
        if not cfg.cluster.use_gpu:
            kinds.insert(0, _cpu_engine_kind(shape, cfg))
        elif cfg.cluster.colocate and stage == "grpo":
            kinds = [_colocated_kind(cfg, lm, engine_memory(shape, cfg), kinds[0])]
        else:
            kinds.insert(0, _engine_kind(cfg, engine_memory(shape, cfg)))
    if stage == "grpo" and cfg.needs_reference and not cfg.learner.reference_colocated:
        ranks = cfg.learner.tensor_parallel_size * cfg.learner.pipeline_parallel_size * cfg.learner.data_parallel_size
        kinds.append(GpuKind("reference rank GPU" if cfg.cluster.use_gpu else "reference rank process", ranks,
                             (("reference weights", lm.weights / GIB, cfg.model.dtype),
                              ("forward activations", lm.forward_activations / GIB,
                               f"{lm.microbatch_tokens} tokens, logits included"),
                              ("runtime", lm.runtime / GIB, "CUDA context, NCCL")),
                             (lm.weights + lm.forward_activations + lm.runtime) / GIB))
    return Plan(example, cfg, shape, source, tuple(roles(cfg, stage)), tuple(tuple(n) for n in layout(cfg, stage)),
                tuple(kinds), recompute, stage)


def sft_view(cfg: SFTConfig) -> TrainConfig:
    """An SFT stage as the plan reads it: a learner only, micro-batches of samples up to
    `data.max_sample_tokens` long (as prompts with no response) within `tokens_per_microbatch`,
    `samples_per_step` sequences per optimizer step, no reference."""
    return TrainConfig(
        name=cfg.name, model=replace(cfg.model, max_prompt_tokens=cfg.data.max_sample_tokens, max_response_tokens=0),
        learner=replace(cfg.learner, tokens_per_microbatch=cfg.tokens_per_microbatch), cluster=cfg.cluster,
        algorithm=AlgorithmConfig(prompts_per_step=cfg.samples_per_step, group_size=1, kl_coef=0.0),
    )


def _learner_lines(cfg: TrainConfig, lm: LearnerMemory, recompute: str) -> tuple[tuple[str, float, str], ...]:
    lc, dtype = cfg.learner, cfg.model.dtype
    acts = " | ".join(f"{mode} {value / GIB:.2f}" for mode, value in lm.activations.items())
    lines = [
        ("policy weights", lm.weights / GIB, f"{dtype}, {lm.params_per_rank / 1e6:.1f}M parameters per rank"),
        ("gradients", lm.gradients / GIB, "fp32 buffer"),
        ("optimizer state", lm.optimizer / GIB,
         ("fp32 main + " if DTYPE_BYTES[dtype] < 4 else "") + f"Adam m, v; / DP={lc.data_parallel_size}"),
        (f"activations ({recompute} recompute)", lm.activations[recompute] / GIB,
         f"micro-batch of {lm.microbatch_tokens} tokens, logits included; none/selective/full: {acts}"),
    ]
    if lm.reference:
        lines.append(("reference weights", lm.reference / GIB,
                      "on the GPU only during its forward" if cfg.cluster.use_gpu else "resident"))
    if lm.runtime:
        lines.append(("runtime", lm.runtime / GIB, "CUDA context, NCCL, allocator slack"))
    return tuple(lines)


def _learner_peak(cfg: TrainConfig, lm: LearnerMemory, recompute: str) -> float:
    static = lm.weights + lm.gradients + lm.optimizer + lm.runtime
    if not cfg.cluster.use_gpu:  # the reference stays resident on CPU
        return (static + lm.reference + lm.activations[recompute]) / GIB
    return max(static + lm.activations[recompute], static + lm.reference + lm.forward_activations) / GIB


def _learner_kind(cfg: TrainConfig, lm: LearnerMemory, recompute: str) -> GpuKind:
    lc = cfg.learner
    name = "learner rank GPU" if cfg.cluster.use_gpu else "learner rank process"
    return GpuKind(name, lc.tensor_parallel_size * lc.pipeline_parallel_size * lc.data_parallel_size,
                   _learner_lines(cfg, lm, recompute), _learner_peak(cfg, lm, recompute))


def _engine_lines(cfg: TrainConfig, em: EngineMemory) -> tuple[tuple[str, float, str], ...]:
    ro = cfg.rollout
    return (
        ("vLLM budget", em.budget / GIB, f"gpu_memory_utilization {ro.gpu_memory_utilization:g} x "
                                         f"{cfg.cluster.gpu_memory_gib:g}"),
        ("  engine weights", em.weights / GIB, f"/ TP={ro.tensor_parallel_size}"),
        ("  engine activations", em.activations / GIB, "profiling forward and sampler, estimated"),
        ("  KV cache", em.kv_cache / GIB, f"{em.kv_tokens} tokens = {em.kv_tokens // ro.max_model_len} "
                                          f"sequences of max_model_len {ro.max_model_len}"),
    )


def _engine_problems(cfg: TrainConfig, em: EngineMemory) -> tuple[str, ...]:
    if em.kv_tokens >= cfg.rollout.max_model_len:
        return ()
    needed = em.weights + em.activations + cfg.rollout.max_model_len * em.kv_bytes_per_token
    return (f"the KV cache holds {em.kv_tokens} tokens, fewer than one sequence of rollout.max_model_len = "
            f"{cfg.rollout.max_model_len}: vLLM needs {needed / GIB:.1f} GiB, gets {em.budget / GIB:.1f} "
            f"(rollout.gpu_memory_utilization = {cfg.rollout.gpu_memory_utilization:g})",)


def _engine_kind(cfg: TrainConfig, em: EngineMemory) -> GpuKind:
    ro = cfg.rollout
    return GpuKind("rollout engine GPU", ro.num_engines * ro.tensor_parallel_size, _engine_lines(cfg, em),
                   em.budget / GIB, _engine_problems(cfg, em))


def _cpu_engine_kind(shape: ModelShape, cfg: TrainConfig) -> GpuKind:
    ro = cfg.rollout
    weights = shape.num_params * DTYPE_BYTES[cfg.model.dtype] / ro.tensor_parallel_size / GIB
    kv = max(1, math.ceil(ro.cpu_kvcache_gib))  # whole GiB, as actors.rollout sets VLLM_CPU_KVCACHE_SPACE
    return GpuKind("rollout engine process", ro.num_engines * ro.tensor_parallel_size,
                   (("engine weights", weights, f"/ TP={ro.tensor_parallel_size}"),
                    ("KV cache", float(kv), f"rollout.cpu_kvcache_gib = {ro.cpu_kvcache_gib:g}, whole GiB")),
                   weights + kv)


def _colocated_kind(cfg: TrainConfig, lm: LearnerMemory, em: EngineMemory, learner: GpuKind) -> GpuKind:
    training = learner.peak_gib + ENGINE_ASLEEP_GIB
    generating = em.budget / GIB + LEARNER_RUNTIME_GIB
    lines = (*learner.lines, *_engine_lines(cfg, em),
             ("phase: learner trains, engine asleep", training, f"learner peak + {ENGINE_ASLEEP_GIB:g}"),
             ("phase: engine generates, learner on host", generating, f"vLLM budget + {LEARNER_RUNTIME_GIB:g}"))
    return GpuKind("colocated GPU (engine + learner rank)", learner.count, lines, max(training, generating),
                   _engine_problems(cfg, em))

