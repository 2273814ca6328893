"""Shared memory of the shm backend (CPU, every engine on learner rank 0's node): the sender's slots.

Rank 0 writes each bucket once into one of SHM_SLOTS files in /dev/shm (mode 0600, named after a digest of
the run's secret) and publishes its name in the control store; every worker maps the file once and hands
`load_weights` tensors on it, no socket and no copy in between, then acknowledges (ACK_KEY). Rank 0 writes
the next bucket into the other slot meanwhile, reuses a slot once every worker acknowledged its bucket, and
unlinks a file as soon as every worker has mapped it (a crash after that leaves nothing in /dev/shm; on a
failure and at shutdown rank 0 unlinks what is left). It stops waiting as soon as a worker's process is
gone (each publishes its pid under PID_KEY). The workers' half is `actors.weight_sync.receive`.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from actors.weight_sync.spec import ACK_KEY, PID_KEY, WeightSyncError

SHM_DIR = "/dev/shm"
SHM_PREFIX = "grpo-ray-weights-"
SHM_SLOTS = 2
"""Shared-memory buckets in flight: rank 0 writes one while the engines load the other."""
ACK_POLL_S = 0.002
"""How often rank 0 looks for the acknowledgements of a shared-memory bucket (a store round trip)."""
LIVENESS_EVERY_S = 0.2
"""How often, while it waits, rank 0 checks that the receiving workers still run (a dead one never acks)."""


def shm_free_bytes() -> int:
    """Free bytes in SHM_DIR on this node (0 where it does not exist)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def shm_prefix(secret: str) -> str:
    """File-name prefix of a run's shared-memory buckets: a digest of the secret, never the secret itself
    (anyone may list /dev/shm)."""
    return SHM_PREFIX + hashlib.sha256(secret.encode()).hexdigest()[:16]


def map_region(path: str, nbytes: int) -> Tensor:
    """[nbytes] uint8 over the file, shared: writes are seen by every process that mapped it."""
    return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)


def create_region(path: str, nbytes: int) -> Tensor:
    """A new file of nbytes in shared memory, readable by this user only, mapped."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        # Reserve the pages now: a full /dev/shm then raises ENOSPC here instead of SIGBUS on a write.
        os.posix_fallocate(fd, 0, nbytes)
    except OSError:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return map_region(path, nbytes)


def _unlink(paths: set[str]) -> None:
    for path in list(paths):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        paths.discard(path)


class SharedMemorySlots:
    """Rank 0's shared memory: SHM_SLOTS mapped files used in turn, each reused once every receiver
    acknowledged the bucket it held, and unlinked once every receiver mapped it (they keep their mapping)."""

    def __init__(self, store: Any, prefix: str, receivers: Sequence[int], timeout_s: float) -> None:
        self.store, self.prefix, self.receivers, self.timeout_s = store, prefix, list(receivers), timeout_s
        self.regions: list[tuple[str, Tensor] | None] = [None] * SHM_SLOTS
        self.pending: list[list[str]] = [[] for _ in range(SHM_SLOTS)]
        """Acknowledgement keys of the bucket each slot holds, until every receiver set them."""
        self.linked: set[str] = set()
        """Files still visible in /dev/shm (created, not yet mapped by every receiver)."""
        self.created = 0
        self._finalizer = weakref.finalize(self, _unlink, self.linked)  # interpreter exit, garbage collection

    def write(self, tensors: list[Tensor], version: int, index: int) -> dict[str, Any]:
        """Copy the bucket's bytes back to back into a free slot; returns what the receivers map."""
        slot = index % SHM_SLOTS
        self.wait(slot, f"bucket {index - SHM_SLOTS} of version {version}")
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        region = self.regions[slot]
        if region is None or region[1].numel() < nbytes:
            self.regions[slot] = None  # drop the old mapping first: at most SHM_SLOTS buckets in memory
            path = f"{SHM_DIR}/{self.prefix}-{os.getpid()}-{self.created}"
            self.created += 1
            self.linked.add(path)
            region = (path, create_region(path, nbytes))
            self.regions[slot] = region
        path, buf = region
        offset = 0
        for t in tensors:
            size = t.numel() * t.element_size()
            buf[offset: offset + size].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
            offset += size
        self.pending[slot] = [ACK_KEY.format(version=version, index=index, receiver=r) for r in self.receivers]
        return {"path": path, "size": buf.numel()}

    def wait(self, slot: int, what: str) -> None:
        """Wait until every receiver acknowledged the bucket in `slot`: at most timeout_s, and not past the
        exit of a receiving worker (on this node, so its process can be looked at)."""
        keys = self.pending[slot]
        if not keys:
            return
        start = time.monotonic()
        checked = start
        while not self.store.check(keys):
            now = time.monotonic()
            if now - checked > LIVENESS_EVERY_S:
                checked = now
                gone = self._exited()
                if gone:
                    raise WeightSyncError(f"shared memory: transfer ranks {gone} exited before acknowledging {what}")
            if now - start > self.timeout_s:
                missing = [r for r, k in zip(self.receivers, keys) if not self.store.check([k])]
                raise WeightSyncError(f"shared memory: transfer ranks {missing} did not acknowledge {what} within "
                                      f"{self.timeout_s:.0f}s")
            time.sleep(ACK_POLL_S)
        self.pending[slot] = []
        region = self.regions[slot]
        if region is not None:
            _unlink({region[0]} & self.linked)  # every receiver has mapped it by now
            self.linked.discard(region[0])

    def _exited(self) -> list[int]:
        """Receivers whose worker process (as it published it) is gone or a zombie."""
        import psutil

        gone = []
        for r in self.receivers:
            key = PID_KEY.format(receiver=r)
            if not self.store.check([key]):
                continue
            try:
                if psutil.Process(int(self.store.get(key))).status() == psutil.STATUS_ZOMBIE:
                    gone.append(r)
            except psutil.NoSuchProcess:
                gone.append(r)
        return gone

    def drain(self, version: int) -> None:
        for slot in range(SHM_SLOTS):
            self.wait(slot, f"the last buckets of version {version}")

    def close(self) -> None:
        """Unlink what is still visible and drop the mappings (after a failure, and at shutdown)."""
        _unlink(self.linked)
