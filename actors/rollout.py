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

How new weights reach the engine (actors/rollout_sync.py; inside vLLM, actors/weight_sync/receive.py): `init_weight_sync` joins
the transfer group once; `receive_weights(version)` loads one version bucket by bucket and commits it.
Sampling and receiving hold one lock, so every completion is sampled by exactly one version. A
transfer that fails half-way leaves the model half-loaded: the worker then reports version -1
(stale) until a later sync succeeds, and refuses to sample when a version is expected.

The worker is the face the engine group calls; engine start-up lives in `actors.rollout_engine`, the
receiving half of weight sync in `actors.rollout_sync`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING

from actors.rollout_engine import (
    INSECURE_SERIALIZATION_ENV,
    LOGPROBS_MODE,
    PREFILL_TOKEN_BUDGET,
    cpu_threads_bind,
    deepest_sleep_level,
    engine_executor_args,
    runs_eager,
    set_engine_environment,
    start_engine,
)
from actors.rollout_sync import WeightReceiver
from actors.rollout_tools import MultiTurn
from actors.weight_sync import WeightSyncError
from trainer.config import RolloutConfig
from trainer.protocols import StaleEngineError
from trainer.types import Completion, Prompt, RolloutBatch, WeightVersion

if TYPE_CHECKING:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    from actors.engine_processes import EngineProcesses
    from actors.weight_sync import TransferSpec
    from reward_server.tools import ToolSettings

__all__ = [  # names callers and tests import from here; the engine's start-up lives in actors.rollout_engine
    "EMPTY_DIGEST", "INSECURE_SERIALIZATION_ENV", "LOGPROBS_MODE", "PREFILL_TOKEN_BUDGET", "STALE_VERSION",
    "RolloutWorker", "StaleEngineError", "cpu_threads_bind", "deepest_sleep_level",
    "engine_executor_args", "prompt_seed",
]

log = logging.getLogger(__name__)

CPU_CORE_EXIT_S = 1.0
"""How long a CPU engine's core may take to exit after vLLM's shutdown sends it SIGTERM before vLLM kills it
(and logs that it did). Its clean-up after the busy loop (vLLM 0.32: `cleanup_dist_env_and_memory`'s full
garbage collection, then the interpreter's teardown) took about 3.5 s on 2 cores and frees nothing that the
process's death does not; what it leaves in /dev/shm is removed by the engine group's reap
(`actors.engine_processes`)."""
STALE_VERSION = -1
"""Reported after a failed transfer: the weights are neither the old nor the new version."""
EMPTY_DIGEST = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"""sha256 of zero bytes."""


def prompt_seed(seed: int | None, prompt: Prompt) -> int | None:
    """Per-prompt sampling seed: the same (seed, prompt) samples the same group on any engine."""
    return None if seed is None else (seed * 1_000_003 + prompt.index) % 2**31


