"""Versioned weight sync from learner rank 0 to every vLLM worker of every engine, owned by `WeightSync`.

    WeightSync (controller) ── connect() once: rank 0's node address + a port picked there, a per-run secret
        │                       learner rank 0: WeightSender ── control TCPStore (host, port), the group
        │                       engine e, worker w: joins as rank 1 + sum(tp of engines < e) + w
        └─ push(version): rank 0 streams buckets as the TP/PP gather produces them
              store "bucket/<v>/<k>"  names, dtypes, shapes of bucket k   ──► engine: update_weights(bucket k)
              group                   the bucket's bytes (gloo, nccl) or   ──► model.load_weights
                                      CUDA IPC handles (ipc) or
              /dev/shm region         the bytes, written once (shm)        ──► model.load_weights on views
              store "bucket/<v>/<K>"  end of version v (K buckets)        ──► finish_weight_update(v)
           then every engine must report v; every `checksum_every` versions its checksums must equal
           the ones rank 0 computed from the bytes it sent.

The backend is chosen once for both sides by `choose_backend` (pure): on CPU shared memory when every
engine runs on learner rank 0's node, gloo otherwise; CUDA IPC when every engine is colocated (engine e on
learner rank e's GPU; NCCL refuses two ranks on one device); NCCL otherwise. Under IPC every learner rank
e < number of engines is the sender of engine e (`TransferSpec.sender_ranks`): it gets the full tensors
from the gather and hands them to the engine on its own GPU, with keys of its own in the control store
(`engine_scope`), so no NCCL group is formed at all. The learner never holds more than one bucket (shm:
two, the one the engines load and the one it writes): nothing gathers the whole model before the first
send.

We use vLLM's RL interface (`init_weight_transfer_engine`, `start_weight_update` -> `update_weights`
(one call per bucket) -> `finish_weight_update(version)`), not its internals:
- gloo (CPU): no built-in engine fits, so `GlooWeightTransferEngine` is registered through
  `WeightTransferEngineFactory.register_engine`; vLLM's workers are spawned processes, so the
  registration runs there through the `vllm.general_plugins` entry point `register_vllm_plugin`
  (setup.cfg). Its group is a `ProcessGroupGloo` on a `PrefixStore` of the control store; each side
  binds the address it reaches the other by, and `timeout_s` bounds every collective.
- shm (CPU, same node): the same engine class, registered under a second name. Rank 0 writes each bucket
  once into one of SHM_SLOTS files in /dev/shm (mode 0600, named after a digest of the run's secret) and
  publishes its name in the control store; every worker maps the file once and hands `load_weights`
  tensors on it, no socket and no copy in between, then acknowledges (the ipc protocol's ACK_KEY). Rank 0
  writes the next bucket into the other slot meanwhile, reuses a slot once every worker acknowledged its
  bucket, and unlinks a file as soon as every worker has mapped it (a crash after that leaves nothing in
  /dev/shm; on a failure and at shutdown rank 0 unlinks what is left). It stops waiting as soon as a
  worker's process is gone (each publishes its pid). vLLM's layerwise reload keeps the tensors of a
  layer it has not completed; before acknowledging, a worker moves any it still holds off the file
  (`load_from_region`).
  Measured at 110M parameters on 2 CPU cores (README, Performance): the gloo path spent its time about
  equally in packing, the socket and vLLM's `load_weights` (its layerwise reload repacks every linear
  layer for oneDNN: about half the engine's share); shm removes the socket and the packing copy and
  overlaps rank 0's writing with the engines' loading: 0.67 s against gloo's 1.10 s per sync, 0.14x and
  0.09x of a memory copy of the same bytes. vLLM's reload is most of what remains.
- In place (CPU, `rollout.cpu_linear: torch`; the default is `onednn`): the engines' linear layers run
  `torch_linear` on their parameters instead of oneDNN kernels on repacked copies (`use_torch_linear`,
  applied by the plugin in every vLLM process), so `load_weights` copies straight into what the kernels
  read and the layerwise reload is skipped (`loads_in_place`): 0.23 s per sync at 110M over shm, 0.34x
  of a memory copy; what is left is two copies of every byte (into /dev/shm, then into the parameters)
  sharing two cores' memory bandwidth. The price: torch's CPU GEMM is not batch-invariant (oneDNN's is),
  so an engine's logprobs move in their last bits with its batching. With `cpu_linear: onednn` the
  layerwise reload above runs.
- nccl: vLLM's built-in engine, joined by an `ncclUniqueId` that rank 0 mints and publishes in the
  control store (vLLM's other rendezvous, a TCPStore of its own, would listen on every interface).
- ipc: vLLM's built-in engine; learner rank e publishes each bucket's IPC handles for engine e and waits
  for its acknowledgement before it lets the bucket go (torch keeps a shared CUDA block alive while the
  receiver holds it). The handles hold classes and `torch.dtype`, which vLLM's msgpack encoder (between
  `AsyncLLM.update_weights` and the engine core) refuses unless VLLM_ALLOW_INSECURE_SERIALIZATION=1 is
  set in the engine's processes before it starts (`actors.rollout.RolloutWorker` sets it, for ipc only).

Every wait has a deadline: store waits and gloo collectives by their own timeouts, NCCL init and
broadcasts by polling on a thread / a CUDA event (NCCL itself has none), the controller's wait on all
sides by `cluster.calls.get_all`. Store keys carry a per-run secret, so a stray client cannot feed
an engine a bucket.

A push that fails or misses its deadline (an engine died mid-broadcast) ends the group on rank 0 before
anything else runs there (`WeightSender.tear_down`): the NCCL communicator is aborted, so the broadcast
the dead engine never joined leaves rank 0's stream, and the sender refuses further use. The controller
then replaces the engines and forms a new group, new communicator included (`WeightSync.reload`, which
closes the old sender first): at most one communicator is alive per run, however often engines fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from trainer.config import RolloutConfig

if TYPE_CHECKING:
    from actors.engine_group import EngineGroup
    from actors.learner_group import LearnerGroup

log = logging.getLogger(__name__)

Backend = Literal["gloo", "shm", "nccl", "ipc"]
GLOO_BACKEND: Backend = "gloo"
"""Name our CPU engine is registered under in vLLM's weight-transfer factories."""
SHM_BACKEND: Backend = "shm"
"""Second name of the same CPU engine: buckets through shared memory on learner rank 0's node."""
CPU_BACKENDS: tuple[Backend, ...] = (GLOO_BACKEND, SHM_BACKEND)
"""Served by one engine class, so a CPU engine started for either joins a group of either."""
NCCL_BACKEND: Backend = "nccl"
IPC_BACKEND: Backend = "ipc"
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
SHM_DIR = "/dev/shm"
SHM_PREFIX = "grpo-ray-weights-"
SHM_SLOTS = 2
"""Shared-memory buckets in flight: rank 0 writes one while the engines load the other."""
ACK_POLL_S = 0.002
"""How often rank 0 looks for the acknowledgements of a shared-memory bucket (a store round trip)."""
LIVENESS_EVERY_S = 0.2
"""How often, while it waits, rank 0 checks that the receiving workers still run (a dead one never acks)."""
CPU_LINEAR_ENV = "GRPO_RAY_CPU_LINEAR"
"""Set by a CPU engine's actor for the processes vLLM spawns from it (`rollout.cpu_linear`): "torch" makes
the engine's linear layers run `torch_linear` on their parameters (`register_vllm_plugin`), "onednn" keeps
vLLM's own choice, weights repacked for oneDNN (also what a vLLM process started without it gets)."""
NCCL_ID_KEY = "nccl_unique_id"
POLL_S = 0.001
"""Polling interval of the waits that have no blocking form with a deadline (CUDA events, threads)."""


