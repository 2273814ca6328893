"""Weight sync speed on CPU (gloo): one sender, one engine, models of ~1M, ~10M and ~100M parameters.

    python -m examples.bench_weight_sync

Each size is synced into a real vLLM engine (checkpoint load included: vLLM's layerwise reload and
CPU weight repacking run on the receiving side) and compared with a plain in-memory copy of the
same bytes in the same process.
"""

from __future__ import annotations

import tempfile
import time

import ray
import torch

from actors.dispatch import EngineGroup
from actors.rollout import RolloutWorker
from examples.tiny_model import write_test_model

HOST = "127.0.0.1"
SIZES = {"~1M": dict(hidden_size=128, num_layers=4), "~10M": dict(hidden_size=384, num_layers=6),
         "~100M": dict(hidden_size=1024, num_layers=8)}
BUCKET_BYTES = 64 * 2**20


class Sender:
    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def connect(self, port: int, world_size: int) -> None:
        from actors.weight_sync import WeightSender

        self.sender = WeightSender(HOST, port, world_size, timeout_s=120.0)

    def send(self, version: int) -> dict:
        from actors.weight_sync import iter_module_tensors

        return self.sender.send(iter_module_tensors(self.model), bucket_bytes=BUCKET_BYTES, version=version)

    def memcpy_seconds(self) -> tuple[int, float]:
        tensors = list(self.model.state_dict().values())
        dst = [torch.empty_like(t) for t in tensors]
        start = time.perf_counter()
        for d, t in zip(dst, tensors):
            d.copy_(t)
        return sum(t.nbytes for t in tensors), time.perf_counter() - start

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def main() -> None:
    from cluster.ray_init import init_ray

    init_ray("local", num_cpus=4, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k, (label, shape) in enumerate(SIZES.items()):
                model = str(write_test_model(f"{tmp}/{k}", intermediate_size=3 * shape["hidden_size"], **shape))
                engine = ray.remote(num_cpus=1)(RolloutWorker).remote(model, max_model_len=128)
                sender = ray.remote(num_cpus=1)(Sender).remote(model)
                group = EngineGroup([engine])
                port = 29700 + k
                group.init_weight_sync(lambda s=sender, p=port, w=group.world_size: s.connect.remote(p, w),
                                       host=HOST, port=port, timeout_s=120.0)
                for version in (1, 2):  # the first sync also warms up; report the second
                    t0 = time.perf_counter()
                    stats = group.sync_weights(lambda s=sender, v=version: s.send.remote(v), version, 300.0)
                    wall = time.perf_counter() - t0
                nbytes, copy_s = ray.get(sender.memcpy_seconds.remote())
                params = ray.get(sender.num_params.remote())
                print(f"{label}: {params / 1e6:.1f}M params, {stats['bytes'] / 2**20:.1f} MiB in {stats['buckets']} buckets: "
                      f"send {stats['seconds']:.3f}s ({stats['bytes'] / stats['seconds'] / 2**20:,.0f} MiB/s), "
                      f"sync incl. load+verify {wall:.3f}s; in-memory copy {copy_s:.4f}s "
                      f"({nbytes / copy_s / 2**20:,.0f} MiB/s)", flush=True)
                group.shutdown()
                ray.kill(engine)
                ray.kill(sender)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
