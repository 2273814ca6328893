"""Versioned weight sync from the learner to every vLLM worker of every engine, owned by `WeightSync`.

Where to read what, in the order a weight travels:

    owner.py      WeightSync (controller): forms the group once, pushes a version, proves what engines hold
    backend.py    which backend, chosen once for both sides: gloo, shm (CPU); nccl, ipc (GPU)
    spec.py       what both sides agree on: TransferSpec, the control store's keys, WeightSyncError
    send.py       the weight push, learner side: WeightSender streams buckets as the gather produces them
    wire.py       bucket format: metadata JSON, bytes back to back, vLLM's payloads
    stores.py     the control store (TCPStore on rank 0's node), gloo groups, bounded waits
    shm.py        the sender's shared-memory slots (shm backend)
    receive.py    the weight receive, engine side: what each vLLM worker does with a bucket
    checksums.py  what the engines must report after loading what was sent
    vllm_side.py  everything that reaches into vLLM (the plugin, our engine's vLLM face, patches), fenced

Every wait has a deadline: store waits and gloo collectives by their own timeouts, NCCL init and broadcasts
by polling on a thread / a CUDA event (NCCL itself has none), the controller's wait on all sides by
`cluster.calls.get_all`. Store keys carry a per-run secret, so a stray client cannot feed an engine a bucket.

Every name the rest of the project uses is importable from here, and vLLM's entry point
`actors.weight_sync:register_vllm_plugin` (setup.cfg) is this package's. Importing it imports no vLLM.
"""

from actors.weight_sync.backend import choose_backend
from actors.weight_sync.checksums import (
    VOCAB_PADDING,
    ChecksumStream,
    compare_checksums,
    digest,
    expected_vllm_checksums,
)
from actors.weight_sync.owner import CONNECT_MARGIN_S, Receivers, Senders, WeightSync, push_deadline_s
from actors.weight_sync.receive import CpuReceiver, load_from_region
from actors.weight_sync.send import (
    ABORT_DRAIN_S,
    POLL_S,
    WeightSender,
    abort_nccl,
    ipc_handles,
    iter_module_tensors,
    nccl_communicator,
    wait_cuda,
)
from actors.weight_sync.shm import (
    ACK_POLL_S,
    LIVENESS_EVERY_S,
    SHM_DIR,
    SHM_PREFIX,
    SHM_SLOTS,
    SharedMemorySlots,
    create_region,
    map_region,
    shm_free_bytes,
    shm_prefix,
)
from actors.weight_sync.spec import (
    ACK_KEY,
    BUCKET_KEY,
    CPU_BACKENDS,
    GLOO_BACKEND,
    IPC_BACKEND,
    IPC_KEY,
    NCCL_BACKEND,
    NCCL_ID_KEY,
    PID_KEY,
    SHM_BACKEND,
    SHM_KEY,
    Backend,
    TransferSpec,
    WeightSyncError,
)
from actors.weight_sync.stores import bounded, control_store, engine_scope, make_gloo_group
from actors.weight_sync.vllm_side import (
    CPU_LINEAR_ENV,
    RELOAD_LOGGER,
    RELOAD_MISSING,
    loads_in_place,
    quiet_expected_reload_warnings,
    register_vllm_plugin,
    retie_lm_head,
    torch_linear,
    use_torch_linear,
)
from actors.weight_sync.wire import (
    TensorMeta,
    decode_bucket,
    encode_bucket,
    encode_end,
    iter_buckets,
    pack_bucket,
    plan_buckets,
    unpack_bucket,
    worker_init_info,
    worker_update_info,
)

__all__ = [
    "ABORT_DRAIN_S", "ACK_KEY", "ACK_POLL_S", "BUCKET_KEY", "CONNECT_MARGIN_S", "CPU_BACKENDS", "CPU_LINEAR_ENV",
    "GLOO_BACKEND", "IPC_BACKEND", "IPC_KEY", "LIVENESS_EVERY_S", "NCCL_BACKEND", "NCCL_ID_KEY", "PID_KEY",
    "POLL_S", "RELOAD_LOGGER", "RELOAD_MISSING", "SHM_BACKEND", "SHM_DIR", "SHM_KEY", "SHM_PREFIX", "SHM_SLOTS",
    "VOCAB_PADDING", "Backend", "ChecksumStream", "CpuReceiver", "Receivers", "Senders", "SharedMemorySlots",
    "TensorMeta", "TransferSpec", "WeightSender", "WeightSync", "WeightSyncError", "abort_nccl", "bounded",
    "choose_backend", "compare_checksums", "control_store", "create_region", "decode_bucket", "digest",
    "encode_bucket", "encode_end", "engine_scope", "expected_vllm_checksums", "ipc_handles", "iter_buckets",
    "iter_module_tensors", "load_from_region", "loads_in_place", "make_gloo_group", "map_region",
    "nccl_communicator", "pack_bucket", "plan_buckets", "push_deadline_s", "quiet_expected_reload_warnings",
    "register_vllm_plugin", "retie_lm_head", "shm_free_bytes", "shm_prefix", "torch_linear", "unpack_bucket",
    "use_torch_linear", "wait_cuda", "worker_init_info", "worker_update_info",
]
