"""Starting one vLLM engine (`AsyncLLM`) for a rollout worker: the config unpacked into plain arguments, the
environment its spawned processes read, where its workers run, and how deeply it may sleep.

Tensor parallel on GPUs: an engine of TP = k owns k placement-group bundles of one GPU each (vLLM's
Ray executor refuses bundles of more than one GPU). The actor itself sits in the first of them without
a GPU, names its bundles in VLLM_RAY_BUNDLE_INDICES and asks for the Ray executor, which then starts
one worker per bundle inside the actor's placement group (vLLM reads it from the actor).

CPU threads: vLLM CPU binds its OpenMP threads (`VLLM_CPU_OMP_THREADS_BIND`, default "auto": every
core this process may use). Two engines on one machine that both bind "auto" fight over the same
cores; `cpu_threads_bind` gives engine i its own core(s) when engines share a CPU machine.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Final, TypedDict, cast

if TYPE_CHECKING:
    from transformers import PretrainedConfig
    from vllm.v1.engine.async_llm import AsyncLLM

PREFILL_TOKEN_BUDGET = 8192
"""Tokens one engine step may prefill (whole prompts only; see the engine arguments)."""
LOGPROBS_MODE: Final = "processed_logprobs"
"""vLLM reports each sampled token's logprob under temperature (and top-p): the sampling distribution."""
INSECURE_SERIALIZATION_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"
"""Lets vLLM's msgpack encoder and decoder fall back to pickle: what CUDA IPC handles need to reach the engine."""
RAY_HIDDEN_DEVICES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
"""Ray sets these to '' in an actor that holds no GPU; a TP engine's actor holds none (its workers do)."""
CPU_IN_CORE_WORKER_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""Set to "0" for a CPU engine of TP = 1: its worker runs in the engine-core process (`engine_executor_args`)."""
MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
"""Hugging Face config fields that mark a mixture-of-experts model (Qwen2-MoE, Mixtral, DeepSeek)."""


class ExecutorArgs(TypedDict, total=False):
    """Engine arguments that place an engine's workers (`engine_executor_args`)."""

    distributed_executor_backend: str