class WeightSyncError(RuntimeError):
    """A weight transfer failed or did not finish within its timeout."""


# --- the backend, chosen once for both sides (pure) ----------------------------------------------


def choose_backend(*, use_gpu: bool, engines_colocated: Sequence[bool],
                   engines_on_sender_node: Sequence[bool], shm_free_bytes: int | None = None,
                   bucket_bytes: int = 0) -> Backend:
    """The transfer backend for a run: `engines_colocated[e]` says engine e shares learner rank e's GPU,
    `engines_on_sender_node[e]` that it runs on learner rank 0's node (as Ray's node ids say, never
    guessed); `shm_free_bytes`: free space in /dev/shm on rank 0's node (None: not measured).

    CPU: shm when every engine is on rank 0's node and /dev/shm has room for twice its SHM_SLOTS buckets
    of `bucket_bytes` (a container's default 64 MB does not hold two 64 MiB buckets), else gloo (one
    group must reach every engine, and only gloo reaches another node). GPU: ipc when every engine is
    colocated (each learner rank e serves engine e on its own GPU; NCCL refuses two ranks on one device);
    nccl when none is. A mix has no GPU backend that reaches every engine.
    """
    if not engines_colocated or len(engines_colocated) != len(engines_on_sender_node):
        raise ValueError(f"weight sync needs at least one engine and one fact per engine "
                         f"({len(engines_colocated)} GPU, {len(engines_on_sender_node)} node)")
    if not use_gpu:
        if not all(engines_on_sender_node):
            return GLOO_BACKEND
        if shm_free_bytes is not None and shm_free_bytes < 2 * SHM_SLOTS * bucket_bytes:
            log.warning("weight sync: gloo, not shared memory: %s has %.0f MiB free on learner rank 0's node, "
                        "less than twice the %d buckets of %.0f MiB it would hold", SHM_DIR, shm_free_bytes / 2**20,
                        SHM_SLOTS, bucket_bytes / 2**20)
            return GLOO_BACKEND
        return SHM_BACKEND
    if all(engines_colocated):
        return IPC_BACKEND
    if not any(engines_colocated):
        return NCCL_BACKEND
    shared = [e for e, s in enumerate(engines_colocated) if s]
    raise ValueError(
        f"engines {shared} share a learner rank's GPU and the others do not: CUDA IPC reaches only the "
        f"first kind and NCCL refuses two ranks on one GPU. Colocate every engine (cluster.colocate) or none.")


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