class RolloutWorker:
    """A vLLM engine as a plain class; cluster code wraps it with `ray.remote(...)`."""

    def __init__(self, model_path: str, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                 max_model_len: int = 256, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = False, cpu_kvcache_gib: float = 1.0, cpu_linear: str = RolloutConfig.cpu_linear,
                 enforce_eager: bool | None = RolloutConfig.enforce_eager,
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
        executor_args, executor_env = engine_executor_args(
            use_gpu=self.on_gpu, tensor_parallel_size=tensor_parallel_size, bundle_indices=bundle_indices)
        set_engine_environment(on_gpu=self.on_gpu, backend=self.backend, cpu_kvcache_gib=cpu_kvcache_gib,
                               cpu_linear=cpu_linear, cpu_threads=cpu_threads, executor_env=executor_env)
        self.sleep_mode = enable_sleep_mode and self.on_gpu
        self.engine = start_engine(model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                                   max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                                   sleep_mode=self.sleep_mode, seed=seed, backend=self.backend,
                                   enforce_eager=runs_eager(enforce_eager, on_gpu=self.on_gpu),
                                   executor_args=executor_args)
        self.tp_size = tensor_parallel_size
        model_config = self.engine.model_config
        self.max_sleep_level = deepest_sleep_level(quantization=model_config.quantization,
                                                   hf_config=model_config.hf_config)
        self._lock = asyncio.Lock()
        self._broken = False
        self._receiver = WeightReceiver(self.engine, engine_index=engine_index, backend=self.backend)
        self._multi_turn = MultiTurn(self.engine)

    # --- sampling ----------------------------------------------------------------------------

    async def generate(self, prompts: list[Prompt], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
                       max_tokens: int = 64, stop: tuple[str, ...] | list[str] = (), seed: int | None = None,
                       expected_version: int | None = None, tools: ToolSettings | None = None) -> RolloutBatch:
        """G = n completions for each prompt, in prompt order, tagged with the sampling weights' version.

        A prompt whose data source has tools in `tools` is generated turn by turn (`actors.rollout_tools`)."""
        async with self._lock:
            version = await self._policy_version()
            if expected_version is not None and version != expected_version:
                raise StaleEngineError(f"engine {self.engine_index} holds weight version {version}, "
                                       f"expected {expected_version}: refusing to sample")
            start = time.perf_counter()
            outputs = await asyncio.gather(*(
                self._generate_one(p, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                   stop=stop, seed=prompt_seed(seed, p), tools=tools) for p in prompts))
            elapsed = time.perf_counter() - start
        return RolloutBatch(
            prompts=tuple(prompts),
            prompt_token_ids=tuple(prompt_ids for prompt_ids, _ in outputs),
            completions=tuple(group for _, group in outputs),
            policy_version=version,
            engine_seconds=elapsed,
        )

    async def _generate_one(self, prompt: Prompt, *, n: int, temperature: float, top_p: float,
                            max_tokens: int, stop: tuple[str, ...] | list[str], seed: int | None,
                            tools: ToolSettings | None = None) -> tuple[tuple[int, ...], tuple[Completion, ...]]:
        """(the prompt's token ids, its n completions in sample order)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        specs = tools.tools_for(prompt.task) if tools is not None else ()
        if tools is not None and specs:
            prompt_ids = self.engine.get_tokenizer().encode(prompt.text)
            return tuple(prompt_ids), await self._multi_turn.generate(
                list(prompt_ids), specs, tools, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                stop=list(stop), seed=seed)

        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=list(stop),
            include_stop_str_in_output=True, seed=seed, logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final: RequestOutput | None = None
        async for out in self.engine.generate(prompt.text, params, request_id=uuid.uuid4().hex):
            final = out
        assert final is not None and len(final.outputs) == n, "vLLM returned an incomplete group"
        assert final.prompt_token_ids is not None, "vLLM returned no prompt token ids"
        final.outputs.sort(key=lambda c: c.index)
        return tuple(final.prompt_token_ids), tuple(_completion(c) for c in final.outputs)

    # --- weight sync -------------------------------------------------------------------------

    async def init_weight_sync(self, spec: TransferSpec, rank_offset: int) -> None:
        """Join the transfer group (`actors.weight_sync.TransferSpec`) as ranks rank_offset ..
        rank_offset + TP - 1; blocks until all joined, at most spec.timeout_s."""
        await self._receiver.join(spec, rank_offset)

    async def receive_weights(self, version: int) -> int:
        """Receive one full set of weights, bucket by bucket, and commit it as `version`; returns the
        version now held."""
        if not self._receiver.joined:
            raise WeightSyncError(f"engine {self.engine_index}: init_weight_sync was never called")
        async with self._lock:
            self._broken = True  # until finish_weight_update commits, the weights are half-loaded
            buckets = await self._receiver.receive(version)
            self._broken = False
            log.debug("engine %d: version %d in %d buckets", self.engine_index, version, buckets)
            return await self._policy_version()

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

    async def processes(self) -> EngineProcesses:
        """This engine's processes on its node and the /dev/shm files they map, so they can be removed
        when the engine is gone."""
        import ray

        from actors.engine_processes import record

        return record(os.getpid(), ray.get_runtime_context().get_node_id())

    async def child_pids(self) -> list[int]:
        """Processes vLLM started for this engine (so a test can reap them after ray.kill)."""
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=True)]

    async def shutdown(self) -> None:
        """vLLM's shutdown: SIGTERM to the engine core, which then has its own clean-up's time to exit
        (vLLM's default on GPU, where it frees device memory; `CPU_CORE_EXIT_S` on CPU), then SIGKILL."""
        self._multi_turn.close()
        self.engine.shutdown(timeout=None if self.on_gpu else CPU_CORE_EXIT_S)


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


def _completion(c: CompletionOutput) -> Completion:
    """One vLLM CompletionOutput as a wire type; logprobs of the sampled tokens only."""
    token_ids = tuple(c.token_ids)
    assert c.logprobs is not None, "vLLM returned no logprobs (SamplingParams(logprobs=0) asks for them)"
    logprobs = tuple(_sampled_logprob(step, tok) for tok, step in zip(token_ids, c.logprobs))
    return Completion(token_ids=token_ids, text=c.text, rollout_logprobs=logprobs,
                      finish_reason=str(c.finish_reason))


def _sampled_logprob(step: dict[int, Logprob] | None, token: int) -> float:
    """The sampled token's logprob from one step's {token: Logprob} (vLLM always lists the sampled one)."""
    assert step is not None, "vLLM returned no logprobs for a sampled token"
    return float(step[token].logprob)
