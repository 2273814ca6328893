"""Asynchronous against synchronous GRPO steps per second, at generation:training time ratios 0.5, 1 and 2.

    python -m benchmarks.async_rl [--ratios 0.5,1,2] [--staleness 1,2] [--steps 10] [--repeats 2]

The loop is the controller's own (`trainer.controller.train_step` over `trainer.overlap.RolloutSource`: the
rollout, the logprobs and advantages, the update, the weight sync), with a real learner and simulated engines:

- learner: one `LearnerWorker` (the class the learner's Ray actors run; world size 1, gloo on CPU) on a
  randomly initialised Qwen2 (`SHAPE`), called in the driver's process, so its time is real;
- engines: `ENGINES` simulated engines of `benchmarks.rollout_scaling` behind the real dispatcher
  (`actors.engine_group.EngineGroup`) on a Ray host actor: a `generate` answers after a modelled latency
  (one decode step per token for the whole batch) without a model and without CPU, tagged with the
  weight version the engine holds, and sampling and receiving share one lock per engine as in
  `actors.rollout.RolloutWorker`; a weight receive costs `--receive-ms` (the push's modelled latency);
- rewards: a stand-in that scores each group's samples 0, 1, 0, 1, ... (a cheap rule, like the demo's).

First the learner's time per step T is measured (synchronous steps with engines that answer at once); then,
for each ratio r, the engines' call time is set to r x T and the synchronous run and each async run
(`algorithm.async_mode`, `max_staleness` K) go in interleaved repeats (sync, async K=1, ..., sync, ...).
Seconds per step: median over the steps after the first two (the pipeline fills in step 1), best repeat.
Ideal: sync ~ (1 + r) T, async ~ max(1, r) T, a ratio of (1 + r) / max(1, r): 1.5, 2, 1.5. Every async step's
policy_version_lag is checked against K (the run fails otherwise) and its largest value printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_table, write_json
from benchmarks.rollout_scaling import SimEngine, SimEngineHost
from cluster.network import free_port
from trainer.types import Prompt, RewardResult, RolloutBatch, ScoredBatch

SHAPE = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768, max_positions=256)
"""3.3M parameters (the packing benchmark's model): a learner step of a few tenths of a second on 2 cores."""
ENGINES = 2
"""Simulated engines (the demo has 2)."""
WARMUP_STEPS = 2
"""Steps left out of the median: step 1 samples synchronously in both modes, and allocators warm up."""


class ParityRewards:
    """Reward 1 for odd samples of each group, 0 for even ones: every group has the same nonzero spread."""

    def score(self, rollout: RolloutBatch) -> ScoredBatch:
        results = tuple(tuple(RewardResult(reward=float(g % 2), components={}, correct=bool(g % 2))
                              for g in range(len(group))) for group in rollout.completions)
        return ScoredBatch(rollout=rollout, results=results)


class InProcessLearner:
    """A LearnerWorker called directly (what a one-rank LearnerGroup does over Ray)."""

    def __init__(self, worker: Any):
        self.worker = worker

    def compute_logprobs(self, batch):
        return self.worker.compute_logprobs(batch)

    def forward_backward(self, batch, loss_name, num_tokens, num_sequences, loss_kwargs):
        return self.worker.forward_backward(batch, loss_name, num_tokens, num_sequences, loss_kwargs)

    def optim_step(self):
        return self.worker.optim_step()


@dataclass
class BenchSystem:
    """The System the loop sees: simulated engines, the in-process learner, the stand-in rewards."""

    engines: Any
    learner: Any
    rewards: ParityRewards
    host: Any
    pad_token_id: int = 0

    def compute_ref_logprobs(self, batch):
        raise RuntimeError("the benchmark runs without a reference (kl_coef = 0)")

    def sleep_engines(self, *, until_sync: bool = False) -> None:
        pass

    def sync_weights(self, version: int) -> dict[str, float]:
        import ray

        start = time.perf_counter()
        ray.get([self.host.receive_weights.remote(e, version) for e in range(ENGINES)])
        self.engines.expected_version = version
        return {"weight_sync_s": time.perf_counter() - start}

    def restart(self) -> None:
        """Version 0 everywhere: a new run."""
        import ray

        ray.get([self.host.receive_weights.remote(e, 0) for e in range(ENGINES)])
        self.engines.expected_version = 0


def config(*, staleness: int, steps: int, max_tokens: int, prompts: int, group_size: int):  # -> TrainConfig
    from trainer.config import AlgorithmConfig, ModelConfig, RolloutConfig, TrainConfig

    algorithm = AlgorithmConfig(prompts_per_step=prompts, group_size=group_size, async_mode=staleness > 0,
                                max_staleness=max(1, staleness))
    return replace(TrainConfig(), total_steps=steps, checkpoint_every=0, algorithm=algorithm,
                   model=replace(ModelConfig(), max_response_tokens=max_tokens),
                   rollout=replace(RolloutConfig(), max_engine_restarts=0))


def run(system: BenchSystem, cfg, train_prompts: list[Prompt]) -> dict[str, Any]:
    """`cfg.total_steps` steps of the controller's loop; wall seconds and lag of each."""
    from trainer.controller import train_step
    from trainer.data import PromptSampler
    from trainer.overlap import RolloutSource, policy_version_lag
    from trainer.steps import PhaseTimer

    system.restart()
    rollouts = RolloutSource(system, PromptSampler(train_prompts, seed=0), cfg, lambda step: step, None)
    walls, lags, train_s = [], [], []
    try:
        for step in range(1, cfg.total_steps + 1):
            timer = PhaseTimer()
            start = time.perf_counter()
            scored, metrics = train_step(system, rollouts, cfg, step, step, timer)
            walls.append(time.perf_counter() - start)
            seconds = timer.metrics()
            train_s.append(seconds["time/step"] - seconds.get("time/rollout", 0.0))
            lags.append(policy_version_lag(step, scored.rollout.policy_version))
    finally:
        rollouts.close()
    bound = cfg.algorithm.lag_bound
    if max(lags) > bound:
        raise AssertionError(f"policy_version_lag {max(lags)} exceeds the bound {bound}: {lags}")
    timed = walls[WARMUP_STEPS:]
    return {"s_per_step": statistics.median(timed), "walls": walls, "lags": lags, "max_lag": max(lags),
            "learner_s": statistics.median(train_s[WARMUP_STEPS:]), "dropped_groups": rollouts.dropped_groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.5,1,2", help="generation:training time ratios")
    ap.add_argument("--staleness", default="1,2", help="max_staleness K of the async runs")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--receive-ms", type=float, default=20.0, help="modelled latency of one engine's weight receive")
    args = ap.parse_args()
    import ray
    from ray import cloudpickle

    from actors.engine_group import EngineGroup
    from actors.learner import LearnerWorker, OptimizerSettings
    from cluster.ray_init import init_ray
    from examples.tiny_model import build_tokenizer, sample_corpus, write_model

    ratios = [float(r) for r in args.ratios.split(",")]
    staleness = [int(k) for k in args.staleness.split(",")]
    for module in ("benchmarks.rollout_scaling", __name__):  # Ray's workers cannot import benchmarks/
        cloudpickle.register_pickle_by_value(sys.modules[module])
    init_ray("local", num_cpus=2, log_to_driver=False)
    prompts = [Prompt(index=i, text=f"{i}+{i}=", ground_truth=str(2 * i)) for i in range(10_000)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(sample_corpus())
        model_dir = write_model(Path(tmp) / "model", tokenizer, seed=0, **SHAPE)
        worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                               model_path=str(model_dir), optimizer=OptimizerSettings(lr=1e-6),
                               num_threads=torch.get_num_threads())
        try:
            host: Any = ray.remote(SimEngineHost).options(num_cpus=0, max_concurrency=1024).remote(
                0.0, 0.0, args.receive_ms)
            engines = EngineGroup([SimEngine(host, e) for e in range(ENGINES)], generate_timeout_s=600.0)
            system = BenchSystem(engines, InProcessLearner(worker), ParityRewards(), host)
            shape = dict(steps=args.steps, max_tokens=args.max_tokens, prompts=args.prompts, group_size=args.group_size)
            calibration = run(system, config(staleness=0, **shape), prompts)
            train_s = calibration["learner_s"]
            print(f"learner (logprobs, update, weight sync) per step: {train_s:.3f} s", flush=True)
            for ratio in ratios:
                ray.get(host.set_latency.remote(1000 * ratio * train_s / args.max_tokens))
                modes = [("sync", 0)] + [(f"async K={k}", k) for k in staleness]
                runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in modes}
                for _ in range(args.repeats):
                    for label, k in modes:
                        runs[label].append(run(system, config(staleness=k, **shape), prompts))
                results[str(ratio)] = runs
        finally:
            worker.shutdown()
            ray.shutdown()
    rows, ratios_out = [], {}
    for ratio, runs in results.items():
        sync_best = min(r["s_per_step"] for r in runs["sync"])
        for label, done in runs.items():
            best = min(r["s_per_step"] for r in done)
            speedup = sync_best / best
            if label != "sync":
                ratios_out[f"{label} @ {ratio}"] = speedup
            rows.append([ratio, label, best, f"{min(r['s_per_step'] for r in done):.3f}-"
                         f"{max(r['s_per_step'] for r in done):.3f}", 1 / best, speedup,
                         max(r["max_lag"] for r in done), sum(r["dropped_groups"] for r in done)])
    print_table(f"async vs sync, steps/s ({ENGINES} simulated engines, real learner {train_s:.3f} s/step, "
                f"{args.prompts} x {args.group_size} x {args.max_tokens} tokens, best of {args.repeats})",
                ["gen:train", "mode", "s/step", "range", "steps/s", "x sync", "max lag", "dropped"], rows)
    for name, value in ratios_out.items():
        print(f"steps/s, {name} over sync: {value:.2f}x", flush=True)
    write_json("async_rl", {"args": vars(args), "shape": SHAPE, "learner_s": train_s, "results": results,
                            "ratios": ratios_out})


if __name__ == "__main__":
    main()
