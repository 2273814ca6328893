"""Where a step's time goes: the phases a grpo-ray run logs in metrics.jsonl, plus what no timer sees.

    python -m benchmarks.phases [--run-dir runs/bench/peer-demo/grpo_ray] [--arrivals runs/bench/peer_demo.json]

Phases (medians over the run's steps after the first, seconds and share of the step's wall-clock):
  generate          the engines' generate call, dispatch and gathering included (time/rollout/generate)
  reward            the reward actors scoring the batch (time/rollout/reward)
  old logprobs      the policy's second forward pass; absent when the step is exactly on-policy
  ref logprobs      the reference model's forward pass (time/logprobs/ref)
  update            forward, backward and optimizer step on the learner (time/train)
  weight sync       learner -> every engine, versions checked (time/weight_sync)
  controller        the rest of the step's wall-clock: batch building, advantages, engine sleep/wake,
                    memory and metrics logging; the wall-clock comes from when each metrics line
                    appeared (recorded by benchmarks.peer), so steps with an evaluation are left out.
Without arrival times the controller row is the step timers' residue only (time/step minus the phases).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_DIR, print_table, write_json


def step_walls(rows: list[dict[str, Any]], arrivals: list[float], eval_steps: set[int]) -> dict[int, float]:
    """Wall-clock of each step from the arrival of consecutive train lines (steps after an eval dropped)."""
    out = {}
    for (prev, t0), (row, t1) in zip(zip(rows, arrivals), zip(rows[1:], arrivals[1:])):
        if prev["step"] not in eval_steps:
            out[row["step"]] = t1 - t0
    return out


def phase_table(rows: list[dict[str, Any]], walls: dict[int, float]) -> list[dict[str, Any]]:
    timed = rows[1:] if len(rows) > 1 else rows

    def med(f: Any) -> float:
        values = [f(r) for r in timed]
        return statistics.median(values) if values else 0.0

    def part(key: str) -> Any:
        return lambda r: r.get(key, 0.0)

    measured = {
        "generate": med(part("time/rollout/generate")), "reward": med(part("time/rollout/reward")),
        "rollout (other)": med(lambda r: r.get("time/rollout", 0.0) - r.get("time/rollout/generate", 0.0)
                               - r.get("time/rollout/reward", 0.0)),
        "old logprobs": med(part("time/logprobs/old")), "ref logprobs": med(part("time/logprobs/ref")),
        "logprobs (other)": med(lambda r: r.get("time/logprobs", 0.0) - r.get("time/logprobs/old", 0.0)
                                - r.get("time/logprobs/ref", 0.0)),
        "update": med(part("time/train")), "weight sync": med(part("time/weight_sync")),
    }
    step = med(part("time/step"))
    wall = statistics.median(walls[r["step"]] for r in timed if r["step"] in walls) if walls else step
    measured["controller (outside the timers)"] = max(0.0, wall - step)
    return [{"phase": k, "s": v, "share": v / wall if wall else 0.0} for k, v in measured.items()] + \
        [{"phase": "step wall-clock" if walls else "step (timers)", "s": wall, "share": 1.0}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(OUT_DIR / "peer-demo" / "grpo_ray"))
    ap.add_argument("--arrivals", default=str(OUT_DIR / "peer_demo.json"),
                    help="benchmarks.peer's JSON: when each metrics line appeared")
    args = ap.parse_args()
    from trainer.metrics import read_metrics

    run_dir = Path(args.run_dir)
    rows = read_metrics(run_dir, "train")
    if not rows:
        raise SystemExit(f"no train rows in {run_dir}/metrics.jsonl: run `python -m benchmarks.peer` first")
    eval_steps = {r["step"] for r in read_metrics(run_dir, "eval")}
    walls: dict[int, float] = {}
    peer = Path(args.arrivals)
    if peer.exists():
        g = json.loads(peer.read_text())["systems"].get("grpo-ray") or {}
        if g.get("run_dir") == str(run_dir) and len(g.get("arrivals_s", [])) == len(rows):
            walls = step_walls(rows, g["arrivals_s"], eval_steps)
    table = phase_table(rows, walls)
    print_table(f"phases of a step ({run_dir}, median over steps 2..{len(rows)})", ["phase", "s", "share"],
                [[t["phase"], t["s"], t["share"]] for t in table])
    write_json("phases", {"run_dir": str(run_dir), "steps": len(rows), "phases": table,
                          "old_logprobs_skipped": not any("time/logprobs/old" in r for r in rows)})


if __name__ == "__main__":
    main()