def engine_scope(store: Any, spec: TransferSpec, engine: int) -> Any:
    """The control store as one engine and its sender see it: under ipc each (learner rank e, engine e) pair
    streams its own buckets, so their keys live under "engine<e>/"; the other backends share one stream."""
    from torch.distributed import PrefixStore

    return PrefixStore(f"engine{engine}", store) if spec.backend == IPC_BACKEND else store


# --- wire format (pure; both sides compute the same) ---------------------------------------------


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


# --- checksums: what the engines must report after loading what we sent ---------------------------

# vLLM fuses these Hugging Face projections into one parameter (its `stacked_params_mapping`).
_STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
VOCAB_PADDING = 64
"""vLLM pads embedding and lm_head rows with zeros to a multiple of this (DEFAULT_VOCAB_PADDING_SIZE)."""
_VOCAB_PARAMS = ("model.embed_tokens.weight", "lm_head.weight")


def _bytes(tensor: Tensor) -> memoryview:
    array = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    return memoryview(array)  # type: ignore[arg-type]  # an ndarray is a buffer; numpy declares it only for Python >= 3.12


def digest(tensor: Tensor) -> str:
    """sha256 of a tensor's bytes, as vLLM's `compute_weight_checksums` computes it."""
    return hashlib.sha256(_bytes(tensor)).hexdigest()


