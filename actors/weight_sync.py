"""Versioned weight sync from one learner process to every vLLM worker of every engine.

    learner rank 0                          rollout engine e (vLLM worker w, rank = rank_offset_e + w)
    WeightSender.send(named_tensors) ──►  control TCPStore key "meta/<version>" (names, dtypes, shapes)
                                    └──►  buckets of <= bucket_bytes over the transfer group
                                          GlooWeightTransferEngine.receive_weights -> model.load_weights

The transfer group has world_size = 1 + sum of the engines' TP sizes: the sender is rank 0 and every
vLLM worker is one receiver rank. The sender owns a control TCPStore on (host, port); the metadata of
each version travels through it, so a receiver knows names, dtypes and shapes before the bytes arrive,
and both sides cut the same buckets from it (`plan_buckets`).

We use vLLM's own RL interface (`init_weight_transfer_engine`, `start_weight_update` ->
`update_weights` -> `finish_weight_update(version)`), not its internals:
- CPU: no built-in engine fits, so `GlooWeightTransferEngine` is registered under the name "gloo"
  through `WeightTransferEngineFactory.register_engine`. vLLM's workers are spawned processes, so the
  registration runs there through the `vllm.general_plugins` entry point `register_vllm_plugin`
  (declared in setup.cfg). The group is a `ProcessGroupGloo` made directly on a `PrefixStore` of the
  control store, bound to `host`, with `timeout_s` on every collective: a missing or dead peer raises.
- GPU: vLLM's built-in "nccl" engine receives (unpacked, one broadcast per tensor); its rendezvous is
  vLLM's `StatelessProcessGroup` on port + 1, since the control store already holds `port`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

GLOO_BACKEND = "gloo"
"""Name our CPU engine is registered under in vLLM's weight-transfer factories."""
NCCL_PORT_OFFSET = 1
"""The NCCL rendezvous store sits on port + 1: the control store holds `port` itself."""
META_KEY = "meta/{version}"
"""Control-store key holding the metadata of one version's transfer (JSON)."""


class WeightSyncError(RuntimeError):
    """A weight transfer failed or did not finish within its timeout."""


# --- wire plan (pure; both sides compute the same one) --------------------------------------------


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs to allocate one tensor before its bytes arrive."""

    name: str
    """Hugging Face parameter name."""
    dtype: str
    """torch dtype name without the `torch.` prefix, e.g. 'float32'."""
    shape: tuple[int, ...]
    """Full (unsharded) shape."""

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def plan_buckets(sizes: list[int], bucket_bytes: int) -> list[range]:
    """Split tensors (by byte size, in order) into consecutive buckets of at most bucket_bytes.

    A tensor larger than bucket_bytes gets a bucket of its own (we never split a tensor).
    """
    buckets: list[range] = []
    start, filled = 0, 0
    for i, size in enumerate(sizes):
        if i > start and filled + size > bucket_bytes:
            buckets.append(range(start, i))
            start, filled = i, 0
        filled += size
    if start < len(sizes):
        buckets.append(range(start, len(sizes)))
    return buckets


def encode_meta(metas: list[TensorMeta], bucket_bytes: int) -> bytes:
    return json.dumps({"bucket_bytes": bucket_bytes,
                       "tensors": [[m.name, m.dtype, list(m.shape)] for m in metas]}).encode()


def decode_meta(raw: bytes) -> tuple[list[TensorMeta], int]:
    obj = json.loads(raw)
    return [TensorMeta(n, d, tuple(s)) for n, d, s in obj["tensors"]], int(obj["bucket_bytes"])


def pack_bucket(tensors: list[Tensor]) -> Tensor:
    """[sum of nbytes] uint8: the tensors' bytes back to back (any dtype, made contiguous)."""
    return torch.cat([t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors])


def unpack_bucket(flat: Tensor, metas: list[TensorMeta]) -> list[tuple[str, Tensor]]:
    """Inverse of `pack_bucket`: views into `flat` with each tensor's dtype and shape."""
    out, offset = [], 0
    for m in metas:
        chunk = flat[offset: offset + m.nbytes]
        if offset % 8:  # a view must start at a multiple of its element size; copy the rare misaligned one
            chunk = chunk.clone()
        out.append((m.name, chunk.view(getattr(torch, m.dtype)).view(m.shape)))
        offset += m.nbytes
    return out


