"""Rollout worker: one vLLM engine (`AsyncLLM`) behind async actor methods.

How prompts become a RolloutBatch: each prompt is one vLLM request with n = G samples and
`logprobs=0` (the logprob of each sampled token only), in vLLM's `processed_logprobs` mode, i.e.
log-softmax of the logits after temperature (and top-p), the distribution the token was drawn from:
the learner recomputes the same quantity (it scales its logits by 1 / T; top-p < 1 is refused for
training, since the learner does not renormalise over the nucleus). vLLM's default, `raw_logprobs`, is
taken before temperature, so at T != 1 it would be neither the sampling policy nor the learner's. On GPUs
this mode makes vLLM sample with its native sampler instead of FlashInfer's (which does not expose the
processed logits), as in every peer that trains on vLLM's logprobs. With n > 1 we ask for `FINAL_ONLY` outputs (the streaming kind can return a final
output that lacks some samples). Groups come back in prompt order.

How new weights reach the engine (see actors/weight_sync/receive.py): `init_weight_sync` joins the transfer
group once; `receive_weights(version)` runs vLLM's `start_weight_update`, then one `update_weights` per
bucket as the sender's control store announces it, then `finish_weight_update(str(version))`.
Sampling and receiving hold one lock, so every completion is sampled by exactly one version. A
transfer that fails half-way leaves the model half-loaded: the worker then reports version -1
(stale) until a later sync succeeds, and refuses to sample when a version is expected.

Tensor parallel on GPUs: an engine of TP = k owns k placement-group bundles of one GPU each (vLLM's
Ray executor refuses bundles of more than one GPU). The actor itself sits in the first of them without
a GPU, names its bundles in VLLM_RAY_BUNDLE_INDICES and asks for the Ray executor, which then starts
one worker per bundle inside the actor's placement group (vLLM reads it from the actor).

CPU threads: vLLM CPU binds its OpenMP threads (`VLLM_CPU_OMP_THREADS_BIND`, default "auto": every
core this process may use). Two engines on one machine that both bind "auto" fight over the same
cores; `rollout_worker_kwargs` gives engine i its own core(s) when engines share a CPU machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, cast

from trainer.config import RolloutConfig, TrainConfig
from trainer.types import Completion, Prompt, RolloutBatch, WeightVersion

if TYPE_CHECKING:
    from actors.weight_sync.spec import TransferSpec

log = logging.getLogger(__name__)

STALE_VERSION = -1
"""Reported after a failed transfer: the weights are neither the old nor the new version."""
EMPTY_DIGEST = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"""sha256 of zero bytes."""
PREFILL_TOKEN_BUDGET = 8192
"""Tokens one engine step may prefill (whole prompts only; see the engine arguments)."""
LOGPROBS_MODE: Final = "processed_logprobs"
"""vLLM reports each sampled token's logprob under temperature (and top-p): the sampling distribution."""
INSECURE_SERIALIZATION_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"
"""Lets vLLM's msgpack encoder and decoder fall back to pickle: what CUDA IPC handles need to reach the engine."""
RPC_MARGIN_S = 30.0
"""Extra time around a transfer's own timeout before the actor gives up waiting on vLLM."""


class StaleEngineError(RuntimeError):
    """An engine does not hold the weight version the controller expects."""


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


def rollout_worker_kwargs(cfg: TrainConfig, engine_index: int, weight_transfer_backend: str) -> dict[str, Any]:
    """Unpack the config into `RolloutWorker`'s plain constructor arguments."""
    ro = cfg.rollout
    return dict(
        model_path=cfg.model.path,
        dtype=cfg.model.dtype,
        tensor_parallel_size=ro.tensor_parallel_size,
        max_model_len=ro.max_model_len,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        enable_sleep_mode=ro.enable_sleep_mode or cfg.cluster.colocate,  # colocated engines must free memory
        cpu_kvcache_gib=ro.cpu_kvcache_gib,
        cpu_linear=ro.cpu_linear,
        seed=cfg.seed,
        engine_index=engine_index,
        cpu_threads=None if cfg.cluster.use_gpu else cpu_threads_bind(engine_index, ro.num_engines),
        use_gpu=cfg.cluster.use_gpu,
        weight_transfer_backend=weight_transfer_backend,
    )


