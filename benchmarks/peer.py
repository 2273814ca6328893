"""grpo-ray against TRL's GRPOTrainer on the same setup, one after the other in one script.

    python -m benchmarks.peer                           # demo scale, both systems
    python -m benchmarks.peer --scale generation        # >= 256 completions x 256 tokens, random ~20M model
    python -m benchmarks.peer --systems grpo-ray --set algorithm.old_logprobs_from_update=false
    python -m benchmarks.peer --systems grpo-ray,grpo-ray-tp2,trl   # also the demo's own learner layout

Scales:
  demo        the demo (`examples.configs.tiny_cpu`): the shipped 0.9M base, 2-3 digit addition, 8 prompts
              x 8 samples, <= 64 tokens, lr 1e-4, KL 0.001; held-out pass@1 (128 prompts x 4) every 10 steps.
  generation  32 prompts x 8 samples of 256 tokens from a random ~20M-parameter model that almost never
              stops early (`benchmarks.models`); evaluation only at the start and the end, on 8 prompts.

Systems: `grpo-ray` runs its learner as two data-parallel Megatron ranks, one per core (`LAYOUTS`);
`grpo-ray-tp2` is the demo's own layout, tensor parallelism over the two ranks, which `tiny_cpu` keeps
to show TP sharding; `trl` is the peer.

Both systems get the same setup (written to runs/bench/peer-<scale>/setup.json) and write metrics.jsonl;
this script notes when each line appears, samples every process's memory, and reports per system:
seconds per step (median, steps after the first), generated tokens per second of step time, the process's
wall-clock, held-out accuracy against step and against training seconds, and grpo-ray / TRL ratios.
TRL runs in benchmarks/.venv (created by `make bench`); without it the peer is skipped with a note.
grpo-ray's run directory is kept for `benchmarks.phases` and `benchmarks.memory`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_DIR, print_table, run_logged, write_json

BENCH_PYTHON = Path("benchmarks/.venv/bin/python")
"""The peer's interpreter (TRL installed there, never in the project's .venv)."""

TRL_MICROBATCH = 64
"""Completions per TRL forward/backward, gradients accumulated over the rest: the demo's whole batch, and
a bound on activation memory at the generation-heavy scale (grpo-ray's learner micro-batches too)."""

LAYOUTS: dict[str, list[str]] = {
    "grpo-ray": ["learner.tensor_parallel_size=1", "learner.data_parallel_size=2"],
    "grpo-ray-tp2": ["learner.tensor_parallel_size=2", "learner.data_parallel_size=1"],
}
"""grpo-ray's learner layout per system name. Two ranks either way (2 cores); at these model sizes (0.9M and
21M parameters) tensor parallelism's all-reduces in every layer's forward and backward cost more on two
CPU cores than splitting each matrix saves, so the comparison runs the layout a user would pick for such
a model: data parallelism, one all-reduce of the gradients per update."""

SCALES: dict[str, dict[str, Any]] = {
    "demo": {"steps": 30, "set": ["eval.every_steps=10"]},
    "generation": {"steps": 2, "set": [
        "model.max_response_tokens=256", "rollout.max_model_len=512", "model.max_prompt_tokens=128",
        "algorithm.prompts_per_step=32", "algorithm.group_size=8", "learner.sequences_per_microbatch=16",
        "eval.every_steps=0", "data.eval_size=8", "eval.samples_per_prompt=1", "rollout.cpu_kvcache_gib=2"]},
}


def grpo_ray_config(scale: str, steps: int, extra: list[str], run_name: str,
                    system: str = "grpo-ray") -> tuple[Any, list[str]]:
    """The resolved TrainConfig of the grpo-ray run and the --set overrides that give it."""
    from trainer.__main__ import resolve

    overrides = [f"name={run_name}", f"output_dir={OUT_DIR / f'peer-{scale}'}", f"total_steps={steps}",
                 "resume=false", f"checkpoint_every={steps}", *LAYOUTS[system], *SCALES[scale]["set"]]
    if scale == "generation":
        from benchmarks.models import write_generation_heavy_model

        model = write_generation_heavy_model(OUT_DIR / "models" / "generation_heavy")
        overrides.append(f"model.path={model}")
    overrides += extra
    return resolve("tiny_cpu", overrides), overrides


def setup_of(cfg: Any) -> dict[str, Any]:
    """What the peer needs to run the same experiment (benchmarks.trl_peer reads it)."""
    from dataclasses import asdict

    a, e = cfg.algorithm, cfg.eval
    return {
        "model_path": cfg.model.path, "train_path": cfg.data.train_path, "eval_path": cfg.data.eval_path,
        "template": cfg.data.template, "eval_size": cfg.data.eval_size, "steps": cfg.total_steps,
        "prompts_per_step": a.prompts_per_step, "group_size": a.group_size,
        "max_response_tokens": cfg.model.max_response_tokens, "lr": cfg.learner.lr,
        "grad_clip": cfg.learner.grad_clip, "kl_coef": a.kl_coef, "clip_eps_low": a.clip_eps_low,
        "clip_eps_high": a.clip_eps_high, "temperature": cfg.rollout.sampling.temperature,
        "eval_every": e.every_steps, "eval_samples": e.samples_per_prompt, "eval_temperature": e.temperature,
        "seed": cfg.seed, "reward": asdict(cfg.reward), "microbatch": TRL_MICROBATCH,
    }


def run_grpo_ray(scale: str, steps: int, extra: list[str], run_name: str = "grpo_ray",
                 system: str = "grpo-ray") -> dict[str, Any]:
    cfg, overrides = grpo_ray_config(scale, steps, extra, run_name, system)
    run_dir = Path(cfg.output_dir) / cfg.name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "trainer", "train", "--example", "tiny_cpu", *sum((["--set", o] for o in overrides), [])]
    print(f"{system} ({scale}, {steps} steps): {run_dir}", flush=True)
    result = run_logged(cmd, log_path=run_dir.parent / f"{run_name}.log", metrics_path=run_dir / "metrics.jsonl")
    return summarize(result, n=cfg.sequences_per_step) | {"run_dir": str(run_dir), "overrides": overrides,
                                                           "setup": setup_of(cfg)}


