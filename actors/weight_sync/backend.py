"""The transfer backend, chosen once for both sides by `choose_backend` (pure), and what each one does.

    CPU, every engine on learner rank 0's node, /dev/shm has room   ──► shm   (one file per bucket, mapped)
    CPU otherwise                                                   ──► gloo  (one group reaches every node)
    GPU, engine e on learner rank e's GPU, for every engine         ──► ipc   (CUDA IPC, rank e -> engine e)
    GPU, no engine on a learner rank's GPU                          ──► nccl  (rank 0 broadcasts)

NCCL refuses two ranks on one device, so colocated engines get CUDA IPC: every learner rank e < number of
engines is then the sender of engine e (`TransferSpec.sender_ranks`): it gets the full tensors from the
gather and hands them to the engine on its own GPU, with keys of its own in the control store
(`stores.engine_scope`), and no NCCL group is formed at all. Whatever the backend, the learner never holds
more than one bucket (shm: two, the one the engines load and the one it writes): nothing gathers the whole
model before the first send.

Every backend goes through vLLM's RL interface (`init_weight_transfer_engine`, `start_weight_update` ->
`update_weights` (one call per bucket) -> `finish_weight_update(version)`):
- gloo (CPU): no built-in engine fits, so ours is registered in every vLLM process by the plugin
  (`vllm_side`). Its group is a `ProcessGroupGloo` on a `PrefixStore` of the control store (`stores`); each
  side binds the address it reaches the other by, and `timeout_s` bounds every collective.
- shm (CPU, same node): the same engine class, registered under a second name; rank 0 writes each bucket
  once into a file in /dev/shm that every worker maps (`shm`, `receive.load_from_region`).
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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from actors.weight_sync.shm import SHM_DIR, SHM_SLOTS
from actors.weight_sync.spec import GLOO_BACKEND, IPC_BACKEND, NCCL_BACKEND, SHM_BACKEND, Backend

log = logging.getLogger(__name__)


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