class ChecksumStream:
    """Checksums a TP=1 vLLM engine should report after loading a stream of HF tensors (Llama/Qwen2).

    Fed tensor by tensor as they are sent: fused projections hash their parts in vLLM's order (the
    digest of `cat(parts, dim=0)` is the digest of the parts' bytes back to back), so only the parts
    of one fused parameter wait; vocabulary rows are zero-padded to a multiple of VOCAB_PADDING.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.checksums: dict[str, str] = {}
        self._parts: dict[str, dict[str, Tensor]] = {}

    def add(self, name: str, tensor: Tensor) -> None:
        parent, _, leaf = name.rpartition(".")
        module_path, _, proj = parent.rpartition(".")
        fused = next((f for f, parts in _STACKED.items() if proj in parts), None)
        if fused is None:
            h = hashlib.sha256(_bytes(tensor))
            if name in _VOCAB_PARAMS and tensor.shape[0] % VOCAB_PADDING:
                pad_rows = -tensor.shape[0] % VOCAB_PADDING
                h.update(bytes(pad_rows * tensor[0].numel() * tensor.element_size()))
            self.checksums[self.prefix + name] = h.hexdigest()
            return
        target = f"{module_path}.{fused}.{leaf}"
        parts = self._parts.setdefault(target, {})
        parts[proj] = tensor.detach().cpu()
        if len(parts) == len(_STACKED[fused]):
            h = hashlib.sha256()
            for p in _STACKED[fused]:
                h.update(_bytes(parts[p]))
            self.checksums[self.prefix + target] = h.hexdigest()
            del self._parts[target]


def expected_vllm_checksums(named_tensors: Iterable[tuple[str, Tensor]], *, prefix: str = "",
                            tie_word_embeddings: bool = False) -> dict[str, str]:
    """Checksums a TP=1 vLLM engine should report after loading these HF tensors (see ChecksumStream).
    With tied embeddings vLLM has no lm_head."""
    stream = ChecksumStream(prefix)
    for name, tensor in named_tensors:
        if not (tie_word_embeddings and name == "lm_head.weight"):
            stream.add(name, tensor)
    return stream.checksums


def compare_checksums(expected: dict[str, str], reported: dict[str, str], *, tp_size: int
                      ) -> tuple[int, list[str]]:
    """(number of parameters compared, names that differ) between the sender's checksums and one
    engine's (`dp0:pp0:pcp0:tp<k>:<name>` keys). With TP > 1 an engine holds shards of split
    parameters, so only replicated ones (norms) compare; names the sender did not send are skipped."""
    compared, differ = 0, []
    for key, value in sorted(reported.items()):
        name = key.split(":")[-1]
        if name not in expected or (tp_size > 1 and "norm" not in name):
            continue
        compared += 1
        if expected[name] != value:
            differ.append(key)
    return compared, differ


# --- process groups and stores --------------------------------------------------------------------


def make_gloo_group(local_address: str, store: Any, rank: int, world_size: int, timeout_s: float) -> Any:
    """A ProcessGroupGloo outside torch.distributed's default group, listening on `local_address`.

    Construction waits for every rank (a missing peer raises after timeout_s), and the same timeout
    bounds every collective, so a dead peer raises instead of hanging.
    """
    from torch.distributed import PrefixStore, ProcessGroupGloo

    options = ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # private, absent from torch's stubs
    options._timeout = timedelta(seconds=timeout_s)
    options._devices = [ProcessGroupGloo.create_device(hostname=local_address)]
    return ProcessGroupGloo(PrefixStore("gloo", store), rank, world_size, options)


def control_store(spec: TransferSpec, *, is_master: bool) -> Any:
    """The transfer's control store (the master listens only on spec.host), keys under the run's secret."""
    from torch.distributed import PrefixStore

    from cluster.network import tcp_store

    return PrefixStore(spec.secret, tcp_store(spec.host, spec.port, is_master=is_master, timeout_s=spec.timeout_s))


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking call that has no timeout of its own (NCCL init) and raise after timeout_s.

    The call keeps running on its daemon thread; the caller gets the error and the component name.
    """
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True, name=what)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WeightSyncError(f"{what} did not finish within {timeout_s:.0f}s")
    if failure:
        raise failure[0]
    return result[0]


