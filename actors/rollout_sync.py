"""The receiving half of weight sync on one rollout engine (the sending half and the wire format are in
actors/weight_sync/).

`join` enters the transfer group through vLLM's `init_weight_transfer_engine` (leaving the previous group
first); `receive(version)` runs vLLM's `start_weight_update`, then one `update_weights` per bucket as the
sender's control store announces it, then `finish_weight_update(str(version))`. Every wait is bounded by
the group's timeout, and a failure names the engine, the bucket and the version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from datetime import timedelta
from typing import TYPE_CHECKING

import torch.distributed as dist

from actors.weight_sync import (
    ACK_KEY,
    BUCKET_KEY,
    CPU_BACKENDS,
    IPC_BACKEND,
    IPC_KEY,
    NCCL_BACKEND,
    NCCL_ID_KEY,
    SHM_BACKEND,
    SHM_KEY,
    TransferSpec,
    WeightSyncError,
    control_store,
    decode_bucket,
    engine_scope,
    worker_init_info,
    worker_update_info,
)

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

RPC_MARGIN_S = 30.0
"""Extra time around a transfer's own timeout before the actor gives up waiting on vLLM."""


class WeightReceiver:
    """One engine's side of the transfer group: its control-store view and the group it joined."""

    def __init__(self, engine: AsyncLLM, *, engine_index: int, backend: str):
        self.engine, self.engine_index, self.backend = engine, engine_index, backend
        self.spec: TransferSpec | None = None
        self.store: dist.Store | None = None

    @property
    def joined(self) -> bool:
        return self.store is not None

    async def join(self, spec: TransferSpec, rank_offset: int) -> None:
        """Join the transfer group as ranks rank_offset .. rank_offset + TP - 1; blocks until all joined, at
        most spec.timeout_s."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        # One engine class serves both CPU backends (actors.weight_sync.register_vllm_plugin).
        if spec.backend != self.backend and not {spec.backend, self.backend} <= set(CPU_BACKENDS):
            raise WeightSyncError(f"engine {self.engine_index} was started for the {self.backend} transfer "
                                  f"backend, the group uses {spec.backend}")
        if self.spec is not None:  # a group formed anew (another engine was replaced): leave the old one first
            await self.leave(spec.timeout_s)
        self.spec = spec
        store = await asyncio.to_thread(control_store, spec, is_master=False)
        self.store = engine_scope(store, spec, self.engine_index)  # ipc: this engine's own sender's keys
        unique_id = None
        if spec.backend == NCCL_BACKEND:
            unique_id = await self._store_get(NCCL_ID_KEY, "the sender's NCCL unique id")
        info = worker_init_info(spec, rank_offset, unique_id)
        await asyncio.wait_for(self.engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info=info)),
                               spec.timeout_s + RPC_MARGIN_S)

    async def leave(self, timeout_s: float) -> None:
        """Release this engine's side of the previous transfer group: vLLM's `shutdown_weight_transfer_engine`
        (0.32) has every worker shut its transfer engine down, for NCCL `PyNcclCommunicator.destroy`
        (ncclCommAbort). vLLM's `init_transfer_engine` would otherwise replace the communicator without
        freeing it: one leaked per reload on every surviving engine. It refuses during a half-done update;
        then the old communicator stays (logged), and the new group is formed all the same."""
        try:
            await asyncio.wait_for(self.engine.shutdown_weight_transfer_engine(), timeout_s + RPC_MARGIN_S)
        except Exception as e:  # joining the new group matters more than freeing the old one
            log.warning("engine %d: the previous weight-transfer group was not released (%s: %s)",
                        self.engine_index, type(e).__name__, e)

    async def receive(self, version: int) -> int:
        """Load one full set of weights, bucket by bucket, and commit it as `version`; returns the bucket count.
        Raises WeightSyncError (the weights are then half-loaded) on any failure."""
        try:
            await self.engine.start_weight_update()
            buckets = await self.receive_buckets(version)
            await self.engine.finish_weight_update(str(version))
            # Cached prefix KV was computed with the old weights; reusing it would sample the next
            # step from a mix of two policies (seen as a learner-vs-rollout logprob gap that grows).
            await self.engine.reset_prefix_cache()
        except Exception as e:
            raise WeightSyncError(f"engine {self.engine_index}: receiving version {version} failed "
                                  f"({type(e).__name__}: {e}); the engine is stale until the next sync") from e
        return buckets

    async def receive_buckets(self, version: int) -> int:
        """update_weights for each bucket the sender announces, until its end marker; returns the count."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        spec, store = self._joined()
        index = 0
        while True:
            metas = decode_bucket(await self._store_get(BUCKET_KEY.format(version=version, index=index),
                                                        f"bucket {index} of version {version}"))
            if metas is None:
                return index
            handles, region = None, None
            if spec.backend == IPC_BACKEND:
                # Written by learner rank 0 under the run's secret (see weight_sync.TransferSpec).
                handles = pickle.loads(store.get(IPC_KEY.format(version=version, index=index)))
            elif spec.backend == SHM_BACKEND:  # each worker acknowledges the bucket itself once loaded
                region = json.loads(store.get(SHM_KEY.format(version=version, index=index)))
            info = worker_update_info(metas, handles, region, version=version, index=index)
            request = WeightTransferUpdateRequest(update_info=info)
            try:
                await asyncio.wait_for(self.engine.update_weights(request), spec.timeout_s + RPC_MARGIN_S)
            except TimeoutError as e:
                raise WeightSyncError(f"engine {self.engine_index}: bucket {index} of version {version} "
                                      f"({len(metas)} tensors, {sum(m.nbytes for m in metas)} bytes) was not "
                                      f"loaded within {spec.timeout_s + RPC_MARGIN_S:.0f}s") from e
            if spec.backend == IPC_BACKEND:
                store.set(ACK_KEY.format(version=version, index=index, receiver=self.engine_index), "1")
            index += 1

    def _joined(self) -> tuple[TransferSpec, dist.Store]:
        if self.spec is None or self.store is None:
            raise WeightSyncError(f"engine {self.engine_index}: init_weight_sync was never called")
        return self.spec, self.store

    async def _store_get(self, key: str, what: str) -> bytes:
        """The value of `key` once the sender has set it, at most the group's timeout later."""
        spec, store = self._joined()
        try:
            await asyncio.to_thread(store.wait, [key], timedelta(seconds=spec.timeout_s))
        except RuntimeError as e:  # the store raises on timeout or when the sender is gone
            raise WeightSyncError(f"engine {self.engine_index}: no {what} from learner rank 0 within "
                                  f"{spec.timeout_s}s: {e}") from e
        return store.get(key)