def make_gloo_group(host: str, store: Any, rank: int, world_size: int, timeout_s: float) -> Any:
    """A ProcessGroupGloo outside torch.distributed's default group, bound to `host`.

    Construction waits for every rank (a missing peer raises after timeout_s), and the same
    timeout bounds every collective, so a dead peer raises instead of hanging.
    """
    from torch.distributed import PrefixStore, ProcessGroupGloo

    options = ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=timeout_s)
    options._devices = [ProcessGroupGloo.create_device(hostname=host)]
    return ProcessGroupGloo(PrefixStore("gloo", store), rank, world_size, options)


def tcp_store(host: str, port: int, *, is_master: bool, timeout_s: float) -> Any:
    from torch.distributed import TCPStore

    return TCPStore(host, port, world_size=None, is_master=is_master,
                    timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def digest(tensor: Tensor) -> str:
    """sha256 of a tensor's bytes, as vLLM's `compute_weight_checksums` computes it."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()


# vLLM fuses these Hugging Face projections into one parameter (its `stacked_params_mapping`).
_STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


VOCAB_PADDING = 64
"""vLLM pads embedding and lm_head rows with zeros to a multiple of this (DEFAULT_VOCAB_PADDING_SIZE)."""
_VOCAB_PARAMS = ("model.embed_tokens.weight", "lm_head.weight")


def expected_vllm_checksums(named_tensors: Iterable[tuple[str, Tensor]], *, prefix: str = "",
                            tie_word_embeddings: bool = False) -> dict[str, str]:
    """Checksums a TP=1 vLLM engine should report after loading these HF tensors (Llama/Qwen2 family).

    Fused projections are the concatenation of their parts along dim 0, in vLLM's order; vocabulary
    rows are zero-padded to a multiple of VOCAB_PADDING; with tied embeddings vLLM has no lm_head.
    """
    tensors = dict(named_tensors)
    out: dict[str, str] = {}
    for name, tensor in tensors.items():
        if tie_word_embeddings and name == "lm_head.weight":
            continue
        if name in _VOCAB_PARAMS:
            pad = -tensor.shape[0] % VOCAB_PADDING
            tensor = torch.cat([tensor, tensor.new_zeros(pad, *tensor.shape[1:])])
        parent, _, leaf = name.rpartition(".")
        module_path, _, proj = parent.rpartition(".")
        fused = next((f for f, parts in _STACKED.items() if proj in parts), None)
        if fused is None:
            out[prefix + name] = digest(tensor)
        elif proj == _STACKED[fused][0]:
            parts = [tensors[f"{module_path}.{p}.{leaf}"] for p in _STACKED[fused]]
            out[prefix + f"{module_path}.{fused}.{leaf}"] = digest(torch.cat(parts, dim=0))
    return out


# --- the receiving side: a vLLM worker-side engine -----------------------------------------------


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

    @dataclass
    class GlooUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        bucket_bytes: int

    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """Receives HF-named full tensors over gloo, bucket by bucket, into `model.load_weights`.

        Weights arrive in checkpoint format, so the update goes through vLLM's layerwise reload
        (as its NCCL engine does): each layer is re-processed once all of its tensors are in.
        """

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.group: Any = None
            self.store: Any = None

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            pc = self.parallel_config
            rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
            self.store = tcp_store(init_info.master_address, init_info.master_port,
                                   is_master=False, timeout_s=init_info.timeout_s)
            self.group = make_gloo_group(init_info.master_address, self.store, rank,
                                         init_info.world_size, init_info.timeout_s)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
            if getattr(self.model_config.hf_config, "tie_word_embeddings", False):
                retie_lm_head(self.model)

        def receive_weights(self, update_info: GlooUpdateInfo) -> None:
            if self.group is None:
                raise RuntimeError("gloo weight transfer not initialised: call init_weight_transfer_engine first")
            metas = [TensorMeta(n, d, tuple(s)) for n, d, s in
                     zip(update_info.names, update_info.dtype_names, update_info.shapes)]
            for bucket in plan_buckets([m.nbytes for m in metas], update_info.bucket_bytes):
                bucket_metas = [metas[i] for i in bucket]
                flat = torch.empty(sum(m.nbytes for m in bucket_metas), dtype=torch.uint8)
                self.group.broadcast(flat, 0).wait()
                self.model.load_weights(unpack_bucket(flat, bucket_metas))

        def shutdown(self) -> None:
            self.group, self.store = None, None

    return GlooInitInfo, GlooUpdateInfo, GlooWeightTransferEngine


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


def register_vllm_plugin() -> None:
    """vLLM general plugin: register the CPU gloo engine. Idempotent (vLLM may call it many times)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, _engine_classes()[2])


