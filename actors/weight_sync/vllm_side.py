"""Everything of the weight sync that reaches into vLLM, fenced here: the plugin vLLM runs in its processes,
the vLLM face of our CPU transfer engine, the patches of vLLM's CPU kernels and reload, and the learner's use
of vLLM's NCCL wrapper.

Read against vLLM 0.32.0 (`actors.versions` refuses other releases), in its installed source. Each use, what
it relies on, and what breaks if vLLM changes it:

1. `register_vllm_plugin`, the `vllm.general_plugins` entry point `actors.weight_sync:register_vllm_plugin`
   (setup.cfg): vLLM's `plugins.load_general_plugins` calls it in every process it starts (engine core,
   workers), so the CPU engine is registered where the workers look it up. It registers
   `GlooWeightTransferEngine` under "gloo" and "shm" with `WeightTransferEngineFactory.register_engine`,
   after a look at the private `WeightTransferEngineFactory._registry` (registering a name twice raises, and
   vLLM may call a plugin many times). vLLM creates a worker's transfer engine when the worker loads its
   model (`WeightTransferEngineFactory.create_engine`, `v1/worker/gpu_worker.py`): if the entry-point group
   or the factory changes, a CPU engine fails at start-up ("Invalid weight transfer backend: gloo").
2. `GlooWeightTransferEngine` subclasses `vllm.distributed.weight_transfer.base.WeightTransferEngine`: its
   `init_info_cls` / `update_info_cls` dataclasses are built from the payloads' dicts
   (`wire.worker_init_info` / `worker_update_info`; an unknown field raises ValueError); its constructor
   sets `parallel_config`, `model_config` and `model` (the target of the update, which vLLM may swap with
   `set_weight_update_target`, so it is read at each call); the abstract `init_transfer_engine`,
   `start_weight_update`, `finish_weight_update`, `receive_weights`, `shutdown`. A worker's transfer rank
   is `rank_offset + parallel_config.data_parallel_index * parallel_config.world_size + parallel_config.rank`.
   A changed signature fails every CPU sync at once.
3. vLLM's layerwise reload, `vllm.model_executor.model_loader.reload.initialize_layerwise_reload(model)`
   and `finalize_layerwise_reload(model, model_config)`, around the buckets' `load_weights` (vLLM's
   built-in ipc engine calls the same pair). Breaks: the CPU engines' weights stay as loaded by vLLM's
   `load_weights` without their kernels' repacking (wrong outputs; `tests/test_weight_sync.py` compares
   an engine's greedy text and logprobs with Hugging Face's after a sync).
4. `quiet_expected_reload_warnings`: a filter on the logger "vllm.model_executor.model_loader.reload.layerwise"
   for the message "%s: Failed to load weights" (`RELOAD_LOGGER`, `RELOAD_MISSING`), which the reload logs
   per layer that took no weights. A renamed logger or message only brings the warnings back.
5. `retie_lm_head`: a tied lm_head shares its Parameter with `model.model.embed_tokens`
   (`ParallelLMHead.tie_weights`), and the reload gives the embedding a new one; we point `lm_head.weight`
   at it and call `lm_head.quant_method.process_weights_after_loading(lm_head)`. Breaks: a tied model
   samples from the previous version's embedding (the greedy comparison above catches it).
6. `use_torch_linear` (`rollout.cpu_linear: torch`) replaces
   `vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm(layer, remove_weight)`, which
   `UnquantizedLinearMethod` and `UnquantizedEmbeddingMethod.process_weights_after_loading` import at each
   call, and sets `layer.cpu_linear`, which vLLM's `cpu_unquantized_gemm` calls. If a caller bound the
   function at import, the patch would do nothing: `loads_in_place` then answers False and the reload runs
   (slower, still right).
7. `loads_in_place`: every layer with a `quant_method` has an `UnquantizedLinearMethod` or
   `UnquantizedEmbeddingMethod` (`vllm.model_executor.layers.linear`, `.vocab_parallel_embedding`) and runs
   `torch_linear`. New method classes only make it answer False (the reload runs).
8. The learner's NCCL group (`nccl_unique_id`, `pynccl_communicator`, used by `send.nccl_communicator`):
   `vllm.distributed.device_communicators.pynccl_wrapper.NCCLLibrary().ncclGetUniqueId().internal` and
   `pynccl.PyNcclCommunicator.from_unique_id_bytes(unique_id, rank, world_size, device)`, the pair vLLM's
   built-in nccl engine joins on the engines' side; `send.abort_nccl` relies on
   `PyNcclCommunicator.destroy` calling `ncclCommAbort` on a daemon thread joined for at most 5 s. Breaks:
   GPU runs without colocation cannot form the group (a renamed call), or a push that failed leaves rank 0's
   stream blocked (a `destroy` that no longer aborts: logged by `abort_nccl`).

Mirrored, not patched (pure code elsewhere that must agree with vLLM 0.32.0): the payloads of vLLM's
built-in engines, `wire.worker_init_info` for nccl (`nccl_unique_id_b64`, `rank_offset`, `world_size`,
`packed=False`: one broadcast per tensor; `distributed/weight_transfer/nccl_engine.py`) and
`send.ipc_handles` (per tensor {GPU uuid: the arguments of torch's `rebuild_cuda_tensor`}; `ipc_engine.py`);
`checksums.VOCAB_PADDING` (`DEFAULT_VOCAB_PADDING_SIZE`), the fused projections of `checksums.ChecksumStream`
(`stacked_params_mapping`) and the `dp0:pp0:pcp0:tp<k>:` keys of `compute_weight_checksums`
(`checksums.compare_checksums`). The engine actor's calls of `AsyncLLM`'s RL interface are in
`actors.rollout` (public API).

Importing this module imports no vLLM: every vLLM import is inside the function that needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from actors.weight_sync.receive import CpuReceiver
from actors.weight_sync.spec import CPU_BACKENDS, GLOO_BACKEND
from actors.weight_sync.wire import TensorMeta

CPU_LINEAR_ENV = "GRPO_RAY_CPU_LINEAR"
"""Set by a CPU engine's actor for the processes vLLM spawns from it (`rollout.cpu_linear`): "torch" makes
the engine's linear layers run `torch_linear` on their parameters (`register_vllm_plugin`), "onednn" keeps
vLLM's own choice, weights repacked for oneDNN (also what a vLLM process started without it gets)."""


