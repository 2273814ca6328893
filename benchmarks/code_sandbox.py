"""The code sandbox's cost: start to verdict of a trivial program, and programs per second on the machine's cores.

    python -m benchmarks.code_sandbox [--runs 30] [--workers 2]

Rows:
  bare python       `python -I -S -c pass` in a plain subprocess: the floor any sandbox of fresh interpreters pays
  sandbox           `CodeSandbox.run("print(1)")`, one at a time: launcher, namespaces, uid, rlimits, the
                    program's interpreter, the reading of its output, the reaping of its uid, the removal of
                    its directory
  verifier          `CodeVerifier.verify` of a right answer to a one-case stdin/stdout problem (the harness
                    of the reward path)
Throughput: `run_many` of `--runs` trivial programs and of as many programs that spin 0.2 s of CPU,
`--workers` at a time. Medians and 90th percentiles over `--runs` runs. Writes runs/bench/code_sandbox.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import print_table, write_json
from reward_server.code_sandbox import CodeSandbox
from reward_server.code_verifier import CodeVerifier

SPIN = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass\nprint(1)"
"""A program with 0.2 s of work: how parallel runs share the cores."""


def timings(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    """Median and 90th percentile of `runs` calls, seconds (one warm-up call first)."""
    fn()
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    walls.sort()
    return {"median_s": statistics.median(walls), "p90_s": walls[int(0.9 * (len(walls) - 1))]}


def throughput(sandbox: CodeSandbox, program: str, runs: int) -> dict[str, float]:
    start = time.perf_counter()
    results = sandbox.run_many([(program, "")] * runs)
    wall = time.perf_counter() - start
    assert all(r.ok for r in results), [r for r in results if not r.ok][:1]
    return {"programs": runs, "wall_s": wall, "programs_per_s": runs / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sandbox = CodeSandbox(workers=args.workers)
    verifier = CodeVerifier(sandbox, partial_credit=False, sample_budget_s=30.0)
    problem = json.dumps({"inputs": ["abc\n"], "outputs": ["cba\n"]})
    python = sandbox.python
    latency = {
        "bare python": timings(lambda: subprocess.run([python, "-I", "-S", "-c", "pass"], check=True), args.runs),
        "sandbox": timings(lambda: sandbox.run("print(1)"), args.runs),
        "verifier": timings(lambda: verifier.verify("print(input()[::-1])", problem), args.runs),
    }
    overhead_s = latency["sandbox"]["median_s"] - latency["bare python"]["median_s"]
    rate = {"trivial": throughput(sandbox, "print(1)", args.runs), "0.2 s CPU": throughput(sandbox, SPIN, args.runs)}
    print_table(f"start to verdict, one at a time ({sandbox.isolation}; median of {args.runs})",
                ["what", "median s", "p90 s"], [[k, v["median_s"], v["p90_s"]] for k, v in latency.items()])
    print(f"sandbox overhead over a bare interpreter: {overhead_s * 1000:.0f} ms per program")
    print_table(f"throughput, {args.workers} workers", ["programs", "n", "wall s", "programs/s"],
                [[k, v["programs"], v["wall_s"], v["programs_per_s"]] for k, v in rate.items()])
    write_json("code_sandbox", {"command": " ".join(["python -m benchmarks.code_sandbox", *sys.argv[1:]]),
                                "isolation": sandbox.isolation, "workers": args.workers, "runs": args.runs,
                                "latency": latency, "overhead_s": overhead_s, "throughput": rate})


if __name__ == "__main__":
    main()
