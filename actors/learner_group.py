"""A TP x PP x DP group of learner ranks as Ray actors in one placement group.

    LearnerGroup --(one wait over all ranks, with a deadline)--> LearnerWorker rank 0 .. world_size - 1

Every verb of `actors.learner.LearnerWorker` is collective, so the group calls it on all ranks at once and
waits on the whole list of refs. Data parallel: the batch is split into `dp` contiguous slices, each put
into the object store once and handed to every rank of that DP replica. Results come from the ranks that
hold the model's output (last pipeline stage, TP rank 0): logprobs are concatenated over DP, metrics
were already reduced over DP by the workers.

Rank r takes the r-th bundle in node order (`cluster.placement.rank_order`), so each tensor-parallel group
(consecutive ranks) shares a node wherever the nodes hold multiples of TP bundles; a group that does not
is logged at start.

The process groups rendezvous at rank 0's node address, as Ray reports it on that node, with a port
picked there (a zero-resource task in rank 0's bundle finds both before the ranks start); only a local
Ray answers 127.0.0.1. Rank 0's store listens on that address only, and its keys carry a per-group
secret that only the ranks are told (as the weight-sync store's do). Every verb has a deadline
(`timeout_s`); a failure names the rank and the root cause.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.calls import RemoteCallError, get_all
from cluster.network import endpoint_on, port_taken
from cluster.placement import NODE_RESOURCE_SHARE, ordered_bundles
from cluster.untyped import ActorHandle

if TYPE_CHECKING:
    from pathlib import Path

    from ray import ObjectRef
    from torch import Tensor

    from actors.learner import OptimizerSettings
    from actors.weight_sync import TransferSpec
    from trainer.types import TrainBatch

ActorOptions = dict[str, object]
"""Ray options that place one actor (num_cpus, num_gpus, scheduling_strategy, ...)."""

log = logging.getLogger(__name__)

START_TRIES = 3
"""Starts of the ranks before a rendezvous port taken by another process fails the group."""


def straddling_tp_groups(rank_nodes: list[str], tp: int) -> list[str]:
    """A line per tensor-parallel group whose ranks run on more than one node (`rank_nodes[r]`: rank r's
    node). Megatron's rank order puts TP innermost, so a TP group is `tp` consecutive ranks; ranks are taken
    node by node (cluster.placement.rank_order), so this happens only on a node that holds a number of
    learner bundles that is not a multiple of tp."""
    lines = []
    for first in range(0, len(rank_nodes), tp):
        nodes = sorted(set(rank_nodes[first: first + tp]))
        if len(nodes) > 1:
            lines.append(f"ranks {first}-{first + tp - 1} form one tensor-parallel group but run on {len(nodes)} "
                         f"nodes ({', '.join(nodes)}): every layer's TP all-reduce crosses the network. Give each "
                         f"node a multiple of {tp} learner GPUs.")
    return lines


class LearnerGroup:
    """The learner ranks of one model (policy or reference). Build it with plain values."""

    def __init__(self, *, model_path: str, tp: int = 1, pp: int = 1, dp: int = 1, dtype: str = "float32",
                 seed: int = 0, optimizer: OptimizerSettings | None = None, sequences_per_microbatch: int = 16,
                 role: str = "policy", hold_reference: bool = False, use_gpu: bool = False,
                 cpus_per_actor: float = 1.0, num_threads: int = 1, timeout_s: float | None = 1800.0,
                 node_resource: str = "",
                 placement: Callable[[int], ActorOptions] | None = None, **worker_options: float | str):
        """`placement(rank)` gives the Ray options that place rank `rank` (e.g. a bundle it shares with a
        rollout engine, see cluster.placement); without it the group reserves a placement group of its own.
        `timeout_s` bounds every verb (None: no deadline); `worker_options` go to every LearnerWorker;
        `node_resource` pins an own placement group to the nodes started with that custom resource."""
        from actors.learner import LearnerWorker

        self.world_size, self.dp, self.timeout_s = tp * pp * dp, dp, timeout_s
        self.pg = None
        if placement is None:
            bundle: dict[str, float] = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": cpus_per_actor}
            if node_resource:  # only nodes started with this custom resource may host the ranks
                bundle[node_resource] = NODE_RESOURCE_SHARE
            self.pg = placement_group([dict(bundle) for _ in range(self.world_size)], strategy="PACK")
            ray.get(self.pg.ready(), timeout=timeout_s)
            own_pg, order = self.pg, ordered_bundles(self.pg)  # a TP group's ranks on one node (cluster.placement)

            def placement(rank: int) -> ActorOptions:
                return {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0),
                        "scheduling_strategy": PlacementGroupSchedulingStrategy(
                            own_pg, placement_group_bundle_index=order[rank])}

        remote: ActorHandle = ray.remote(LearnerWorker)  # Ray's stubs do not type `.remote` on actor methods
        self.names = [f"{role} learner rank {r}" for r in range(self.world_size)]
        self.workers: list[ActorHandle] = []
        for attempt in range(1, START_TRIES + 1):
            # The port is free when chosen but only bound when rank 0 starts; another process may take it
            # in between (an outgoing connection's ephemeral port, say). Then start the ranks again.
            master_addr, port = endpoint_on(placement(0), timeout_s or 600.0)
            store_secret = secrets.token_hex(16)  # the rendezvous store's keys: only these ranks know them
            self.workers = [
                remote.options(**placement(r)).remote(
                    rank=r, world_size=self.world_size, master_addr=master_addr, master_port=port, tp=tp,
                    pp=pp, dp=dp, model_path=model_path, dtype=dtype, seed=seed, optimizer=optimizer,
                    sequences_per_microbatch=sequences_per_microbatch, role=role, hold_reference=hold_reference,
                    num_threads=num_threads, store_secret=store_secret, **worker_options)
                for r in range(self.world_size)
            ]
            try:
                self.coords = self._all("start-up", lambda w: w.coords.remote())
                break
            except RemoteCallError as err:
                for w in self.workers:
                    ray.kill(w)
                if attempt == START_TRIES or not port_taken(err):
                    self.workers = []
                    if self.pg is not None:
                        remove_placement_group(self.pg)
                    raise
                log.warning("%s learner: rendezvous port %s:%d was taken before rank 0 bound it; starting the "
                            "ranks again on another port (try %d of %d)", role, master_addr, port, attempt + 1,
                            START_TRIES)
        if tp > 1:
            for message in straddling_tp_groups(self.node_ids(), tp):
                log.warning("%s learner: %s", role, message)
        # For each DP replica, the rank whose results we read (last stage, TP rank 0).
        self.output_rank = {c["dp_rank"]: c["rank"] for c in self.coords if c["is_output"]}

    # --- verbs --------------------------------------------------------------------------------

    def compute_logprobs(self, batch: TrainBatch) -> Tensor:  # [N, L]
        return self._concat(self._per_dp("compute_logprobs", lambda w, b: w.compute_logprobs.remote(b), batch))

    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor:  # [N, L]
        return self._concat(self._per_dp("compute_ref_logprobs", lambda w, b: w.compute_ref_logprobs.remote(b),
                                         batch))

    def forward_backward(self, batch: TrainBatch, loss_name: str, num_tokens: int, num_sequences: int,
                         loss_kwargs: dict) -> dict[str, float]:
        results = self._per_dp("forward_backward",
            lambda w, b: w.forward_backward.remote(b, loss_name, num_tokens, num_sequences, loss_kwargs), batch)
        return results[self.output_rank[0]]

    def optim_step(self) -> dict[str, float]:
        return self._all("optim_step", lambda w: w.optim_step.remote())[0]

    def save(self, directory: str | Path) -> None:
        self._all("save", lambda w: w.save.remote(str(directory)))

    def load(self, directory: str | Path) -> None:
        self._all("load", lambda w: w.load.remote(str(directory)))

    def export_hf(self, directory: str | Path) -> None:
        self._all("export_hf", lambda w: w.export_hf.remote(str(directory)))

    def offload(self) -> None:
        """Move parameters, optimizer state and the colocated reference to host memory and free the
        gradient buffers (colocated runs, while the engines generate); see LearnerWorker.offload."""
        self._all("offload", lambda w: w.offload.remote())

    def onload(self) -> None:
        """Inverse of `offload`: every rank's state back on its device, bit for bit."""
        self._all("onload", lambda w: w.onload.remote())

    def memory(self) -> list[dict[str, float]]:
        """Per rank: GiB in use (see LearnerWorker.memory)."""
        return self._all("memory", lambda w: w.memory.remote())

    def node_ids(self) -> list[str]:
        """Ray's node id of each rank, in rank order."""
        return self._all("node id", lambda w: w.__ray_call__.remote(
            lambda _: str(ray.get_runtime_context().get_node_id())))

    # --- the sending half of weight sync (driven by actors.weight_sync.WeightSync) --------------

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """(rank 0's node address as Ray reports it there, a port picked on that node)."""
        host, port = get_all([self.workers[0].weight_sync_endpoint.remote()], what="weight-sync endpoint",
                             names=self.names[:1], timeout_s=self.timeout_s)[0]
        return host, port

    def init_weight_sync_async(self, spec: TransferSpec) -> list[ObjectRef]:
        """Refs of every rank joining the transfer group (rank 0 sends; the others only gather)."""
        return [w.init_weight_sync.remote(spec) for w in self.workers]

    def push_weights_async(self, version: int, bucket_bytes: int, *, checksums: bool = False) -> list[ObjectRef]:
        """Refs of a weight push (rank 0's first), for a caller that runs the engines' receive concurrently."""
        return [w.push_weights.remote(version, bucket_bytes, checksums) for w in self.workers]

    def shutdown(self) -> None:
        """Kill the ranks and free the placement group (safe to call twice)."""
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    # --- fan-out ------------------------------------------------------------------------------

    def _all(self, what: str, call: Callable[[ActorHandle], ObjectRef]) -> list:
        """`call(worker)` returns an ObjectRef; run it on every rank and wait for all of them at once."""
        return get_all([call(w) for w in self.workers], what=what, names=self.names, timeout_s=self.timeout_s)

    def _per_dp(self, what: str, call: Callable[[ActorHandle, ObjectRef], ObjectRef], batch: TrainBatch) -> list:
        """Call `verb` on every rank with its DP replica's slice of `batch` (each slice put once)."""
        n = batch.num_sequences
        if n % self.dp:
            raise ValueError(f"{n} sequences do not split evenly over {self.dp} data-parallel ranks")
        per = n // self.dp
        slices = [ray.put(batch.select(slice(d * per, (d + 1) * per))) for d in range(self.dp)]
        return get_all([call(w, slices[c["dp_rank"]]) for w, c in zip(self.workers, self.coords)], what=what,
                       names=self.names, timeout_s=self.timeout_s)

    def _concat(self, results: list[Tensor]) -> Tensor:
        import torch

        return torch.cat([results[self.output_rank[d]] for d in range(self.dp)], dim=0)
