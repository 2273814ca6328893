"""What both sides of a weight sync agree on: the backend's name, the `TransferSpec` the owner decides once,
the keys of the control store through which the sender announces each bucket, and the error every side raises.

Pure: no vLLM, no process group; the learner, the engines and the controller all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["gloo", "shm", "nccl", "ipc"]
GLOO_BACKEND: Backend = "gloo"
"""Name our CPU engine is registered under in vLLM's weight-transfer factories."""
SHM_BACKEND: Backend = "shm"
"""Second name of the same CPU engine: buckets through shared memory on learner rank 0's node."""
CPU_BACKENDS: tuple[Backend, ...] = (GLOO_BACKEND, SHM_BACKEND)
"""Served by one engine class, so a CPU engine started for either joins a group of either."""
NCCL_BACKEND: Backend = "nccl"
IPC_BACKEND: Backend = "ipc"

# Keys of the control store (under the run's secret, see `TransferSpec.secret`).
BUCKET_KEY = "bucket/{version}/{index}"
"""Control-store key of one bucket's metadata (JSON), or of the end of a version."""
IPC_KEY = "ipc/{version}/{index}"
"""Control-store key of one bucket's pickled CUDA IPC handles (ipc backend only)."""
SHM_KEY = "shm/{version}/{index}"
"""Control-store key of the shared-memory file that holds bucket `index` (JSON: path, size; shm only)."""
ACK_KEY = "ack/{version}/{index}/{receiver}"
"""Set once bucket `index` is loaded and its memory no longer used, so the sender may free or reuse it;
the receiver is the engine (ipc: its actor acknowledges) or the transfer rank of one worker (shm)."""
PID_KEY = "pid/{receiver}"
"""Process id of a worker of the shm backend: rank 0 (same node) stops waiting for one that exited."""
NCCL_ID_KEY = "nccl_unique_id"
"""The `ncclUniqueId` rank 0 minted for the nccl backend; the engines join the group with it."""


class WeightSyncError(RuntimeError):
    """A weight transfer failed or did not finish within its timeout."""


@dataclass(frozen=True)
class TransferSpec:
    """Everything both sides must agree on, decided once by `WeightSync.connect`."""

    host: str
    """Address of learner rank 0's node, as Ray reports it there; the control store listens only on it."""
    port: int
    """Port picked on that node."""
    world_size: int
    """1 (the sender) + every vLLM worker of every engine."""
    num_engines: int
    backend: Backend
    timeout_s: float
    """Bound on every wait of one bucket (store waits, collectives, NCCL init and broadcasts, acknowledgements);
    the whole push has a deadline that grows with its bytes (`push_deadline_s`)."""
    secret: str
    """Prefix of every store key: only peers told it by the controller can read or write a bucket."""

    @property
    def sender_ranks(self) -> range:
        """Learner ranks that send: under ipc rank e serves engine e (on its GPU), otherwise rank 0 serves all."""
        return range(self.num_engines) if self.backend == IPC_BACKEND else range(1)
