"""The weight receive: engine side. What an engine's workers do with each bucket of a version.

The path a weight takes into an engine, for one version:

    engine actor (`actors.rollout.RolloutWorker.receive_weights`): vLLM's `start_weight_update`; then, for
        each bucket the sender announces in the control store ("bucket/<v>/<k>"), vLLM's `update_weights`
        with its payload (`wire.worker_update_info`: names, dtypes, shapes; ipc: the CUDA IPC handles;
        shm: the file); `finish_weight_update(v)` once "bucket/<v>/<K>" ends the version
    ──► vLLM hands the payload to the transfer engine of each of the engine's workers (its processes):
            nccl, ipc  vLLM's built-in engines (ipc: the actor acknowledges "ack/<v>/<k>/<e>")
            gloo, shm  ours (`vllm_side.GlooWeightTransferEngine`), which calls `CpuReceiver.receive`:
                gloo   the bucket's bytes from rank 0's broadcast, unpacked onto the received buffer
                shm    views on the mapped /dev/shm file (`load_from_region`), then "ack/<v>/<k>/<rank>"
    ──► vLLM's `model.load_weights`, inside its layerwise reload unless the engine loads in place
    ──► the engine then reports v (`get_weight_version`) and, on request, its checksums.

Plain Python and torch: the vLLM classes that call this live in `actors.weight_sync.vllm_side`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from actors.weight_sync.shm import SHM_SLOTS, map_region
from actors.weight_sync.spec import ACK_KEY, GLOO_BACKEND, PID_KEY, SHM_BACKEND, WeightSyncError
from actors.weight_sync.stores import make_gloo_group
from actors.weight_sync.wire import TensorMeta, unpack_bucket

LoadWeights = Callable[[list[tuple[str, Tensor]]], Any]
"""vLLM's `model.load_weights`: HF-named tensors into the model's parameters."""


class CpuReceiver:
    """One vLLM worker's half of the CPU backends: joins the transfer as one rank, then loads each bucket
    it is handed, over gloo (a broadcast from rank 0) or from shared memory (a file on this node)."""

    def __init__(self) -> None:
        self.group: Any = None
        self.store: Any = None
        self.transport: str = GLOO_BACKEND
        self.rank = 0
        self.regions: dict[str, Tensor] = {}
        """shm: files mapped so far (the sender's SHM_SLOTS latest), least recently used first."""

    def join(self, *, master_address: str, master_port: int, secret: str, rank: int, world_size: int,
             timeout_s: float, transport: str) -> None:
        """Connect to the control store on (master_address, master_port) as transfer rank `rank`; gloo: join
        the group (blocks until every rank joined, at most timeout_s); shm: publish this process's pid."""
        from torch.distributed import PrefixStore

        from cluster.network import route_source_address, tcp_store

        self.leave()  # a group formed anew (an engine was replaced, or another transport)
        self.transport, self.rank = transport, rank
        self.store = PrefixStore(secret, tcp_store(master_address, master_port, is_master=False, timeout_s=timeout_s))
        if transport == SHM_BACKEND:
            self.store.set(PID_KEY.format(receiver=rank), str(os.getpid()).encode())
            return
        # Listen on the address this node reaches the sender by: on another node the sender's
        # address is not ours, and loopback would not be reachable from it.
        local = route_source_address(master_address)
        self.group = make_gloo_group(local, self.store, rank, world_size, timeout_s)

    def receive(self, load_weights: LoadWeights, metas: list[TensorMeta], *, region_path: str = "",
                region_size: int = 0, version: int = 0, index: int = 0) -> None:
        """Load bucket `index` of `version` (its tensors `metas`) with `load_weights`; shm: from `region_path`,
        then acknowledge it so rank 0 may reuse the file."""
        if self.store is None:
            raise RuntimeError("CPU weight transfer not initialised: call init_weight_transfer_engine first")
        if self.transport == SHM_BACKEND:
            region = self._map(region_path, region_size)
            load_from_region(load_weights, region, metas)
            self.store.set(ACK_KEY.format(version=version, index=index, receiver=self.rank), b"1")
            return
        flat = torch.empty(sum(m.nbytes for m in metas), dtype=torch.uint8)
        self.group.broadcast(flat, 0).wait()
        load_weights(unpack_bucket(flat, metas))

    def _map(self, path: str, size: int) -> Tensor:
        """The mapped file (mapped once: rank 0 unlinks it once every worker acknowledged a bucket in it)."""
        region = self.regions.pop(path, None)
        if region is None:
            try:
                region = map_region(path, size)
            except RuntimeError as e:
                raise WeightSyncError(f"transfer rank {self.rank}: cannot map the shared-memory bucket "
                                      f"{path} ({e})") from e
            while len(self.regions) >= SHM_SLOTS:  # rank 0 replaced the least recently used one
                self.regions.pop(next(iter(self.regions)))
        self.regions[path] = region
        return region

    def leave(self) -> None:
        """Drop the group, the store and the mappings (vLLM's `shutdown`, or before joining anew)."""
        self.group, self.store, self.regions = None, None, {}


def load_from_region(load_weights: LoadWeights, region: Tensor,
                     metas: list[TensorMeta]) -> None:
    """`load_weights` on views of the bucket at the start of `region`, and afterwards no use of the region
    left: vLLM's layerwise reload keeps the tensors of a layer until the layer is complete, which may be in
    the next bucket, so those it still holds move to a private copy before the sender may reuse the
    region. Raises if anything else still uses the region's memory."""
    storage = region.untyped_storage()
    before = torch._C._storage_Use_Count(storage._cdata)
    views = unpack_bucket(region[: sum(m.nbytes for m in metas)], metas)
    refs = [weakref.ref(t) for _, t in views]
    load_weights(views)
    del views
    held: Tensor | None = None
    for ref in refs:
        held = ref()
        if held is not None and held.untyped_storage().data_ptr() == storage.data_ptr():
            held.set_(held.clone())  # type: ignore[call-overload]  # set_(Tensor) is missing from the stubs; the holder's tensor object now owns a private copy
    held = None
    left = torch._C._storage_Use_Count(storage._cdata) - before
    if left > 0:
        raise WeightSyncError(f"shared memory: after load_weights, tensors derived from the bucket still use its "
                              f"region ({left} references); reusing it would change weights the engine has not "
                              f"processed yet")