def nccl_communicator(store: Any, spec: TransferSpec) -> Any:
    """Rank 0's vLLM `PyNcclCommunicator` of the transfer group, on this process's GPU: an `ncclUniqueId`
    minted here and published in the control store (the engines join with it), init bounded by
    spec.timeout_s. Blocks until every receiver joined."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

    unique_id = bytes(NCCLLibrary().ncclGetUniqueId().internal)
    store.set(NCCL_ID_KEY, unique_id)
    device = torch.cuda.current_device()
    return bounded(lambda: PyNcclCommunicator.from_unique_id_bytes(
        unique_id, rank=0, world_size=spec.world_size, device=device),
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


# --- shared memory (shm backend) -----------------------------------------------------------------


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
        self.regions = [None] * SHM_SLOTS
        self.pending = [[] for _ in range(SHM_SLOTS)]


def load_from_region(load_weights: Callable[[list[tuple[str, Tensor]]], Any], region: Tensor,
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


# --- the receiving side: vLLM worker-side payloads and the gloo engine ----------------------------


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
        memory, into `model.load_weights`; vLLM's layerwise reload re-processes each layer once its
        tensors are in."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo
        model: Any  # vLLM's model: its `load_weights` is not a declared attribute of nn.Module

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.group: Any = None
            self.store: Any = None
            self.transport: str = GLOO_BACKEND
            self.rank = 0
            self.in_place = False
            """This update copies into the existing parameters (`loads_in_place`) instead of vLLM's reload."""
            self.regions: dict[str, Tensor] = {}
            """shm: files mapped so far (the sender's SHM_SLOTS latest), least recently used first."""

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            from torch.distributed import PrefixStore

            from cluster.network import route_source_address, tcp_store

            pc = self.parallel_config
            rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
            self.shutdown()  # a group formed anew (an engine was replaced, or another transport)
            self.transport, self.rank = init_info.transport, rank
            self.store = PrefixStore(init_info.secret, tcp_store(
                init_info.master_address, init_info.master_port, is_master=False, timeout_s=init_info.timeout_s))
            if self.transport == SHM_BACKEND:
                self.store.set(PID_KEY.format(receiver=rank), str(os.getpid()).encode())
                return
            # Listen on the address this node reaches the sender by: on another node the sender's
            # address is not ours, and loopback would not be reachable from it.
            local = route_source_address(init_info.master_address)
            self.group = make_gloo_group(local, self.store, rank, init_info.world_size, init_info.timeout_s)

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
            if self.store is None:
                raise RuntimeError("CPU weight transfer not initialised: call init_weight_transfer_engine first")
            metas = [TensorMeta(n, d, tuple(s)) for n, d, s in
                     zip(update_info.names, update_info.dtype_names, update_info.shapes)]
            if self.transport == SHM_BACKEND:
                region = self._map(update_info.region_path, update_info.region_size)
                load_from_region(self.model.load_weights, region, metas)
                self.store.set(ACK_KEY.format(version=update_info.version, index=update_info.index,
                                              receiver=self.rank), b"1")
                return
            flat = torch.empty(sum(m.nbytes for m in metas), dtype=torch.uint8)
            self.group.broadcast(flat, 0).wait()
            self.model.load_weights(unpack_bucket(flat, metas))

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

        def shutdown(self) -> None:
            self.group, self.store, self.regions = None, None, {}

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


# --- the sending side: learner rank 0 --------------------------------------------------------------


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


# --- the owner: forms the group once, pushes versions, proves what the engines hold ---------------


CONNECT_MARGIN_S = 30.0
"""Extra time the controller gives the group to form beyond the transfer timeout (actor start-up)."""


def push_deadline_s(nbytes: int, *, bucket_timeout_s: float, min_bytes_per_s: float, checksums: bool) -> float:
    """The controller's deadline for one whole push of `nbytes`: every bucket has `bucket_timeout_s` of its own,
    and the push as a whole (the TP/PP gathers, every bucket, the engines' reload) gets that plus its bytes at
    a conservative bandwidth floor; a checksum step hashes every byte on both sides too, so twice the bytes.
    A 7B model in bf16 (15 GB) at a floor of 50 MB/s: 120 s + 300 s, 720 s with checksums."""
    passes = 2 if checksums else 1
    return bucket_timeout_s + passes * nbytes / min_bytes_per_s


