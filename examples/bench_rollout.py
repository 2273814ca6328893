"""Rollout throughput on CPU: completion tokens per second with 1 and 2 engines, same prompts.

    python -m examples.bench_rollout [--prompts 32] [--group-size 8] [--max-tokens 32]

With 2 engines each binds its OpenMP threads to its own core (`cpu_threads_bind`); the ratio to
1 engine shows what a second engine buys on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray

from actors.dispatch import EngineGroup
from actors.rollout import RolloutWorker, cpu_threads_bind
from examples.tiny_model import write_test_model
from trainer.types import Prompt


def measure(group: EngineGroup, prompts: list[Prompt], *, n: int, max_tokens: int, repeats: int = 3) -> float:
    group.generate(prompts, n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=(), seed=0)  # warm-up
    tokens, start = 0, time.perf_counter()
    for r in range(repeats):
        batch = group.generate(prompts, n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=(), seed=r + 1)
        tokens += batch.num_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    prompts = [Prompt(index=i, text=f"What is {100 + 7 * i}+{23 * i}?", ground_truth="") for i in range(args.prompts)]
    from cluster.ray_init import init_ray

    init_ray("local", num_cpus=4, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = str(write_test_model(f"{tmp}/m", hidden_size=128, num_layers=4))
            for num_engines in (1, 2):
                actors = [ray.remote(num_cpus=1)(RolloutWorker).remote(
                    model, max_model_len=256, engine_index=i, cpu_threads=cpu_threads_bind(i, num_engines))
                    for i in range(num_engines)]
                group = EngineGroup(actors)
                group.check_versions()
                tps = measure(group, prompts, n=args.group_size, max_tokens=args.max_tokens)
                print(f"engines={num_engines} B={args.prompts} G={args.group_size} T<={args.max_tokens}: "
                      f"{tps:,.0f} completion tokens/s", flush=True)
                group.shutdown()
                for a in actors:
                    ray.kill(a)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
