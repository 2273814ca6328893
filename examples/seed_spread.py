"""How much the demo's learning depends on luck: the tiny run over several base models and RL seeds.

    python -m examples.seed_spread --bases 0 1 2 --rl-seeds 0 1 2 [--out runs/seed_spread]
    python -m examples.seed_spread --example tiny_cpu_code --bases 0 --rl-seeds 0 1 2 --out runs/seed_spread_code
    python -m examples.seed_spread --example tiny_cpu_reflect --bases 0 --rl-seeds 0 1 2 --out runs/seed_spread_reflect
    python -m examples.seed_spread --example tiny_cpu_tool --bases 0 --rl-seeds 0 1 2 --out runs/seed_spread_tool

For each pretraining seed it builds a base model with the recipe (`examples.build_tiny --from-scratch`,
cached per seed under OUT/base{seed}; the shipped base is built by seed 0 but is the committed copy,
used as is for seed 0 so that its row is the README's base), then runs the demo (`--example tiny_cpu`, or `tiny_cpu_code` with
its own recipe, `examples.build_tiny_code`, and data; unchanged but for `seed`) once per RL seed, one run at a time, and prints held-out pass@1 at step 0,
at `--mid-step` (the step the job-submission test checks) and at the end, with the gain and its
spread. Writes OUT/spread.json. A run already finished in OUT is read, not rerun, so an interrupted
sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from examples import build_tiny, build_tiny_code, build_tiny_reflect, build_tiny_tool
from examples.build_tiny import model_id
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Recipe:
    """How an example's base is built and shipped, and where its data lies."""

    build_module: str
    shipped_model: Path
    read_manifest: Callable[[], dict]
    model_dir_name: str
    data: Path
    """The train and held-out JSONL's folder (`make artifacts` writes it)."""


RECIPES = {
    "tiny_cpu": Recipe("examples.build_tiny", build_tiny.SHIPPED_MODEL, build_tiny.read_manifest,
                       build_tiny.MODEL_DIR_NAME, ROOT / "artifacts" / "data" / "arithmetic"),
    "tiny_cpu_code": Recipe("examples.build_tiny_code", build_tiny_code.SHIPPED_CODE_MODEL,
                            build_tiny_code.read_code_manifest, build_tiny_code.MODEL_DIR_NAME,
                            ROOT / "artifacts" / build_tiny_code.DATA_DIR),
    "tiny_cpu_reflect": Recipe("examples.build_tiny_reflect", build_tiny_reflect.SHIPPED_REFLECT_MODEL,
                               build_tiny_reflect.read_reflect_manifest, build_tiny_reflect.MODEL_DIR_NAME,
                               ROOT / "artifacts" / build_tiny_reflect.DATA_DIR),
    "tiny_cpu_tool": Recipe("examples.build_tiny_tool", build_tiny_tool.SHIPPED_TOOL_MODEL,
                            build_tiny_tool.read_tool_manifest, build_tiny_tool.MODEL_DIR_NAME,
                            ROOT / "artifacts" / build_tiny_tool.DATA_DIR),
}
"""Example name -> its base recipe."""
TOOL_KEYS = ("tools/call_rate", "tools/accuracy_with_call", "tools/accuracy_without_call")
"""Eval metrics of a run with tools (docs/multi_turn.md), reported at step 0 and at the end."""
RETRIES = 1
"""A run that fails (on a loaded machine Ray's 30 s node start-up limit can pass) is started once more;
it resumes from its last checkpoint."""


def base_model(seed: int, shipped_seed: int, out: Path, recipe: Recipe) -> Path:
    """The base built by pretraining seed `seed`: the shipped one for the shipped seed, else built here."""
    if seed == shipped_seed:
        return recipe.shipped_model
    base_dir = out / f"base{seed}"
    model = base_dir / recipe.model_dir_name
    if (model / "model.safetensors").exists():
        return model  # built earlier (a sweep that continues)
    subprocess.run([sys.executable, "-m", recipe.build_module, "--from-scratch", "--seed", str(seed),
                    "--out-dir", str(base_dir)], cwd=ROOT, check=True)
    return model