class WeightSync:
    """Weight sync end to end, from the controller: form the group once, push a version, verify it.

    `learner_group` (actors.learner_group.LearnerGroup) hosts the sender on rank 0;
    `engine_group` (actors.engine_group.EngineGroup) the receivers. Checksums of every engine are compared
    with the sender's every `checksum_every` versions (0: never), since hashing costs a pass over the
    weights on both sides.
    """

    def __init__(self, engine_group: EngineGroup, learner_group: LearnerGroup, *, backend: Backend, timeout_s: float,
                 bucket_bytes: int, checksum_every: int = 1, push_bytes: int = 0,
                 min_bytes_per_s: float = RolloutConfig.weight_sync_min_bytes_per_s) -> None:
        """`timeout_s` bounds each bucket; a whole push gets `push_deadline_s` of `push_bytes` (the model's
        size in its dtype, as the builder estimates it; raised to what a push really sent once one has)."""
        self.engine_group, self.learner_group = engine_group, learner_group
        self.backend, self.timeout_s = backend, timeout_s
        self.bucket_bytes, self.checksum_every = bucket_bytes, checksum_every
        self.push_bytes, self.min_bytes_per_s = push_bytes, min_bytes_per_s
        self.spec: TransferSpec | None = None

    def connect(self) -> TransferSpec:
        """Form the transfer group: rank 0 and every engine worker join together (once per run)."""
        import secrets

        from cluster.calls import get_all

        self.engine_group.wait_until_up()  # the engines must be up before the group's timeout starts ticking
        host, port = self.learner_group.weight_sync_endpoint()
        self.spec = TransferSpec(host=host, port=port, world_size=self.engine_group.world_size,
                                 num_engines=len(self.engine_group.tp_sizes), backend=self.backend,
                                 timeout_s=self.timeout_s, secret=secrets.token_hex(16))
        learner_refs = self.learner_group.init_weight_sync_async(self.spec)
        engine_refs = self.engine_group.init_weight_sync_async(self.spec)
        get_all([*learner_refs, *engine_refs], what=f"forming the {self.backend} weight-transfer group at "
                f"{host}:{port}", names=self.learner_group.names + self.engine_group.names,
                timeout_s=self.timeout_s + CONNECT_MARGIN_S, error=WeightSyncError)
        return self.spec

    def reload(self) -> None:
        """After engines were replaced: form the transfer group anew (a new port, secret and sender) and
        send the current weights again as `expected_version` (none to send at version 0: every engine
        loaded those from disk); every engine must then hold it."""
        self.connect()
        if self.engine_group.expected_version > 0:
            self._send(self.engine_group.expected_version)

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's weights to every engine as `version`; every engine must then hold it, and
        on a checksum step hold exactly the bytes rank 0 sent.

        When the sync fails because an engine died, the error says so (not the sender's broken pipe);
        if replacements are allowed, every engine is restarted (the survivors hold half a version),
        given the previous version, and the push repeated."""
        if self.spec is None:
            raise WeightSyncError("push before connect: the transfer group was never formed")
        if version <= self.engine_group.expected_version:
            raise ValueError(f"weight versions must increase: {version} after {self.engine_group.expected_version}")
        try:
            return self._send(version)
        except WeightSyncError as e:
            dead = self.engine_group.dead_engines()
            if not dead:
                raise
            cause = "; ".join(str(f) for f in dead.values())
            if self.engine_group.start_engine is None:
                raise WeightSyncError(f"weight sync of version {version} failed because {cause} "
                                      f"(what the other side saw: {e})") from e
        self.engine_group.replace(dead, with_others=True)
        return self._send(version)

    def _send(self, version: int) -> dict[str, float]:
        from cluster.calls import get_all

        verify = bool(self.checksum_every) and version % self.checksum_every == 0
        deadline = push_deadline_s(self.push_bytes, bucket_timeout_s=self.timeout_s,
                                   min_bytes_per_s=self.min_bytes_per_s, checksums=verify)
        start = time.perf_counter()
        learner_refs = self.learner_group.push_weights_async(version, self.bucket_bytes, checksums=verify)
        engine_refs = self.engine_group.receive_weights_async(version)
        results = get_all([*learner_refs, *engine_refs], what=f"weight sync of version {version} "
                          f"({self.push_bytes / 1e9:.2f} GB, deadline {deadline:.0f}s)",
                          names=self.learner_group.names + self.engine_group.names,
                          timeout_s=deadline, error=WeightSyncError)
        stats = results[0]
        self.push_bytes = max(self.push_bytes, int(stats["bytes"]))  # the estimate, corrected by the real size
        self.engine_group.expected_version = version
        self.engine_group.check_versions()
        metrics = {"weight_sync_bytes": float(stats["bytes"]), "weight_sync_buckets": float(stats["buckets"]),
                   "weight_sync_s": time.perf_counter() - start}
        if verify:
            metrics["weight_sync_checksums_compared"] = float(self.verify(stats["checksums"]))
        return metrics

    def verify(self, expected: dict[str, str]) -> int:
        """Compare every engine's checksums with the sender's; returns how many parameters matched."""
        total = 0
        for held, tp in zip(self.engine_group.versions(with_checksums=True), self.engine_group.tp_sizes):
            compared, differ = compare_checksums(expected, held.checksums, tp_size=tp)
            if differ:
                raise WeightSyncError(f"engine {held.engine} holds version {held.policy_version} but "
                                      f"{len(differ)} of {compared} parameters differ from what learner rank 0 "
                                      f"sent, e.g. {differ[:3]}")
            if compared == 0:
                raise WeightSyncError(f"engine {held.engine} reported no checksum comparable with the sender's "
                                      f"({len(held.checksums)} reported, {len(expected)} sent)")
            total += compared
        return total