RAY_HIDDEN_DEVICES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
"""Ray sets these to '' in an actor that holds no GPU; a TP engine's actor holds none (its workers do)."""


def engine_executor_args(*, use_gpu: bool, tensor_parallel_size: int, bundle_indices: list[int] | None
                         ) -> tuple[dict[str, Any], dict[str, str | None]]:
    """(extra engine arguments, environment changes; None unsets) that place an engine's workers (pure).

    GPU with TP > 1: vLLM's Ray executor, one worker per one-GPU bundle of the actor's placement group
    (`bundle_indices`; default: the first TP bundles), and the actor's empty device list removed so
    vLLM's engine core does not conclude the node has no GPU (OpenRLHF does the same). Otherwise
    vLLM's own choice ('uni' for one worker; CPU engines run their TP workers as local processes).
    """
    if not use_gpu or tensor_parallel_size == 1:
        return {}, {}
    indices = bundle_indices if bundle_indices is not None else list(range(tensor_parallel_size))
    if len(indices) != tensor_parallel_size:
        raise ValueError(f"a TP={tensor_parallel_size} engine needs {tensor_parallel_size} bundles, got {indices}")
    env: dict[str, str | None] = {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, indices))}
    env.update(dict.fromkeys(RAY_HIDDEN_DEVICES))
    return {"distributed_executor_backend": "ray"}, env


MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
"""Hugging Face config fields that mark a mixture-of-experts model (Qwen2-MoE, Mixtral, DeepSeek)."""


def deepest_sleep_level(*, quantization: str | None, hf_config: Any) -> int:
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


def prompt_seed(seed: int | None, prompt: Prompt) -> int | None:
    """Per-prompt sampling seed: the same (seed, prompt) samples the same group on any engine."""
    return None if seed is None else (seed * 1_000_003 + prompt.index) % 2**31