def run_trl(scale: str, setup: dict[str, Any]) -> dict[str, Any] | None:
    if not BENCH_PYTHON.exists():
        print(f"TRL skipped: {BENCH_PYTHON} is missing (make bench creates it)", flush=True)
        return None
    out = OUT_DIR / f"peer-{scale}" / "trl"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "setup.json").write_text(json.dumps(setup, indent=1))
    env = dict(os.environ, PYTHONPATH=str(Path.cwd()), TOKENIZERS_PARALLELISM="false")
    print(f"TRL ({scale}, {setup['steps']} steps): {out}", flush=True)
    result = run_logged([str(BENCH_PYTHON), "-m", "benchmarks.trl_peer", "--setup", str(out / "setup.json"),
                         "--out", str(out)], log_path=out.parent / "trl.log", env=env,
                        metrics_path=out / "metrics.jsonl", root_role="trl")
    return summarize(result, n=setup["prompts_per_step"] * setup["group_size"]) | {"run_dir": str(out)}


def summarize(result: dict[str, Any], *, n: int) -> dict[str, Any]:
    """Per-step seconds and tokens, accuracy against step / training seconds / wall-clock, memory."""
    train = [(t, r) for t, r in result["rows"] if r["kind"] == "train"]
    evals = [(t, r) for t, r in result["rows"] if r["kind"] == "eval"]
    seconds = [r["time/step"] for _, r in train]
    tokens = [_completion_tokens(r, n) for _, r in train]
    timed = slice(1, None) if len(train) > 1 else slice(None)  # the first step warms caches up
    cumulative, total = {}, 0.0
    for _, r in train:
        total += r["time/step"]
        cumulative[r["step"]] = total
    curve = [{"step": r["step"], "train_s": cumulative.get(r["step"], 0.0), "wall_s": t, "pass@1": r["pass@1"]}
             for t, r in evals]
    return {
        "steps": len(train),
        "s_per_step_median": statistics.median(seconds[timed]) if seconds else None,
        "s_per_step_mean": statistics.fmean(seconds[timed]) if seconds else None,
        "tokens_per_step": statistics.fmean(tokens) if tokens else None,
        "generated_tokens_per_s": sum(tokens[timed]) / max(sum(seconds[timed]), 1e-9) if seconds else None,
        "first_step_wall_s": train[0][0] - train[0][1]["time/step"] if train else None,
        "process_wall_s": result["wall_s"],
        "eval": curve,
        "memory": result["memory"],
        "step_rows": [r for _, r in train],
        "arrivals_s": [t for t, _ in train],
    }


