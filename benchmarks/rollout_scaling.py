"""Rollout scaling in simulation: the real controller-side dispatcher (`actors.engine_group.EngineGroup`) with
1 to 256 simulated engines, prompts per second against engine count.

    python -m benchmarks.rollout_scaling [--engines 1,2,4,...,256] [--prompts-per-engine 4] [--hosts 4]

A simulated engine answers `generate` like a RolloutWorker (a RolloutBatch of G completions per prompt,
with token ids and logprobs, after a modelled latency) without a model: one decode step of `step_ms` per
token for the whole continuous batch, plus `overhead_ms`. Engines are cheap: each is a handle onto one of
a few asyncio host actors (Ray actors, `--hosts` of them) that serve many engines concurrently, so 256
engines do not need 256 processes. Everything the controller does is real: the longest-first assignment
of groups, one `.remote` per engine, one wait on all refs with a deadline, the transfer and unpickling of
every part, and the merge back into prompt order.

Weak scaling: each engine gets `prompts_per_engine` prompts, so ideal seconds per call stay flat and
prompts/s grows linearly; efficiency = prompts/s at E engines / (E x prompts/s at 1 engine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from typing import Any

from benchmarks.common import print_table, write_json
from trainer.types import Completion, Prompt, RolloutBatch


class SimEngineHost:
    """Serves `generate` for many simulated engines (asyncio: their latencies overlap). Each engine holds a
    weight version: `generate` tags its batch with it (and refuses a stale engine when given
    `expected_version`, as a RolloutWorker does), `receive_weights` replaces it after `receive_ms`; one lock
    per engine makes a receive wait for the generate in flight."""

    def __init__(self, step_ms: float, overhead_ms: float, receive_ms: float = 0.0):
        self.step_s, self.overhead_s, self.receive_s = step_ms / 1000, overhead_ms / 1000, receive_ms / 1000
        self.versions: dict[int, int] = defaultdict(int)
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def set_latency(self, step_ms: float) -> None:
        self.step_s = step_ms / 1000

    async def generate(self, engine: int, prompts: list[Prompt], *, n: int, max_tokens: int,
                       expected_version: int | None = None, **_: Any) -> RolloutBatch:
        async with self.locks[engine]:
            held = self.versions[engine]
            if expected_version is not None and held != expected_version:
                raise RuntimeError(f"engine {engine} holds version {held}, expected {expected_version}")
            start = time.perf_counter()
            await asyncio.sleep(self.overhead_s + max_tokens * self.step_s)  # decode steps of the whole batch
        ids = tuple(range(3, 3 + max_tokens))
        logprobs = tuple(-1.0 for _ in ids)
        groups = tuple(tuple(Completion(token_ids=ids, text="x" * max_tokens, rollout_logprobs=logprobs,
                                        finish_reason="length") for _ in range(n)) for _ in prompts)
        return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((1, 2) for _ in prompts),
                            completions=groups, policy_version=held, engine_seconds=time.perf_counter() - start)

    async def receive_weights(self, engine: int, version: int) -> int:
        async with self.locks[engine]:
            await asyncio.sleep(self.receive_s)
            self.versions[engine] = version
        return version


class _Method:
    def __init__(self, host: Any, engine: int):
        self.host, self.engine = host, engine

    def remote(self, prompts: list[Prompt], **kwargs: Any) -> Any:
        return self.host.generate.remote(self.engine, prompts, **kwargs)


class SimEngine:
    """What EngineGroup holds for an engine: `engine.generate.remote(...)` -> an ObjectRef."""

    def __init__(self, host: Any, engine: int):
        self.generate = _Method(host, engine)


def measure(num_engines: int, hosts: list[Any], *, prompts_per_engine: int, group_size: int, max_tokens: int,
            repeats: int) -> dict[str, float]:
    from actors.engine_group import EngineGroup

    engines = [SimEngine(hosts[e % len(hosts)], e) for e in range(num_engines)]
    group = EngineGroup(engines, generate_timeout_s=600.0)
    prompts = [Prompt(index=i, text=f"What is {i}+{i}?", ground_truth=str(2 * i))
               for i in range(prompts_per_engine * num_engines)]
    kwargs: dict[str, Any] = dict(n=group_size, temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=(), seed=0)
    group.generate(prompts, **kwargs)  # warm-up
    seconds, engine_seconds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        batch = group.generate(prompts, **kwargs)
        seconds.append(time.perf_counter() - start)
        engine_seconds.append(batch.engine_seconds)
    s = statistics.median(seconds)
    return {"engines": num_engines, "prompts": len(prompts), "s_per_call": s, "prompts_per_s": len(prompts) / s,
            "engine_s": statistics.median(engine_seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--prompts-per-engine", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--step-ms", type=float, default=2.0, help="modelled decode step of one engine's batch")
    ap.add_argument("--overhead-ms", type=float, default=10.0, help="modelled per-call engine overhead")
    ap.add_argument("--hosts", type=int, default=4, help="processes that host the simulated engines")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import sys

    import ray
    from ray import cloudpickle

    from cluster.ray_init import init_ray

    if __name__ != "__main__":  # imported: Ray's workers cannot import benchmarks/, so ship the class by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    init_ray("local", num_cpus=max(2, args.hosts), log_to_driver=False)
    try:
        remote: Any = ray.remote(SimEngineHost).options(num_cpus=0, max_concurrency=4096)
        hosts = [remote.remote(args.step_ms, args.overhead_ms) for _ in range(args.hosts)]
        results = [measure(int(e), hosts, prompts_per_engine=args.prompts_per_engine, group_size=args.group_size,
                           max_tokens=args.max_tokens, repeats=args.repeats) for e in args.engines.split(",")]
    finally:
        ray.shutdown()
    base = results[0]["prompts_per_s"] / results[0]["engines"]
    modelled = (args.overhead_ms + args.max_tokens * args.step_ms) / 1000
    for r in results:
        r["efficiency"] = r["prompts_per_s"] / (base * r["engines"])
        r["controller_s"] = r["s_per_call"] - modelled  # what the dispatcher and transport add to the engine time
    print_table(f"rollout scaling (simulated engines: {args.prompts_per_engine} prompts x {args.group_size} samples "
                f"x {args.max_tokens} tokens each, modelled engine time {modelled:.3f} s)",
                ["engines", "prompts", "s/call", "prompts/s", "efficiency", "controller s"],
                [[r["engines"], r["prompts"], r["s_per_call"], r["prompts_per_s"], r["efficiency"], r["controller_s"]]
                 for r in results])
    write_json("rollout_scaling", {"args": vars(args), "modelled_engine_s": modelled, "results": results})


if __name__ == "__main__":
    main()