class RolloutWorker:
    """A vLLM engine as a plain class; cluster code wraps it with `ray.remote(...)`."""

    def __init__(self, model_path: str, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                 max_model_len: int = 256, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = False, cpu_kvcache_gib: float = 1.0, cpu_linear: str = RolloutConfig.cpu_linear,
                 seed: int = 0,
                 engine_index: int = 0, cpu_threads: str | None = None, use_gpu: bool | None = None,
                 weight_transfer_backend: str | None = None, bundle_indices: list[int] | None = None):
        import torch

        from actors.versions import check_vllm

        check_vllm(where=f"engine {engine_index}")  # before anything is built on its internals
        self.engine_index = engine_index
        # A TP > 1 GPU engine's actor holds no GPU itself (its workers do), so ask the caller.
        self.on_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        self.backend = weight_transfer_backend or ("nccl" if self.on_gpu else "gloo")
        if not self.on_gpu:
            from actors.weight_sync import CPU_LINEAR_ENV

            # Read by the engine-core and worker processes vLLM spawns from here.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cpu_kvcache_gib)))
            os.environ[CPU_LINEAR_ENV] = cpu_linear  # read by actors.weight_sync.register_vllm_plugin
            if cpu_threads is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads
        if self.on_gpu and self.backend == "ipc":
            # vLLM's msgpack encoder between `AsyncLLM.update_weights` and the engine core refuses the CUDA
            # IPC handles (they hold classes and a torch.dtype) unless this is set in the engine's processes
            # before they start (vLLM reads it once its engine is up). Only for ipc: it lets vLLM unpickle
            # what reaches its engine core, which no other backend needs.
            os.environ[INSECURE_SERIALIZATION_ENV] = "1"
        executor_args, executor_env = engine_executor_args(
            use_gpu=self.on_gpu, tensor_parallel_size=tensor_parallel_size, bundle_indices=bundle_indices)
        for name, value in executor_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path, dtype=cast(Any, dtype), tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode and self.on_gpu, seed=seed,
            # vLLM reads the config as a dict (its fields are typed as literals and a config class)
            weight_transfer_config=cast(Any, {"backend": self.backend}),
            logprobs_mode=LOGPROBS_MODE,
            enable_prefix_caching=True,  # the G samples of a group share their prompt
            # A prefill split over two steps makes vLLM rewind the request's seeded generator
            # (`Generator.set_offset`), which CPU generators do not support: seeded requests then
            # kill the engine. Whole prefills keep per-request seeds usable on CPU and GPU alike.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(PREFILL_TOKEN_BUDGET, max_model_len),
            **executor_args,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.tp_size = tensor_parallel_size
        self.sleep_mode = enable_sleep_mode and self.on_gpu
        model_config = self.engine.model_config
        self.max_sleep_level = deepest_sleep_level(quantization=model_config.quantization,
                                                   hf_config=model_config.hf_config)
        self._lock = asyncio.Lock()
        self._broken = False
        self._store: Any = None
        self._spec: Any = None

    # --- sampling ----------------------------------------------------------------------------

    async def generate(self, prompts: list[Prompt], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
                       max_tokens: int = 64, stop: tuple[str, ...] | list[str] = (), seed: int | None = None,
                       expected_version: int | None = None) -> RolloutBatch:
        """G = n completions for each prompt, in prompt order, tagged with the sampling weights' version."""
        async with self._lock:
            version = await self._policy_version()
            if expected_version is not None and version != expected_version:
                raise StaleEngineError(f"engine {self.engine_index} holds weight version {version}, "
                                       f"expected {expected_version}: refusing to sample")
            start = time.perf_counter()
            outputs = await asyncio.gather(*(
                self._generate_one(p, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                   stop=stop, seed=prompt_seed(seed, p)) for p in prompts))
            elapsed = time.perf_counter() - start
        return RolloutBatch(
            prompts=tuple(prompts),
            prompt_token_ids=tuple(tuple(out.prompt_token_ids) for out in outputs),
            completions=tuple(tuple(_completion(c) for c in out.outputs) for out in outputs),
            policy_version=version,
            engine_seconds=elapsed,
        )

    async def _generate_one(self, prompt: Prompt, *, n: int, temperature: float, top_p: float,
                            max_tokens: int, stop: tuple[str, ...] | list[str], seed: int | None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=list(stop),
            include_stop_str_in_output=True, seed=seed, logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in self.engine.generate(prompt.text, params, request_id=uuid.uuid4().hex):
            final = out
        assert final is not None and len(final.outputs) == n, "vLLM returned an incomplete group"
        final.outputs.sort(key=lambda c: c.index)
        return final

    # --- weight sync -------------------------------------------------------------------------

    async def init_weight_sync(self, spec: TransferSpec, rank_offset: int) -> None:
        """Join the transfer group (`actors.weight_sync.TransferSpec`) as ranks rank_offset ..
        rank_offset + TP - 1; blocks until all joined, at most spec.timeout_s."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        from actors.weight_sync import (
            CPU_BACKENDS,
            NCCL_BACKEND,
            NCCL_ID_KEY,
            WeightSyncError,
            control_store,
            engine_scope,
            worker_init_info,
        )

        # One engine class serves both CPU backends (actors.weight_sync.register_vllm_plugin).
        if spec.backend != self.backend and not {spec.backend, self.backend} <= set(CPU_BACKENDS):
            raise WeightSyncError(f"engine {self.engine_index} was started for the {self.backend} transfer "
                                  f"backend, the group uses {spec.backend}")
        if self._spec is not None:  # a group formed anew (another engine was replaced): leave the old one first
            await self._leave_weight_sync(spec.timeout_s)
        self._spec = spec
        store = await asyncio.to_thread(control_store, spec, is_master=False)
        self._store = engine_scope(store, spec, self.engine_index)  # ipc: this engine's own sender's keys
        unique_id = None
        if spec.backend == NCCL_BACKEND:
            await self._store_wait(NCCL_ID_KEY, "the sender's NCCL unique id")
            unique_id = self._store.get(NCCL_ID_KEY)
        info = worker_init_info(spec, rank_offset, unique_id)
        await asyncio.wait_for(self.engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info=info)),
                               spec.timeout_s + RPC_MARGIN_S)

    async def _leave_weight_sync(self, timeout_s: float) -> None:
        """Release this engine's side of the previous transfer group: vLLM's `shutdown_weight_transfer_engine`
        (0.32) has every worker shut its transfer engine down, for NCCL `PyNcclCommunicator.destroy`
        (ncclCommAbort). vLLM's `init_transfer_engine` would otherwise replace the communicator without
        freeing it: one leaked per reload on every surviving engine. It refuses during a half-done update;
        then the old communicator stays (logged), and the new group is formed all the same."""
        try:
            await asyncio.wait_for(self.engine.shutdown_weight_transfer_engine(), timeout_s + RPC_MARGIN_S)
        except Exception as e:  # joining the new group matters more than freeing the old one
            log.warning("engine %d: the previous weight-transfer group was not released (%s: %s)",
                        self.engine_index, type(e).__name__, e)

    async def _store_wait(self, key: str, what: str) -> None:
        from actors.weight_sync import WeightSyncError

        try:
            await asyncio.to_thread(self._store.wait, [key], timedelta(seconds=self._spec.timeout_s))
        except RuntimeError as e:  # the store raises on timeout or when the sender is gone
            raise WeightSyncError(f"engine {self.engine_index}: no {what} from learner rank 0 within "
                                  f"{self._spec.timeout_s}s: {e}") from e

    async def receive_weights(self, version: int) -> int:
        """Receive one full set of weights, bucket by bucket, and commit it as `version`; returns the
        version now held."""
        from actors.weight_sync import WeightSyncError

        if self._store is None:
            raise WeightSyncError(f"engine {self.engine_index}: init_weight_sync was never called")
        async with self._lock:
            self._broken = True  # until finish_weight_update commits, the weights are half-loaded
            try:
                await self.engine.start_weight_update()
                buckets = await self._receive_buckets(version)
                await self.engine.finish_weight_update(str(version))
                # Cached prefix KV was computed with the old weights; reusing it would sample the next
                # step from a mix of two policies (seen as a learner-vs-rollout logprob gap that grows).
                await self.engine.reset_prefix_cache()
            except Exception as e:
                raise WeightSyncError(f"engine {self.engine_index}: receiving version {version} failed "
                                      f"({type(e).__name__}: {e}); the engine is stale until the next sync") from e
            self._broken = False
            log.debug("engine %d: version %d in %d buckets", self.engine_index, version, buckets)
            return await self._policy_version()

    async def _receive_buckets(self, version: int) -> int:
        """update_weights for each bucket the sender announces, until its end marker; returns the count."""
        import pickle

        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        from actors.weight_sync import (
            ACK_KEY,
            BUCKET_KEY,
            IPC_BACKEND,
            IPC_KEY,
            SHM_BACKEND,
            SHM_KEY,
            WeightSyncError,
            decode_bucket,
            worker_update_info,
        )

        spec, index = self._spec, 0
        while True:
            key = BUCKET_KEY.format(version=version, index=index)
            await self._store_wait(key, f"bucket {index} of version {version}")
            metas = decode_bucket(self._store.get(key))
            if metas is None:
                return index
            handles, region = None, None
            if spec.backend == IPC_BACKEND:
                # Written by learner rank 0 under the run's secret (see weight_sync.TransferSpec).
                handles = pickle.loads(self._store.get(IPC_KEY.format(version=version, index=index)))
            elif spec.backend == SHM_BACKEND:  # each worker acknowledges the bucket itself once loaded
                region = json.loads(self._store.get(SHM_KEY.format(version=version, index=index)))
            info = worker_update_info(metas, handles, region, version=version, index=index)
            request = WeightTransferUpdateRequest(update_info=info)
            try:
                await asyncio.wait_for(self.engine.update_weights(request), spec.timeout_s + RPC_MARGIN_S)
            except TimeoutError as e:
                raise WeightSyncError(f"engine {self.engine_index}: bucket {index} of version {version} "
                                      f"({len(metas)} tensors, {sum(m.nbytes for m in metas)} bytes) was not "
                                      f"loaded within {spec.timeout_s + RPC_MARGIN_S:.0f}s") from e
            if spec.backend == IPC_BACKEND:
                self._store.set(ACK_KEY.format(version=version, index=index, receiver=self.engine_index), b"1")
            index += 1

    async def weight_version(self, with_checksums: bool = False) -> WeightVersion:
        """The version this engine holds (0: weights from disk; -1: a failed transfer), with checksums on request.

        Checksum keys are vLLM's: a `dp0:pp0:pcp0:tp<k>:` rank prefix plus the vLLM parameter name. On CPU
        with vLLM's oneDNN kernels only embeddings, norms and biases are covered (linear weights live in
        packed kernels there; the default); with `cpu_linear="torch"` the linear weights too.
        """
        checksums: dict[str, str] = {}
        if with_checksums:
            for per_worker in await self.engine.compute_weight_checksums():
                # vLLM CPU repacks linear weights for oneDNN and leaves an empty parameter behind;
                # the digest of nothing proves nothing, so it is left out.
                checksums.update({k: v for k, v in per_worker.items() if v != EMPTY_DIGEST})
        return WeightVersion(engine=self.engine_index, policy_version=await self._policy_version(),
                             checksums=checksums)

    async def _policy_version(self) -> int:
        if self._broken:
            return STALE_VERSION
        held = await self.engine.get_weight_version()
        return 0 if held == "default" else int(held)

    # --- memory and lifetime -----------------------------------------------------------------

    async def sleep(self, level: int = 1) -> int:
        """Free device memory while the learner trains; returns the level slept at (0: not at all). Level 1
        moves the weights to host memory and drops the KV cache; level 2 drops the weights too (vLLM keeps
        only the model's buffers on the host), for a caller whose next step is a weight sync that writes
        every weight (`System.sync_weights`), so nothing is copied to host and back for the sync to
        overwrite. An engine whose reload would not restore what level 2 drops (`deepest_sleep_level`)
        sleeps at level 1. GPU with sleep mode only; a no-op otherwise."""
        if not self.sleep_mode:
            log.debug("engine %d: sleep is a no-op without GPU sleep mode", self.engine_index)
            return 0
        level = min(level, self.max_sleep_level)
        async with self._lock:
            await self.engine.sleep(level=level)
        return level

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate device memory: tags ["weights"] first (so a weight sync has somewhere to land),
        then ["kv_cache"] (so the cache takes only what the learner left); None wakes both."""
        if not self.sleep_mode:
            return
        await self.engine.wake_up(tags)

    async def memory(self) -> dict[str, float]:
        """GiB this engine holds: device memory in use on its GPU (GPU), or its processes' resident set (CPU)."""
        return _memory_gib(self.on_gpu and self.tp_size == 1)

    async def processes(self) -> Any:
        """This engine's processes on its node and the /dev/shm files they map
        (actors.engine_processes.EngineProcesses), so they can be removed when the engine is gone."""
        import ray

        from actors.engine_processes import record

        return record(os.getpid(), ray.get_runtime_context().get_node_id())

    async def child_pids(self) -> list[int]:
        """Processes vLLM started for this engine (so a test can reap them after ray.kill)."""
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=True)]

    async def shutdown(self) -> None:
        self.engine.shutdown()


def _memory_gib(on_gpu: bool) -> dict[str, float]:
    """Memory of this process and its children (CPU), or of the GPU it sees (all processes on it)."""
    import psutil

    if on_gpu:
        import torch

        free, total = torch.cuda.mem_get_info()
        return {"device_used_gib": (total - free) / 2**30}
    me = psutil.Process()
    rss = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {"host_rss_gib": rss / 2**30}


def _completion(c: Any) -> Completion:
    """One vLLM CompletionOutput as a wire type; logprobs of the sampled tokens only."""
    token_ids = tuple(c.token_ids)
    logprobs = tuple(float(step[tok].logprob) for tok, step in zip(token_ids, c.logprobs))
    return Completion(token_ids=token_ids, text=c.text, rollout_logprobs=logprobs,
                      finish_reason=str(c.finish_reason))
