"""Rollout throughput of real vLLM engines: completion tokens per second with 1 and 2 engines, same prompts.

    python -m benchmarks.rollout_engines [--prompts 32] [--group-size 8] [--max-tokens 32] [--engines 1,2]

With several engines on one CPU machine each binds its OpenMP threads to its own cores
(`cpu_threads_bind`); the ratio to 1 engine shows what another engine buys on this machine. On a GPU
node each engine gets a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from actors.engine_group import EngineGroup
from actors.rollout import RolloutWorker, cpu_threads_bind
from benchmarks.common import print_table, write_json
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--engines", default="1,2")
    args = ap.parse_args()
    import ray

    from cluster.ray_init import init_ray

    prompts = [Prompt(index=i, text=f"What is {100 + 7 * i}+{23 * i}?", ground_truth="") for i in range(args.prompts)]
    init_ray("local", log_to_driver=False)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = str(write_test_model(f"{tmp}/m", hidden_size=128, num_layers=4))
            for num_engines in (int(e) for e in args.engines.split(",")):
                remote: Any = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(RolloutWorker)
                actors = [remote.remote(model, max_model_len=256, engine_index=i, use_gpu=use_gpu,
                                        cpu_threads=None if use_gpu else cpu_threads_bind(i, num_engines))
                          for i in range(num_engines)]
                group = EngineGroup(actors)
                group.wait_until_up()
                tps = measure(group, prompts, n=args.group_size, max_tokens=args.max_tokens)
                results.append({"engines": num_engines, "tokens_per_s": tps})
                print(f"engines={num_engines}: {tps:,.0f} completion tokens/s", flush=True)
                group.shutdown()
                for a in actors:
                    ray.kill(a)
    finally:
        ray.shutdown()
    for r in results:
        r["speedup"] = r["tokens_per_s"] / results[0]["tokens_per_s"]
    print_table(f"rollout engines ({args.prompts} prompts x {args.group_size} samples, <= {args.max_tokens} tokens)",
                ["engines", "completion tokens/s", "x 1 engine"],
                [[r["engines"], r["tokens_per_s"], r["speedup"]] for r in results])
    write_json("rollout_engines", {"args": vars(args), "use_gpu": use_gpu, "results": results})


if __name__ == "__main__":
    main()
