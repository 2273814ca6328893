"""Before / after the on-policy old-logprob skip: the demo run twice, one after the other, same machine,
same seed, only `algorithm.old_logprobs_from_update` differing.

    python -m benchmarks.onpolicy [--steps 30]

Off, the controller asks the learner for a second forward pass over the batch (old logprobs) before the
update; on (the default), an exactly on-policy step takes them from the update's own forward, detached.
Reported: seconds per step (median and mean over steps after the first), the logprobs phase (old +
reference; the reference pass stays since the demo has a KL term), the update, the process wall-clock,
and the final held-out pass@1.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from benchmarks.common import print_table, write_json
from benchmarks.peer import run_grpo_ray


def phase_median(run: dict[str, Any], key: str) -> float:
    rows = run["step_rows"][1:] or run["step_rows"]
    return statistics.median(r.get(key, 0.0) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    runs = {}
    for name, skip in (("second pass (before)", "false"), ("from the update (after)", "true")):
        runs[name] = run_grpo_ray("demo", args.steps, [f"algorithm.old_logprobs_from_update={skip}"],
                                  run_name=f"onpolicy_{skip}")
    rows = [[name, r["s_per_step_median"], r["s_per_step_mean"], phase_median(r, "time/logprobs"),
             phase_median(r, "time/logprobs/old"), phase_median(r, "time/train"), r["process_wall_s"],
             r["eval"][-1]["pass@1"] if r["eval"] else None] for name, r in runs.items()]
    before, after = runs.values()
    speedup = before["s_per_step_median"] / after["s_per_step_median"]
    print_table(f"old logprobs: second forward pass against the update's own ({args.steps} demo steps each)",
                ["old logprobs", "s/step (median)", "s/step (mean)", "logprobs s", "of which old s", "update s",
                 "process s", "pass@1 end"], rows)
    print(f"steps per second, after / before: {speedup:.3f}x", flush=True)
    write_json("onpolicy", {"steps": args.steps, "runs": runs, "speedup_median": speedup})


if __name__ == "__main__":
    main()