def _completion_tokens(row: dict[str, Any], n: int) -> float:
    if "completion_tokens" in row:
        return float(row["completion_tokens"])
    return row["response_length_mean"] * n  # grpo-ray logs the mean length of the step's N completions


def report(scale: str, systems: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    ran = {k: v for k, v in systems.items() if v is not None}
    rows = []
    for name, s in ran.items():
        first, last = (s["eval"][0]["pass@1"], s["eval"][-1]["pass@1"]) if s["eval"] else (None, None)
        rows.append([name, s["steps"], s["s_per_step_median"], s["s_per_step_mean"], s["tokens_per_step"],
                     s["generated_tokens_per_s"], s["process_wall_s"], first, last])
    print_table(f"peer comparison, {scale} scale", ["system", "steps", "s/step (median)", "s/step (mean)",
                "tokens/step", "gen tokens/s", "process s", "pass@1 start", "pass@1 end"], rows)
    for name, s in ran.items():
        print_table(f"{name}: held-out pass@1 against step and training seconds",
                    ["step", "train s", "wall s", "pass@1"],
                    [[c["step"], c["train_s"], c["wall_s"], c["pass@1"]] for c in s["eval"]])
    ratios: dict[str, dict[str, float]] = {}
    t = ran.get("trl")
    for name, g in ran.items():
        if name == "trl" or t is None:
            continue
        ratios[name] = {"steps_per_s_grpo_ray_over_trl": t["s_per_step_median"] / g["s_per_step_median"],
                        "tokens_per_s_grpo_ray_over_trl": g["generated_tokens_per_s"] / t["generated_tokens_per_s"],
                        "process_wall_trl_over_grpo_ray": t["process_wall_s"] / g["process_wall_s"]}
    if ratios:
        keys = list(next(iter(ratios.values())))
        print_table("ratios against TRL (> 1: grpo-ray ahead)", ["ratio", *ratios],
                    [[k, *(r[k] for r in ratios.values())] for k in keys])
    return {"scale": scale, "systems": systems, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), action="append", help="repeatable (default: demo)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: the scale's)")
    ap.add_argument("--systems", default="grpo-ray,trl",
                    help=f"comma-separated, run in this order: {', '.join(LAYOUTS)}, trl")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for the grpo-ray run only (repeatable)")
    args = ap.parse_args()
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - {*LAYOUTS, "trl"})
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}, trl")
    for scale in args.scale or ["demo"]:
        steps = args.steps or SCALES[scale]["steps"]
        runs: dict[str, dict[str, Any] | None] = {}
        setup: dict[str, Any] = setup_of(grpo_ray_config(scale, steps, args.extra, "grpo_ray")[0])
        for system in systems:
            if system == "trl":
                runs["trl"] = run_trl(scale, setup)
            else:
                runs[system] = run_grpo_ray(scale, steps, args.extra, run_name=system.replace("-", "_"), system=system)
        write_json(f"peer_{scale}", report(scale, runs) | {"setup": setup, "grpo_ray_set": args.extra})


if __name__ == "__main__":
    main()