def register_vllm_plugin() -> None:
    """vLLM general plugin: register the CPU engine under its two names (gloo, shm), and on request
    (CPU_LINEAR_ENV) switch the CPU linear kernels to `torch_linear`. Idempotent (vLLM may call it many
    times)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    from trainer.config import CPU_LINEAR_KERNELS

    for name in CPU_BACKENDS:
        if name not in WeightTransferEngineFactory._registry:
            WeightTransferEngineFactory.register_engine(name, _engine_classes()[2])
    kernels = os.environ.get(CPU_LINEAR_ENV, "onednn")
    if kernels not in CPU_LINEAR_KERNELS:
        raise ValueError(f"{CPU_LINEAR_ENV}={kernels!r}: expected one of {', '.join(CPU_LINEAR_KERNELS)}")
    if kernels == "torch":
        use_torch_linear()


def _engine_classes() -> tuple[type, type, type]:
    """Build the vLLM engine classes lazily: importing this module must not import vLLM."""
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )

    @dataclass
    class GlooInitInfo(WeightTransferInitInfo):
        master_address: str
        master_port: int
        rank_offset: int
        world_size: int
        timeout_s: float = 120.0
        secret: str = ""
        transport: str = GLOO_BACKEND
        """gloo, or shm: buckets in shared memory on this node (no group is formed)."""

    @dataclass
    class GlooUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        region_path: str = ""
        """shm: the file that holds the bucket's bytes from offset 0, and its size."""
        region_size: int = 0
        version: int = 0
        index: int = 0

    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """Receives one bucket of HF-named full tensors per `update_weights`, over gloo or from shared
        memory (`receive.CpuReceiver`), into `model.load_weights`; vLLM's layerwise reload re-processes each
        layer once its tensors are in, unless the model loads in place."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo
        model: Any  # vLLM's model: its `load_weights` is not a declared attribute of nn.Module

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.receiver = CpuReceiver()
            self.in_place = False
            """This update copies into the existing parameters (`loads_in_place`) instead of vLLM's reload."""

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            pc = self.parallel_config
            self.receiver.join(master_address=init_info.master_address, master_port=init_info.master_port,
                               secret=init_info.secret, world_size=init_info.world_size,
                               rank=init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank,
                               timeout_s=init_info.timeout_s, transport=init_info.transport)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            # In place: `load_weights` copies into the parameters the kernels read; nothing to re-process.
            self.in_place = self.model_config.quantization is None and loads_in_place(self.model)
            if not self.in_place:
                initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            if self.in_place:
                return
            tied = bool(getattr(self.model_config.hf_config, "tie_word_embeddings", False))
            with quiet_expected_reload_warnings(tied_lm_head=tied):
                finalize_layerwise_reload(self.model, self.model_config)
            if tied:
                retie_lm_head(self.model)

        def receive_weights(self, update_info: GlooUpdateInfo) -> None:
            metas = [TensorMeta(n, d, tuple(s)) for n, d, s in
                     zip(update_info.names, update_info.dtype_names, update_info.shapes)]
            self.receiver.receive(self.model.load_weights, metas, region_path=update_info.region_path,
                                  region_size=update_info.region_size, version=update_info.version,
                                  index=update_info.index)

        def shutdown(self) -> None:
            self.receiver.leave()

    return GlooInitInfo, GlooUpdateInfo, GlooWeightTransferEngine


RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
RELOAD_MISSING = "%s: Failed to load weights"
"""vLLM's warning, per layer and sync, for a layer that took no weights in a reload (the layer's class name)."""


class _ExpectedReloadWarnings(logging.Filter):
    def __init__(self, tied_lm_head: bool):
        super().__init__()
        self.tied_lm_head = tied_lm_head

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != RELOAD_MISSING or not record.args:
            return True
        layer = str(record.args[0])  # type: ignore[index]
        return not (layer.endswith("RotaryEmbedding") or (self.tied_lm_head and layer == "ParallelLMHead"))


@contextmanager
def quiet_expected_reload_warnings(*, tied_lm_head: bool) -> Iterator[None]:
    """Drop vLLM's "<layer>: Failed to load weights" for the layers no checkpoint holds, inside the block.

    Every reload warned it twice per engine and step (about 60 lines in a 60-step demo), for rotary
    embeddings (buffers computed from the config, which vLLM restores) and a tied lm_head (no weights of its
    own; `retie_lm_head` points it at the new embedding right after). The warning for any other layer, or
    for an lm_head of an untied model, stays."""
    logger = logging.getLogger(RELOAD_LOGGER)
    quiet = _ExpectedReloadWarnings(tied_lm_head)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def retie_lm_head(model: Any) -> None:
    """Point a tied lm_head at the embedding the reload just replaced, and re-process it.

    vLLM ties them by sharing one Parameter (`ParallelLMHead.tie_weights`); the layerwise reload gives
    `embed_tokens` a new Parameter, and the lm_head (absent from the checkpoint) keeps the old one, on
    CPU also its packed GEMM copy: logits would come from the previous step's embedding.
    """
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or lm_head is embed or not hasattr(lm_head, "quant_method"):
        return
    lm_head.weight = embed.weight
    lm_head.quant_method.process_weights_after_loading(lm_head)


def torch_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A CPU engine's linear kernel with `rollout.cpu_linear: torch`: it reads the layer's parameter at every
    call, so a weight sync can copy into that parameter in place."""
    return torch.nn.functional.linear(x, weight, bias)


def use_torch_linear() -> None:
    """Make vLLM's CPU GEMM dispatch give every 2-D linear weight `torch_linear`, the weight kept as loaded.

    vLLM's own dispatch (`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`, looked up by its
    callers at each call) repacks each weight for oneDNN and empties the parameter, so every weight sync
    must restore, load and repack each layer (vLLM's layerwise reload: half the engine's time in a sync at
    110M parameters). Meta and non-2-D weights keep vLLM's handling. Idempotent.
    """
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "grpo_ray_torch_linear", False):
        return

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = layer.weight
        if weight.is_meta or weight.ndim != 2:
            original(layer, remove_weight)
        else:
            layer.cpu_linear = torch_linear  # type: ignore[assignment]  # vLLM's attribute, not declared on nn.Module

    dispatch.grpo_ray_torch_linear = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = dispatch


def loads_in_place(model: torch.nn.Module) -> bool:
    """Whether `load_weights` alone updates what the model computes with: every layer with a weight-processing
    method is an unquantized linear or embedding layer that runs `torch_linear` on its own parameter
    (`use_torch_linear`), so there is nothing to re-process. Anything else (a fused MoE, a packed conv
    weight, a quantized layer) keeps vLLM's layerwise reload."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    layers = [m for m in model.modules() if getattr(m, "quant_method", None) is not None]
    return bool(layers) and all(
        isinstance(m.quant_method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod))
        and getattr(m, "cpu_linear", None) is torch_linear for m in layers)


# --- the learner's side of vLLM's NCCL group (nccl backend) ---------------------------------------


def nccl_unique_id() -> bytes:
    """A new `ncclUniqueId`, minted by vLLM's NCCL wrapper, as bytes (what the engines join with)."""
    from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

    return bytes(NCCLLibrary().ncclGetUniqueId().internal)


def pynccl_communicator(unique_id: bytes, *, world_size: int, device: Any) -> Any:
    """Rank 0's vLLM `PyNcclCommunicator` of a group joined by `unique_id` (blocks until every rank joined)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    return PyNcclCommunicator.from_unique_id_bytes(unique_id, rank=0, world_size=world_size, device=device)
