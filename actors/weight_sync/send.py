"""The weight push: learner side. `WeightSender` sends one version to every engine.

The path a weight takes from the learner, for one version (`WeightSender.send`):

    learner ranks: TP gather (+ PP collect) ──► learner rank 0 (ipc: rank e) holds full HF-named tensors,
        as a stream (`LearnerWorker.hf_state_dict_iter`), never the whole model at once
    ──► `iter_buckets`: a bucket as soon as it is full (`rollout.weight_sync_bucket_bytes`)
    ──► control store "bucket/<v>/<k>": the bucket's names, dtypes, shapes (`encode_bucket`)
    ──► the bytes, by backend (`WeightSender._transfer`):
            gloo  one broadcast of the packed bucket over the gloo group
            nccl  one broadcast per tensor (vLLM's PyNccl communicator), waited for with a deadline
            shm   written once into a /dev/shm slot, its name under "shm/<v>/<k>" (`SharedMemorySlots`)
            ipc   CUDA IPC handles under "ipc/<v>/<k>", held until engine e acknowledges "ack/<v>/<k>/<e>"
    ──► control store "bucket/<v>/<K>": the end of version v; with checksums, the sha256 of every
        tensor as sent (`ChecksumStream`), for the owner to compare with what the engines report.

The engines' half is `actors.weight_sync.receive`; the owner that runs both is `actors.weight_sync.owner`.

A push that fails or misses its deadline (an engine died mid-broadcast) ends the group on rank 0 before
anything else runs there (`WeightSender.tear_down`): the NCCL communicator is aborted, so the broadcast
the dead engine never joined leaves rank 0's stream, and the sender refuses further use. The controller
then replaces the engines and forms a new group, new communicator included (`WeightSync.reload`, which
closes the old sender first): at most one communicator is alive per run, however often engines fail.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from actors.weight_sync.checksums import ChecksumStream
from actors.weight_sync.shm import SharedMemorySlots, shm_prefix
from actors.weight_sync.spec import (
    ACK_KEY,
    BUCKET_KEY,
    GLOO_BACKEND,
    IPC_KEY,
    NCCL_BACKEND,
    NCCL_ID_KEY,
    SHM_BACKEND,
    SHM_KEY,
    TransferSpec,
    WeightSyncError,
)
from actors.weight_sync.stores import bounded, control_store, engine_scope, make_gloo_group
from actors.weight_sync.vllm_side import nccl_unique_id, pynccl_communicator
from actors.weight_sync.wire import TensorMeta, encode_bucket, encode_end, iter_buckets, pack_bucket

log = logging.getLogger(__name__)

POLL_S = 0.001
"""Polling interval of the waits that have no blocking form with a deadline (CUDA events, threads)."""


class WeightSender:
    """Rank 0 of the transfer group, in learner rank 0's process (where the TP/PP gather lands); under ipc
    one per sending learner rank (`TransferSpec.sender_ranks`), learner rank e serving engine e.

    The constructor of learner rank 0's sender opens the control store on (spec.host, spec.port) (the
    others connect to it) and joins the group, so it blocks until every receiver joined (raises after
    spec.timeout_s if one never does).
    """

    def __init__(self, spec: TransferSpec, rank: int = 0):
        if rank not in spec.sender_ranks:
            raise ValueError(f"learner rank {rank} does not send over {spec.backend} (senders: {spec.sender_ranks})")
        self.spec, self.engine = spec, rank
        self.store = engine_scope(control_store(spec, is_master=rank == 0), spec, rank)
        self.group: Any = None
        self.shm: SharedMemorySlots | None = None
        if spec.backend == GLOO_BACKEND:
            self.group = make_gloo_group(spec.host, self.store, 0, spec.world_size, spec.timeout_s)
        elif spec.backend == SHM_BACKEND:
            self.shm = SharedMemorySlots(self.store, shm_prefix(spec.secret), range(1, spec.world_size),
                                         spec.timeout_s)
        elif spec.backend == NCCL_BACKEND:
            self.group = nccl_communicator(self.store, spec)
        else:
            self.gpu_uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        self.torn_down = ""
        """Why the group was torn down (a failed push, `close`); empty while it may be used."""

    def send(self, named_tensors: Iterable[tuple[str, Tensor]], *, bucket_bytes: int, version: int,
             checksums: bool = False) -> dict[str, Any]:
        """Stream `named_tensors` to every engine as `version`, one bucket as soon as it is full.

        The engines' `receive_weights(version)` must run concurrently (the controller starts both).
        Returns stats, and with `checksums` the sha256 each engine should report per parameter.
        """
        if self.torn_down:
            raise WeightSyncError(f"learner rank 0: the transfer group was torn down ({self.torn_down}); it must be "
                                  f"formed anew (WeightSync.reload) before version {version} can be sent")
        start = time.perf_counter()
        stream = ChecksumStream() if checksums else None
        sent, count, index = 0, 0, 0
        try:
            for index, bucket in enumerate(iter_buckets(named_tensors, bucket_bytes)):
                metas = [TensorMeta.of(name, t) for name, t in bucket]
                self.store.set(BUCKET_KEY.format(version=version, index=index), encode_bucket(metas))
                self._transfer([t for _, t in bucket], metas, version, index)
                if stream is not None:
                    for name, t in bucket:
                        stream.add(name, t)
                sent += sum(m.nbytes for m in metas)
                count += len(metas)
            buckets = index + 1 if count else 0
            self.store.set(BUCKET_KEY.format(version=version, index=buckets), encode_end(buckets))
            if self.shm is not None:
                self.shm.drain(version)
        except (RuntimeError, OSError, WeightSyncError) as e:
            # Before anything else touches the stream: a broadcast a dead receiver never joins holds it.
            self.tear_down(f"sending version {version} failed")
            raise WeightSyncError(f"learner rank 0: sending version {version} failed after "
                                  f"{time.perf_counter() - start:.1f}s at bucket {index} "
                                  f"(timeout {self.spec.timeout_s}s): {e}") from e
        return {"bytes": sent, "seconds": time.perf_counter() - start, "buckets": buckets, "tensors": count,
                "checksums": stream.checksums if stream is not None else {}}

    def close(self) -> None:
        """Free what the transfer holds (the NCCL communicator, shared-memory files); idempotent."""
        self.tear_down("the sender was closed")

    def tear_down(self, why: str) -> None:
        """Release the group for good, so that nothing waits on it and nothing reuses it: an NCCL communicator
        is aborted (`abort_nccl`: the broadcast a dead engine never joined leaves rank 0's stream), the
        shared-memory files are unlinked. A later `send` refuses; `WeightSync.reload` forms a new group."""
        if self.torn_down:
            return
        self.torn_down = why
        group, self.group = self.group, None
        if group is not None and self.spec.backend == NCCL_BACKEND:
            abort_nccl(group, self.spec.timeout_s)
        if self.shm is not None:
            self.shm.close()  # nothing left in /dev/shm

    def _transfer(self, tensors: list[Tensor], metas: list[TensorMeta], version: int, index: int) -> None:
        spec = self.spec
        if spec.backend == GLOO_BACKEND:
            self.group.broadcast(pack_bucket(tensors), 0).wait()
        elif spec.backend == NCCL_BACKEND:
            stream = torch.cuda.current_stream()
            for t in tensors:  # one broadcast per tensor, as vLLM's unpacked NCCL consumer expects
                self.group.broadcast(t.contiguous(), src=0, stream=stream)
            wait_cuda(spec.timeout_s, f"NCCL broadcast of bucket {index}")
        elif spec.backend == SHM_BACKEND:
            assert self.shm is not None, "the shm backend's sender has its slots"
            region = self.shm.write(tensors, version, index)
            self.store.set(SHM_KEY.format(version=version, index=index), json.dumps(region).encode())
        else:
            keep = [t.detach().contiguous() for t in tensors]  # alive until the engine loaded them
            self.store.set(IPC_KEY.format(version=version, index=index), pickle.dumps(ipc_handles(keep, self.gpu_uuid)))
            self.store.wait([ACK_KEY.format(version=version, index=index, receiver=self.engine)],
                            timedelta(seconds=spec.timeout_s))
            del keep


def ipc_handles(tensors: list[Tensor], gpu_uuid: str, reduce: Callable[[Tensor], tuple] | None = None
                ) -> list[dict[str, tuple]]:
    """Per tensor {GPU uuid: the arguments of torch's `rebuild_cuda_tensor`}, as vLLM's IPC receiver reads
    them (`IPCWeightTransferEngine.receive_weights`: it looks up its own GPU's uuid, sets argument 6 to its
    device index and rebuilds). The arguments hold classes (tensor, storage) and a `torch.dtype`. The caller
    keeps `tensors` alive until the engine acknowledged; `reduce` stands in for torch's `reduce_tensor`."""
    if reduce is None:
        from torch.multiprocessing.reductions import reduce_tensor

        reduce = reduce_tensor
    return [{gpu_uuid: reduce(t)[1]} for t in tensors]


def iter_module_tensors(module: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """HF-named full tensors of a Hugging Face model as its checkpoint holds them (a tied lm_head is not
    repeated): exactly what the learner sends after its gather."""
    tied = bool(getattr(getattr(module, "config", None), "tie_word_embeddings", False))
    for name, tensor in module.state_dict().items():
        if not (tied and name == "lm_head.weight"):
            yield name, tensor


def nccl_communicator(store: Any, spec: TransferSpec) -> Any:
    """Rank 0's vLLM `PyNcclCommunicator` of the transfer group, on this process's GPU: an `ncclUniqueId`
    minted here and published in the control store (the engines join with it), init bounded by
    spec.timeout_s. Blocks until every receiver joined."""
    unique_id = nccl_unique_id()
    store.set(NCCL_ID_KEY, unique_id)
    device = torch.cuda.current_device()
    return bounded(lambda: pynccl_communicator(unique_id, world_size=spec.world_size, device=device),
                   spec.timeout_s, "NCCL init of the weight-transfer group")


ABORT_DRAIN_S = 30.0
"""How long rank 0's stream may take to empty once its communicator is aborted."""


def abort_nccl(communicator: Any, timeout_s: float) -> None:
    """Abort an NCCL communicator with work pending on it, and check that the stream is free again.

    NCCL has no timeout: a broadcast whose receiver died stays on rank 0's stream, and every later CUDA
    call of the learner queues behind it. vLLM's `PyNcclCommunicator.destroy` (0.32) calls `ncclCommAbort`,
    which ends the communicator's pending operations and frees it, on a daemon thread joined for at most
    5 s (it can block on CUDA graphs that captured the communicator; we capture none), so this never
    hangs. Nothing here may use the communicator afterwards. The stream is then waited for, at most
    min(timeout_s, ABORT_DRAIN_S): a stream still held is logged, since every later verb would hang on it."""
    communicator.destroy()
    try:
        wait_cuda(min(timeout_s, ABORT_DRAIN_S), "rank 0's stream after ncclCommAbort")
    except WeightSyncError as e:
        log.error("weight sync: %s; this learner process cannot use its GPU again, restart the run", e)


def wait_cuda(timeout_s: float, what: str) -> None:
    """Wait for the work queued on the current CUDA stream, at most timeout_s (NCCL has no timeout)."""
    event = torch.cuda.Event()
    event.record()
    deadline = time.monotonic() + timeout_s
    while not event.query():
        if time.monotonic() > deadline:
            raise WeightSyncError(f"{what} did not complete within {timeout_s:.0f}s (a receiver is gone?)")
        time.sleep(POLL_S)


