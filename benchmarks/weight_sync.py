"""Weight sync speed against model size, beside a memory copy of the same bytes in the same run.

    python -m benchmarks.weight_sync [--sizes 1m,10m,100m] [--bucket-mib 64] [--repeats 3]

Each size is pushed by the real `actors.weight_sync.WeightSync` from a sender actor (a Hugging Face copy of
the model standing in for learner rank 0, so no Megatron start-up) into a real vLLM engine: the whole
sync (stream, vLLM's weight loading, version check) and the sender's streaming alone, against copying
the same tensors into preallocated buffers in the sender's process (on a GPU: device to device). The
backends are chosen as a run chooses them: on CPU both gloo (what an engine on another node gets) and
shared memory (an engine on the sender's node, as here), one after the other into the same engine; NCCL
when Ray has two GPUs (sender and engine on one each). The first push of each backend warms up; the
median of the next `--repeats` is reported. On CPU each size runs once per `--cpu-linear` choice of the
engine's linear kernels (`rollout.cpu_linear`): torch's, into whose parameters a sync copies in place,
and vLLM's oneDNN kernels (the default), whose weights every sync must restore, load and repack layer by
layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks.common import print_table, write_json

SIZES = {"1m": dict(hidden_size=128, num_layers=4), "10m": dict(hidden_size=384, num_layers=6),
         "100m": dict(hidden_size=1024, num_layers=8)}
"""Qwen2 shapes of about 1M, 10M and 100M parameters (intermediate = 3 x hidden, head_dim 64)."""


class Sender:
    """Learner rank 0's weight-sync half (LearnerWorker's verbs) around a Hugging Face model."""

    def __init__(self, model_dir: str, use_gpu: bool):
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(self.device)

    def weight_sync_endpoint(self) -> tuple[str, int]:
        from cluster.network import node_endpoint

        return node_endpoint()

    def init_weight_sync(self, spec: Any) -> None:
        from actors.weight_sync import WeightSender

        self.sender = WeightSender(spec)

    def push_weights(self, version: int, bucket_bytes: int, checksums: bool = False) -> dict:
        from actors.weight_sync import iter_module_tensors

        return self.sender.send(iter_module_tensors(self.model), bucket_bytes=bucket_bytes, version=version,
                                checksums=checksums)

    def memcpy(self, repeats: int) -> tuple[int, float]:
        """(bytes, median seconds) of copying every sent tensor into a preallocated buffer."""
        from actors.weight_sync import iter_module_tensors

        tensors = [t for _, t in iter_module_tensors(self.model)]
        dst = [torch.empty_like(t) for t in tensors]
        times = []
        for _ in range(repeats + 1):
            self._sync()
            start = time.perf_counter()
            for d, t in zip(dst, tensors):
                d.copy_(t)
            self._sync()
            times.append(time.perf_counter() - start)
        return sum(t.nbytes for t in tensors), statistics.median(times[1:])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class OneRankLearner:
    """The learner group's weight-sync methods (LearnerGroup's) around the one Sender actor."""

    def __init__(self, actor: Any):
        self.actor, self.names = actor, ["sender (learner rank 0)"]

    def weight_sync_endpoint(self) -> tuple[str, int]:
        import ray

        return ray.get(self.actor.weight_sync_endpoint.remote())

    def init_weight_sync_async(self, spec: Any) -> list:
        return [self.actor.init_weight_sync.remote(spec)]

    def push_weights_async(self, version: int, bucket_bytes: int, *, checksums: bool = False) -> list:
        return [self.actor.push_weights.remote(version, bucket_bytes, checksums)]


def measure(label: str, model_dir: str, *, use_gpu: bool, bucket_bytes: int, repeats: int,
            cpu_linear: str) -> list[dict[str, Any]]:
    """One row per backend: gloo and shm on CPU (one engine serves both), nccl on GPUs."""
    import ray

    from actors.engine_group import EngineGroup
    from actors.rollout import RolloutWorker
    from actors.weight_sync import WeightSync, choose_backend

    backends = [choose_backend(use_gpu=use_gpu, engines_colocated=[False], engines_on_sender_node=[on_node])
                for on_node in ([False] if use_gpu else [False, True])]
    gpus = 1 if use_gpu else 0
    engine: Any = ray.remote(num_cpus=1, num_gpus=gpus)(RolloutWorker).remote(
        model_dir, max_model_len=128, weight_transfer_backend=backends[0], use_gpu=use_gpu, cpu_linear=cpu_linear)
    sender: Any = ray.remote(num_cpus=1, num_gpus=gpus)(Sender).remote(model_dir, use_gpu)
    group = EngineGroup([engine], control_timeout_s=300.0)
    rows, version = [], 0
    try:
        for backend in backends:
            sync = WeightSync(group, OneRankLearner(sender), backend=backend, timeout_s=300.0,
                              bucket_bytes=bucket_bytes, checksum_every=0)
            sync.connect()
            version += 1
            sync.push(version)  # warm-up: the first reload allocates on the engine's side
            pushes = []
            for _ in range(repeats):
                version += 1
                start = time.perf_counter()
                metrics = sync.push(version)
                pushes.append((time.perf_counter() - start, metrics))
            rows.append({"backend": backend, "sync_s": statistics.median(s for s, _ in pushes),
                         "buckets": pushes[-1][1]["weight_sync_buckets"]})
        nbytes, copy_s = ray.get(sender.memcpy.remote(repeats))
        params = ray.get(sender.num_params.remote())
    finally:
        group.shutdown()
        ray.kill(engine)
        ray.kill(sender)
    kernels = "cuda" if use_gpu else cpu_linear
    return [{"size": label, "params": params, "bytes": nbytes, "kernels": kernels, **row,
             "sync_bytes_per_s": nbytes / row["sync_s"],
             "memcpy_s": copy_s, "memcpy_bytes_per_s": nbytes / copy_s, "sync_over_memcpy": copy_s / row["sync_s"]}
            for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,10m,100m", help=f"comma-separated of {', '.join(SIZES)}")
    ap.add_argument("--bucket-mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-linear", default="torch,onednn",
                    help="comma-separated CPU engine linear kernels to measure (rollout.cpu_linear); ignored on GPUs")
    args = ap.parse_args()
    import ray
    from ray import cloudpickle

    from cluster.ray_init import init_ray
    from examples.tiny_model import write_test_model

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import benchmarks/
    init_ray("local", log_to_driver=False)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 2
    kernel_choices = ["torch"] if use_gpu else args.cpu_linear.split(",")  # the choice is CPU-only
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label in args.sizes.split(","):
                shape = SIZES[label]
                model = str(write_test_model(f"{tmp}/{label}", intermediate_size=3 * shape["hidden_size"],
                                             num_heads=shape["hidden_size"] // 64,
                                             num_kv_heads=shape["hidden_size"] // 64, **shape))
                for kernels in kernel_choices:
                    rows = measure(label, model, use_gpu=use_gpu, bucket_bytes=args.bucket_mib * 2**20,
                                   repeats=args.repeats, cpu_linear=kernels)
                    results.extend(rows)
                    for r in rows:
                        print(f"{label}: {r['params'] / 1e6:.1f}M params, {r['kernels']} engine, {r['backend']} "
                              f"sync {r['sync_s']:.3f} s, memcpy {r['memcpy_s']:.4f} s", flush=True)
    finally:
        ray.shutdown()
    mib = 2**20
    print_table(f"weight sync (buckets of {args.bucket_mib} MiB) against a memory copy of the same bytes",
                ["size", "engine kernels", "backend", "params (M)", "MiB", "buckets", "sync s", "sync MiB/s",
                 "memcpy MiB/s", "sync / memcpy"],
                [[r["size"], r["kernels"], r["backend"], r["params"] / 1e6, r["bytes"] / mib, r["buckets"], r["sync_s"],
                  r["sync_bytes_per_s"] / mib, r["memcpy_bytes_per_s"] / mib, r["sync_over_memcpy"]]
                 for r in results])
    write_json("weight_sync", {"args": vars(args), "use_gpu": use_gpu, "results": results})


if __name__ == "__main__":
    main()