def cpu_threads_bind(engine_index: int, num_engines: int, num_cpus: int | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for engine `engine_index` of `num_engines` sharing one CPU machine.

    One engine: "auto" (vLLM picks the cores). Several: a disjoint core range each, so their OpenMP
    pools never share a core ("0", "1" with 2 cores); more engines than cores: "nobind".
    """
    num_cpus = num_cpus or os.cpu_count() or 1
    if num_engines == 1:
        return "auto"
    per_engine = num_cpus // num_engines
    if per_engine == 0:
        return "nobind"
    first = engine_index * per_engine
    return str(first) if per_engine == 1 else f"{first}-{first + per_engine - 1}"


def engine_executor_args(*, use_gpu: bool, tensor_parallel_size: int, bundle_indices: list[int] | None
                         ) -> tuple[ExecutorArgs, dict[str, str | None]]:
    """(extra engine arguments, environment changes; None unsets) that place an engine's workers (pure).

    GPU with TP > 1: vLLM's Ray executor, one worker per one-GPU bundle of the actor's placement group
    (`bundle_indices`; default: the first TP bundles), and the actor's empty device list removed so
    vLLM's engine core does not conclude the node has no GPU (OpenRLHF does the same).

    CPU with TP = 1: the worker runs inside the engine-core process (vLLM's 'uni' executor), so an engine
    is two processes (this actor, its engine core) instead of three. vLLM's CPU platform replaces 'uni'
    by its process executor while VLLM_ENABLE_V1_MULTIPROCESSING is "1" (vllm/platforms/cpu.py, 0.32),
    because an engine core inside the calling process could not be given the OpenMP and allocator
    libraries it preloads (LD_PRELOAD). `AsyncLLM` always spawns its engine core (AsyncMPClient, whatever
    the variable says), after the platform has set LD_PRELOAD, so "0" here changes only where the worker
    runs: the same tokens (the tiny demo's held-out row is identical), one torch and vLLM import fewer
    per engine start, and no shared-memory ring between engine core and worker. If a vLLM release makes
    AsyncLLM honour the variable, the engine core would run inside this actor; `tests/test_rollout.py`
    counts an engine's processes.

    Otherwise vLLM's own choice ('uni' for one GPU worker; CPU engines run their TP workers as local
    processes).
    """
    if not use_gpu and tensor_parallel_size == 1:
        return ExecutorArgs(), {CPU_IN_CORE_WORKER_ENV: "0"}
    if not use_gpu or tensor_parallel_size == 1:
        return ExecutorArgs(), {}
    indices = bundle_indices if bundle_indices is not None else list(range(tensor_parallel_size))
    if len(indices) != tensor_parallel_size:
        raise ValueError(f"a TP={tensor_parallel_size} engine needs {tensor_parallel_size} bundles, got {indices}")
    env: dict[str, str | None] = {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, indices))}
    env.update(dict.fromkeys(RAY_HIDDEN_DEVICES))
    return ExecutorArgs(distributed_executor_backend="ray"), env


def deepest_sleep_level(*, quantization: str | None, hf_config: PretrainedConfig) -> int:
    """The deepest vLLM sleep level after which a full weight sync leaves the engine as it was (pure).

    Level 2 discards the weights on the device and keeps only `named_buffers()` on the host (vLLM 0.32,
    `Worker.sleep` / `wake_up`). The sync's layerwise reload (`initialize_layerwise_reload` ...
    `finalize_layerwise_reload`, which the nccl and ipc engines run) then writes every parameter of an
    unquantized dense model: each loaded layer is rebuilt from the sent tensors and copied into the
    engine's own storage, a tied lm_head shares the embedding's parameter, and layers with no weights
    (rotary embeddings, attention scales) hold buffers, which vLLM restores. A quantized model's processed
    weights (scales, repacked layouts) and a mixture-of-experts layer's fused buffers are not all rebuilt
    from what we send: level 1 (weights copied to host and back) for those."""
    moe = any(getattr(hf_config, key, None) for key in MOE_CONFIG_KEYS)
    return 2 if quantization is None and not moe else 1


def set_engine_environment(*, on_gpu: bool, backend: str, cpu_kvcache_gib: float, cpu_linear: str,
                           cpu_threads: str | None, executor_env: dict[str, str | None]) -> None:
    """What the engine-core and worker processes vLLM spawns from this actor read from the environment."""
    if not on_gpu:
        from actors.weight_sync import CPU_LINEAR_ENV

        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cpu_kvcache_gib)))
        os.environ[CPU_LINEAR_ENV] = cpu_linear  # read by actors.weight_sync.register_vllm_plugin
        if cpu_threads is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads
    if on_gpu and backend == "ipc":
        # vLLM's msgpack encoder between `AsyncLLM.update_weights` and the engine core refuses the CUDA
        # IPC handles (they hold classes and a torch.dtype) unless this is set in the engine's processes
        # before they start (vLLM reads it once its engine is up). Only for ipc: it lets vLLM unpickle
        # what reaches its engine core, which no other backend needs.
        os.environ[INSECURE_SERIALIZATION_ENV] = "1"
    for name, value in executor_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def runs_eager(enforce_eager: bool | None, *, on_gpu: bool) -> bool:
    """`rollout.enforce_eager` resolved (pure): None is eager on CPU, compiled on GPU."""
    return not on_gpu if enforce_eager is None else enforce_eager


def start_engine(model_path: str, *, dtype: str, tensor_parallel_size: int, max_model_len: int,
                 gpu_memory_utilization: float, sleep_mode: bool, seed: int, backend: str, enforce_eager: bool,
                 executor_args: ExecutorArgs) -> AsyncLLM:
    """An `AsyncLLM` that reports processed logprobs, caches the shared prompt of a group, prefills whole
    prompts, and receives weights over `backend` (call `set_engine_environment` first)."""
    from vllm.config.model import ModelDType
    from vllm.config.weight_transfer import WeightTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=model_path, dtype=cast(ModelDType, dtype), tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
        enable_sleep_mode=sleep_mode, seed=seed, enforce_eager=enforce_eager,
        weight_transfer_config=WeightTransferConfig(backend=backend),
        logprobs_mode=LOGPROBS_MODE,
        enable_prefix_caching=True,  # the G samples of a group share their prompt
        # A prefill split over two steps makes vLLM rewind the request's seeded generator
        # (`Generator.set_offset`), which CPU generators do not support: seeded requests then
        # kill the engine. Whole prefills keep per-request seeds usable on CPU and GPU alike.
        enable_chunked_prefill=False,
        max_num_batched_tokens=max(PREFILL_TOKEN_BUDGET, max_model_len),
        **executor_args,
    )
    return AsyncLLM.from_engine_args(args)
