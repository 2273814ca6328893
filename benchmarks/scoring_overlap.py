"""Scoring while the engines generate, before and after: the same run with `reward.score_while_generating`
false (the whole batch is scored after the last engine answered) and true (each engine's groups are scored
as soon as that engine has finished, `trainer.steps.score`), one after the other in one script.

    python -m benchmarks.scoring_overlap [--setting demo] [--setting judge] [--steps 8]

Settings:
  demo   the demo (`tiny_cpu`: 2 engines, 2 reward actors, the rule-based reward: scoring is cheap)
  judge  `tiny_cpu_all_scenarios` with 2 rollout engines: a third of the prompts are graded by the tiny
         generative judge on an engine of its own, a third by the two tiny reward models inside the
         reward actors, the rest by the rule (scoring is dear)

Per run, medians over steps 2..N: the step's wall-clock (from when each metrics line appeared), the step's
timers, `generate` (until the last engine answered), `reward` (from the last engine's answer to the scored
batch) and `rollout` (both, plus the sampler). Evaluation is at the start and the end only, on 8 prompts.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from typing import Any

from benchmarks.common import OUT_DIR, print_table, run_logged, write_json

SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {"example": "tiny_cpu", "set": []},
    "judge": {"example": "tiny_cpu_all_scenarios", "set": ["rollout.num_engines=2"]},
}
COMMON_SET = ["eval.every_steps=0", "data.eval_size=8", "eval.samples_per_prompt=1", "resume=false"]
MODES = (("before", "false"), ("after", "true"))
"""(label, reward.score_while_generating)."""


def run(setting: str, label: str, overlap: str, steps: int) -> dict[str, Any]:
    spec = SETTINGS[setting]
    out = OUT_DIR / "scoring-overlap" / setting
    run_dir = out / label
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"name={label}", f"output_dir={out}", f"total_steps={steps}", f"checkpoint_every={steps}",
                 f"reward.score_while_generating={overlap}", *COMMON_SET, *spec["set"]]
    cmd = [sys.executable, "-m", "trainer", "train", "--example", spec["example"],
           *sum((["--set", o] for o in overrides), [])]
    print(f"{setting} / {label}: {' '.join(cmd[1:])}", flush=True)
    result = run_logged(cmd, log_path=out / f"{label}.log", metrics_path=run_dir / "metrics.jsonl")
    return summarize([r for _, r in result["rows"] if r["kind"] == "train"],
                     [t for t, r in result["rows"] if r["kind"] == "train"]) | {
        "command": " ".join(cmd[1:]), "process_wall_s": result["wall_s"], "run_dir": str(run_dir)}


def summarize(rows: list[dict[str, Any]], arrivals: list[float]) -> dict[str, Any]:
    """Medians over the steps after the first (the first warms caches up)."""
    timed = rows[1:] if len(rows) > 1 else rows

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in timed)

    walls = [t1 - t0 for t0, t1 in zip(arrivals, arrivals[1:])]
    return {"steps": len(rows), "step_wall_s": statistics.median(walls) if walls else None,
            "step_s": med("time/step"), "rollout_s": med("time/rollout"), "generate_s": med("time/rollout/generate"),
            "reward_after_generation_s": med("time/rollout/reward"),
            "reward_per_step": [r["reward"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), action="append", help="repeatable (default: both)")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for setting in args.setting or ["demo", "judge"]:
        results[setting] = {label: run(setting, label, overlap, args.steps) for label, overlap in MODES}
    rows = [[setting, label, r["step_wall_s"], r["step_s"], r["generate_s"], r["reward_after_generation_s"],
             r["rollout_s"]] for setting, pair in results.items() for label, r in pair.items()]
    print_table(f"scoring while generating (median over steps 2..{args.steps}; reward = last generation to scored batch)",
                ["setting", "run", "step wall s", "step s", "generate s", "reward s", "rollout s"], rows)
    for setting, pair in results.items():
        same = pair["before"]["reward_per_step"] == pair["after"]["reward_per_step"]
        print(f"{setting}: mean reward of every step identical before and after: {same}")
    write_json("scoring_overlap", {"steps": args.steps, "settings": results})


if __name__ == "__main__":
    main()