def worker_init_info(backend: str, host: str, port: int, world_size: int, rank_offset: int,
                     timeout_s: float) -> dict[str, Any]:
    """The `init_weight_transfer_engine` payload for one engine whose workers start at rank_offset."""
    if backend == GLOO_BACKEND:
        return dict(master_address=host, master_port=port, rank_offset=rank_offset,
                    world_size=world_size, timeout_s=timeout_s)
    return dict(master_address=host, master_port=port + NCCL_PORT_OFFSET, rank_offset=rank_offset,
                world_size=world_size, packed=False)


def worker_update_info(backend: str, metas: list[TensorMeta], bucket_bytes: int) -> dict[str, Any]:
    """The `update_weights` payload: metadata of every tensor of this version."""
    info: dict[str, Any] = dict(names=[m.name for m in metas], dtype_names=[m.dtype for m in metas],
                                shapes=[list(m.shape) for m in metas])
    if backend == GLOO_BACKEND:
        info["bucket_bytes"] = bucket_bytes
    return info


# --- the sending side: one learner process -------------------------------------------------------


class WeightSender:
    """Rank 0 of the transfer group; lives in ONE learner process (Megatron rank 0 after the gather).

    The constructor opens the control store on (host, port) and joins the group, so it blocks until
    every receiver called `init_weight_transfer_engine` (raises after timeout_s if one never does).
    """

    def __init__(self, host: str, port: int, world_size: int, timeout_s: float, backend: str = GLOO_BACKEND):
        self.backend, self.timeout_s = backend, timeout_s
        self.store = tcp_store(host, port, is_master=True, timeout_s=timeout_s)
        if backend == GLOO_BACKEND:
            self.group = make_gloo_group(host, self.store, 0, world_size, timeout_s)
        else:  # GPU: vLLM's own NCCL rendezvous (StatelessProcessGroup) on port + 1
            from vllm.distributed.weight_transfer.nccl_common import trainer_init

            self.group = trainer_init(dict(master_address=host, master_port=port + NCCL_PORT_OFFSET,
                                           world_size=world_size))

    def send(self, named_tensors: Iterable[tuple[str, Tensor]], *, bucket_bytes: int, version: int) -> dict:
        """Publish metadata for `version`, then stream the tensors in buckets. Returns stats.

        The receivers' `receive_weights(version)` must run concurrently (the controller starts both).
        """
        tensors = [(name, t.detach()) for name, t in named_tensors]
        metas = [TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in tensors]
        start = time.perf_counter()
        self.store.set(META_KEY.format(version=version), encode_meta(metas, bucket_bytes))
        buckets = plan_buckets([m.nbytes for m in metas], bucket_bytes)
        try:
            for bucket in buckets:
                self._broadcast([tensors[i][1] for i in bucket])
        except RuntimeError as e:
            raise WeightSyncError(f"weight sync of version {version} failed after "
                                  f"{time.perf_counter() - start:.1f}s (timeout {self.timeout_s}s): {e}") from e
        return {"bytes": sum(m.nbytes for m in metas), "seconds": time.perf_counter() - start,
                "buckets": len(buckets), "tensors": len(metas)}

    def _broadcast(self, tensors: list[Tensor]) -> None:
        if self.backend == GLOO_BACKEND:
            self.group.broadcast(pack_bucket(tensors), 0).wait()
            return
        for t in tensors:  # NCCL: one broadcast per tensor, as vLLM's unpacked consumer expects
            self.group.broadcast(t.contiguous(), src=0, stream=torch.cuda.current_stream())
        torch.cuda.current_stream().synchronize()


def iter_module_tensors(module: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """HF-named full tensors of a Hugging Face model as its checkpoint holds them (a tied lm_head is not
    repeated): exactly what the learner sends after its gather."""
    tied = bool(getattr(getattr(module, "config", None), "tie_word_embeddings", False))
    for name, tensor in module.state_dict().items():
        if not (tied and name == "lm_head.weight"):
            yield name, tensor
