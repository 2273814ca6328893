"""The wire format of a weight sync (pure; both sides compute the same).

A version travels as buckets of whole Hugging Face-named tensors, cut in the order the learner's gather
produces them (`iter_buckets`). Each bucket is announced in the control store as JSON metadata
(`encode_bucket`: names, dtypes, shapes), its bytes travel back to back (`pack_bucket` / `unpack_bucket`),
and `encode_end` closes the version. `worker_init_info` / `worker_update_info` are the payloads of vLLM's
`init_weight_transfer_engine` and `update_weights` that carry them to an engine's workers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from actors.weight_sync.spec import CPU_BACKENDS, NCCL_BACKEND, TransferSpec, WeightSyncError


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

    @classmethod
    def of(cls, name: str, tensor: Tensor) -> TensorMeta:
        return cls(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


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


def iter_buckets(named_tensors: Iterable[tuple[str, Tensor]], bucket_bytes: int
                 ) -> Iterator[list[tuple[str, Tensor]]]:
    """`plan_buckets` over a stream: each bucket is yielded as soon as it is full, so at most one bucket
    (plus the tensor that overflowed it) is held, however large the model."""
    bucket: list[tuple[str, Tensor]] = []
    filled = 0
    for name, tensor in named_tensors:
        size = tensor.numel() * tensor.element_size()
        if bucket and filled + size > bucket_bytes:
            yield bucket
            bucket, filled = [], 0
        bucket.append((name, tensor))
        filled += size
    if bucket:
        yield bucket


def encode_bucket(metas: list[TensorMeta]) -> bytes:
    return json.dumps({"tensors": [[m.name, m.dtype, list(m.shape)] for m in metas]}).encode()


def encode_end(num_buckets: int) -> bytes:
    return json.dumps({"end": num_buckets}).encode()


def decode_bucket(raw: bytes) -> list[TensorMeta] | None:
    """The bucket's metadata, or None at the end of a version."""
    obj = json.loads(raw)
    if "end" in obj:
        return None
    return [TensorMeta(n, d, tuple(s)) for n, d, s in obj["tensors"]]


def pack_bucket(tensors: list[Tensor]) -> Tensor:
    """[sum of nbytes] uint8: the tensors' bytes back to back (any dtype, made contiguous)."""
    return torch.cat([t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors])


def unpack_bucket(flat: Tensor, metas: list[TensorMeta]) -> list[tuple[str, Tensor]]:
    """Inverse of `pack_bucket`: tensors on `flat`'s memory with each tensor's dtype and shape.

    Each is set on the storage directly rather than made a view, so it refers to no other tensor (a view
    keeps its base alive; `load_from_region` must be able to move a tensor off the memory entirely)."""
    out, offset = [], 0
    storage, start = flat.untyped_storage(), flat.storage_offset()
    for m in metas:
        dtype = getattr(torch, m.dtype)
        if (start + offset) % 8:  # must start at a multiple of its element size; copy the rare misaligned one
            t = flat[offset: offset + m.nbytes].clone().view(dtype).view(m.shape)
        else:
            # torch accepts set_ without a stride (contiguous); its stubs do not
            t = torch.empty(0, dtype=dtype).set_(storage, (start + offset) // dtype.itemsize, m.shape)  # type: ignore[call-overload]
        out.append((m.name, t))
        offset += m.nbytes
    return out


def worker_init_info(spec: TransferSpec, rank_offset: int, nccl_unique_id: bytes | None = None) -> dict[str, Any]:
    """The `init_weight_transfer_engine` payload for one engine whose workers start at rank_offset."""
    if spec.backend in CPU_BACKENDS:
        return dict(master_address=spec.host, master_port=spec.port, rank_offset=rank_offset,
                    world_size=spec.world_size, timeout_s=spec.timeout_s, secret=spec.secret,
                    transport=spec.backend)
    if spec.backend == NCCL_BACKEND:
        if nccl_unique_id is None:
            raise WeightSyncError("the nccl backend needs the sender's unique id from the control store")
        return dict(nccl_unique_id_b64=base64.b64encode(nccl_unique_id).decode(), rank_offset=rank_offset,
                    world_size=spec.world_size, packed=False)
    return dict(packed=False)


def worker_update_info(metas: list[TensorMeta], ipc_handles: list[dict[str, tuple]] | None = None,
                       region: dict[str, Any] | None = None, *, version: int = 0, index: int = 0) -> dict[str, Any]:
    """The `update_weights` payload of one bucket (`region`: the shared-memory file that holds it)."""
    info: dict[str, Any] = dict(names=[m.name for m in metas], dtype_names=[m.dtype for m in metas],
                                shapes=[list(m.shape) for m in metas])
    if ipc_handles is not None:
        info["ipc_handles"] = ipc_handles
    if region is not None:
        info.update(region_path=region["path"], region_size=region["size"], version=version, index=index)
    return info
