"""Move a learner's device state to host memory and back (colocated runs), keeping every view valid.

    offload: each device storage --copy--> host buffer (pinned on CUDA, kept for the next round);
             storage resized to 0 bytes; torch.cuda.empty_cache() hands the memory back to the driver
    onload:  storage resized back --copy--> its bytes from the host buffer

Megatron keeps parameters and gradients as views into a few contiguous buffers (DDP's param and grad
buffers: `param.data`, `param.main_grad` and the buckets all view them), and its DistributedOptimizer
keeps the fp32 main params and the Adam moments as tensors of their own. Replacing tensors (`p.data =
p.data.cpu()`) would break those views, so this works on storages, as Megatron's own
`DistributedDataParallel.offload_grad_buffers` does: every tensor that views a storage stays the same
Python object and sees the restored bytes after onload. Storages are taken once however many tensors
view them (an fp32 model's main params are views of its parameters).

`discard` storages (gradient buffers: all zero between an optimizer step and the next backward) are freed
without a copy and come back zeroed. The same code runs on CPU, where "device" and host are both host
memory: the storages really are emptied and refilled, which is what the CPU tests check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from actors.learner_optim import inner_optimizers

if TYPE_CHECKING:
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.optimizer import MegatronOptimizer


@dataclass
class _Moved:
    storage: torch.UntypedStorage
    nbytes: int
    host: Tensor | None
    """uint8 [nbytes] copy of the bytes (None: discarded, zeroed on onload)."""


def storage_bytes(storage: torch.UntypedStorage) -> Tensor:
    """A uint8 tensor over the whole storage (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def unique_storages(tensors: Iterable[Tensor | None], device: torch.device) -> dict[int, torch.UntypedStorage]:
    """The non-empty storages on `device` behind `tensors`, keyed by data pointer (views share one)."""
    out: dict[int, torch.UntypedStorage] = {}
    for t in tensors:
        if t is None or t.device != device:
            continue
        s = t.untyped_storage()
        if s.nbytes() > 0:
            out.setdefault(s.data_ptr(), s)
    return out


class StorageOffloader:
    """Offloads the storages of given tensors on one device; `onload` restores exactly what was there."""

    def __init__(self, device: torch.device):
        self.device = device
        self.on_cuda = device.type == "cuda"
        self._moved: list[_Moved] = []
        self._host_pool: list[Tensor] = []
        """Host buffers of the previous round, reused when sizes match (pinning is slow)."""

    @property
    def active(self) -> bool:
        """Whether the state is on the host now (between offload and onload)."""
        return bool(self._moved)

    def offload(self, keep: Iterable[Tensor | None], discard: Iterable[Tensor | None] = ()) -> int:
        """Copy `keep`'s storages to host memory and free them and `discard`'s; bytes freed on the device."""
        if self.active:
            raise RuntimeError("offload called twice without onload in between")
        dropped = unique_storages(discard, self.device)
        kept = {p: s for p, s in unique_storages(keep, self.device).items() if p not in dropped}
        fixed = sum(not s.resizable() for s in [*kept.values(), *dropped.values()])
        if fixed:  # checked before anything is freed, so a refusal leaves the state intact
            raise RuntimeError(f"{fixed} storages cannot be resized (e.g. read by torch.load or from a "
                               "numpy array): clone those tensors before offloading")
        moved = []
        for i, s in enumerate(kept.values()):
            host = self._host_buffer(i, s.nbytes())
            host.copy_(storage_bytes(s), non_blocking=self.on_cuda)
            moved.append(_Moved(s, s.nbytes(), host))
        if self.on_cuda:
            torch.cuda.synchronize(self.device)  # the copies read the storages we are about to free
        moved += [_Moved(s, s.nbytes(), None) for s in dropped.values()]
        for m in moved:
            m.storage.resize_(0)
        self._moved = moved
        if self.on_cuda:
            torch.cuda.empty_cache()
        return sum(m.nbytes for m in moved)

    def onload(self) -> int:
        """Reallocate every freed storage and restore its bytes (discarded ones zeroed); bytes restored."""
        total = 0
        for m in self._moved:
            m.storage.resize_(m.nbytes)
            if m.host is None:
                storage_bytes(m.storage).zero_()
            else:
                storage_bytes(m.storage).copy_(m.host, non_blocking=self.on_cuda)
            total += m.nbytes
        if self.on_cuda:
            torch.cuda.synchronize(self.device)  # the host buffers are reused by the next offload
        self._host_pool = [m.host for m in self._moved if m.host is not None]
        self._moved = []
        return total

    def host_bytes(self) -> int:
        """Bytes of host memory the offloaded state occupies now."""
        return sum(m.nbytes for m in self._moved if m.host is not None)

    def _host_buffer(self, index: int, nbytes: int) -> Tensor:
        if index < len(self._host_pool) and self._host_pool[index].numel() == nbytes:
            return self._host_pool[index]
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.on_cuda)


def megatron_state(models: Iterable[torch.nn.Module], ddp: DistributedDataParallel | None,
                   optimizer: MegatronOptimizer | None) -> tuple[list[Tensor], list[Tensor]]:
    """(tensors whose bytes must survive an offload, gradient buffers that may be dropped) of a learner rank.

    Parameters of `models` (the policy's are views of DDP's param buffers; a colocated reference's on GPU
    already wait on the host, and only tensors on the offloader's device are moved), the
    DistributedOptimizer's fp32 main params and Adam state. Gradients are all zero between an optimizer step
    and the next backward, so DDP's grad buffers are freed without a copy."""
    keep: list[Tensor] = [p for m in models for p in m.parameters()]
    discard: list[Tensor] = []
    if ddp is not None:
        for buffer in ddp.buffers + ddp.expert_parallel_buffers:
            keep.append(buffer.param_data)
            discard.append(buffer.grad_data)
    if optimizer is not None:
        for o in (o.optimizer for o in inner_optimizers(optimizer)):
            keep += [p for g in o.param_groups for p in g["params"]]
            keep += [v for state in o.state.values() for v in state.values() if isinstance(v, Tensor)]
    return keep, discard


def memory_gib(use_gpu: bool) -> dict[str, float]:
    """GiB this process holds: allocated, reserved and peak-allocated CUDA memory since the last call (GPU),
    or its resident set (CPU)."""
    if use_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()  # the next call reports the next step's peak
        return {"allocated_gib": torch.cuda.memory_allocated() / 2**30,
                "reserved_gib": torch.cuda.memory_reserved() / 2**30, "peak_allocated_gib": peak}
    import psutil

    return {"host_rss_gib": psutil.Process().memory_info().rss / 2**30}
