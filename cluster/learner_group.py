"""A TP x PP x DP group of learner ranks as Ray actors in one placement group.

    LearnerGroup --(one ray.get over all ranks)--> LearnerWorker rank 0 .. world_size - 1

Every verb of `actors.learner.LearnerWorker` is collective, so the group calls it on all ranks at once and
waits on the whole list of refs. Data parallel: the batch is split into `dp` contiguous slices, each put
into the object store once and handed to every rank of that DP replica. Results come from the ranks that
hold the model's output (last pipeline stage, TP rank 0): logprobs are concatenated over DP, metrics
were already reduced over DP by the workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.ray_init import LOOPBACK, free_port


class LearnerGroup:
    """The learner ranks of one model (policy or reference). Build it with plain values."""

    def __init__(self, *, model_path: str, tp: int = 1, pp: int = 1, dp: int = 1, dtype: str = "float32",
                 seed: int = 0, optimizer: Any = None, sequences_per_microbatch: int = 16,
                 role: str = "policy", hold_reference: bool = False, use_gpu: bool = False,
                 cpus_per_actor: float = 1.0, num_threads: int = 1, master_addr: str = LOOPBACK,
                 placement: Callable[[int], dict[str, Any]] | None = None):
        """`placement(rank)` gives the Ray options that place rank `rank` (e.g. a bundle it shares with a
        rollout engine, see cluster.placement); without it the group reserves a placement group of its own."""
        from actors.learner import LearnerWorker

        self.world_size, self.dp = tp * pp * dp, dp
        self.pg = None
        if placement is None:
            bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": cpus_per_actor}
            self.pg = placement_group([dict(bundle) for _ in range(self.world_size)], strategy="PACK")
            ray.get(self.pg.ready())
            own_pg = self.pg

            def placement(rank: int) -> dict[str, Any]:
                return {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0),
                        "scheduling_strategy": PlacementGroupSchedulingStrategy(own_pg, placement_group_bundle_index=rank)}

        port = free_port(master_addr)
        remote: Any = ray.remote(LearnerWorker)  # Ray's stubs do not type `.remote` on actor methods
        self.workers: list[Any] = [
            remote.options(**placement(r)).remote(
                rank=r, world_size=self.world_size, master_addr=master_addr, master_port=port, tp=tp,
                pp=pp, dp=dp, model_path=model_path, dtype=dtype, seed=seed, optimizer=optimizer,
                sequences_per_microbatch=sequences_per_microbatch, role=role,
                hold_reference=hold_reference, num_threads=num_threads)
            for r in range(self.world_size)
        ]
        self.coords = ray.get([w.coords.remote() for w in self.workers])
        # For each DP replica, the rank whose results we read (last stage, TP rank 0).
        self.output_rank = {c["dp_rank"]: c["rank"] for c in self.coords if c["is_output"]}

    # --- verbs --------------------------------------------------------------------------------

    def compute_logprobs(self, batch):  # TrainBatch -> Tensor [N, L]
        return self._concat(self._per_dp(lambda w, b: w.compute_logprobs.remote(b), batch))

    def compute_ref_logprobs(self, batch):  # TrainBatch -> Tensor [N, L]
        return self._concat(self._per_dp(lambda w, b: w.compute_ref_logprobs.remote(b), batch))

    def forward_backward(self, batch, loss_name: str, num_tokens: int, num_sequences: int,
                         loss_kwargs: dict) -> dict[str, float]:
        results = self._per_dp(
            lambda w, b: w.forward_backward.remote(b, loss_name, num_tokens, num_sequences, loss_kwargs), batch)
        return results[self.output_rank[0]]

    def optim_step(self) -> dict[str, float]:
        return self._all(lambda w: w.optim_step.remote())[0]

    def save(self, directory) -> None:
        self._all(lambda w: w.save.remote(str(directory)))

    def load(self, directory) -> None:
        self._all(lambda w: w.load.remote(str(directory)))

    def export_hf(self, directory) -> None:
        self._all(lambda w: w.export_hf.remote(str(directory)))

    def init_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        self._all(lambda w: w.init_weight_sync.remote(host, port, world_size, timeout_s))

    def push_weights(self, version: int, bucket_bytes: int) -> dict:
        return self._all(lambda w: w.push_weights.remote(version, bucket_bytes))[0]

    def push_weights_async(self, version: int, bucket_bytes: int) -> list:
        """Refs of a weight push, for a caller that must run the engines' receive concurrently."""
        return [w.push_weights.remote(version, bucket_bytes) for w in self.workers]

    def shutdown(self) -> None:
        """Kill the ranks and free the placement group (safe to call twice)."""
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    # --- fan-out ------------------------------------------------------------------------------

    def _all(self, call: Callable[[Any], Any]) -> list:
        """`call(worker)` returns an ObjectRef; run it on every rank and wait for all of them at once."""
        return ray.get([call(w) for w in self.workers])

    def _per_dp(self, call: Callable[[Any, Any], Any], batch) -> list:
        """Call `verb` on every rank with its DP replica's slice of `batch` (each slice put once)."""
        n = batch.num_sequences
        if n % self.dp:
            raise ValueError(f"{n} sequences do not split evenly over {self.dp} data-parallel ranks")
        per = n // self.dp
        slices = [ray.put(batch.select(slice(d * per, (d + 1) * per))) for d in range(self.dp)]
        return ray.get([call(w, slices[c["dp_rank"]]) for w, c in zip(self.workers, self.coords)])

    def _concat(self, results: list):
        import torch

        return torch.cat([results[self.output_rank[d]] for d in range(self.dp)], dim=0)