def run_demo(example: str, model: Path, data: Path, rl_seed: int, out: Path, name: str, extra: list[str]) -> float:
    """Train the example from `model` with RL seed `rl_seed`; returns wall seconds (0 if already done)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "trainer", "train", "--example", example, "--set", f"model.path={model}",
           "--set", f"data.train_path={data / 'train.jsonl'}", "--set", f"data.eval_path={data / 'heldout.jsonl'}",
           "--set", f"output_dir={out}", "--set", f"name={name}", "--set", f"seed={rl_seed}", *extra]
    for attempt in range(RETRIES + 1):
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode == 0:
            return time.perf_counter() - t0
        print(f"{name}: the run failed (attempt {attempt + 1} of {RETRIES + 1})", file=sys.stderr)
    raise RuntimeError(f"{name}: the run failed {RETRIES + 1} times; see its output above")


def summarize(run_dir: Path, mid_step: int) -> dict[str, float]:
    """Held-out pass@1 at step 0, `mid_step` and the end; and the end's reflection rate, tool-call rate and
    length against step 0's."""
    rows = {int(r["step"]): r for r in read_metrics(run_dir, "eval")}
    evals = {step: r["pass@1"] for step, r in rows.items()}
    last = max(evals)
    out = {"start": evals[0], "mid": evals.get(mid_step, float("nan")), "end": evals[last], "end_step": last,
           "gain": evals[last] - evals[0], "mid_gain": evals.get(mid_step, float("nan")) - evals[0],
           "length_start": rows[0]["response_length_mean"], "length_end": rows[last]["response_length_mean"]}
    for key in ("reflection_frac", "reflection_accuracy_with", "reflection_accuracy_without", *TOOL_KEYS):
        if key in rows[0] or key in rows[last]:
            out[f"{key}_start"] = rows[0].get(key, float("nan"))
            out[f"{key}_end"] = rows[last].get(key, float("nan"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="tiny_cpu", choices=sorted(RECIPES))
    parser.add_argument("--data", default=None, help="folder of train.jsonl and heldout.jsonl (default: the "
                                                      "example's under artifacts/data)")
    parser.add_argument("--bases", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds")
    parser.add_argument("--rl-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/seed_spread")
    parser.add_argument("--mid-step", type=int, default=20, help="also report pass@1 at this evaluated step")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = [x for kv in args.set for x in ("--set", kv)]
    # Rows of earlier sweeps into the same OUT are kept (a sweep can be run in parts).
    spread = out / "spread.json"
    rows = json.loads(spread.read_text()) if spread.exists() else []
    recipe = RECIPES[args.example]
    data = Path(args.data).resolve() if args.data else recipe.data
    manifest = recipe.read_manifest()
    shipped_seed = manifest["build"]["config"]["seed"]
    for base_seed in args.bases:
        model = base_model(base_seed, shipped_seed, out, recipe)
        for rl_seed in args.rl_seeds:
            name = f"base{base_seed}_rl{rl_seed}"
            seconds = run_demo(args.example, model, data, rl_seed, out, name, extra)
            row = {"base_seed": base_seed, "rl_seed": rl_seed, "wall_s": round(seconds, 1),
                   **summarize(out / name, args.mid_step)}
            if base_seed == shipped_seed:
                row["base"] = model_id(manifest)
            rows = [r for r in rows if (r["base_seed"], r["rl_seed"]) != (base_seed, rl_seed)] + [row]
            spread.write_text(json.dumps(rows, indent=1))
    print(f"\n{'base':>4} {'rl':>3} {'pass@1 start':>12} {f'step {args.mid_step}':>8} {'end':>6} {'gain':>6} "
          f"{'length':>13} {'reflection':>13} {'tool calls':>15}")
    for r in rows:
        reflection = (f"{r['reflection_frac_start']:.1%} -> {r['reflection_frac_end']:.1%}"
                      if "reflection_frac_start" in r else "")
        length = f"{r['length_start']:.1f} -> {r['length_end']:.1f}" if "length_start" in r else ""
        calls = (f"{r['tools/call_rate_start']:.1%} -> {r['tools/call_rate_end']:.1%}"
                 if "tools/call_rate_start" in r else "")
        print(f"{r['base_seed']:>4} {r['rl_seed']:>3} {r['start']:>12.1%} {r['mid']:>8.1%} {r['end']:>6.1%} "
              f"{r['gain']:>+6.1%} {length:>13} {reflection:>13} {calls:>15}")
    gains = [r["gain"] for r in rows]
    print(f"gain over {len(rows)} runs: min {min(gains):+.1%}, median {statistics.median(gains):+.1%}, "
          f"max {max(gains):+.1%}")


if __name__ == "__main__":
    main()
