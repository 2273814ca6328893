"""Peak resident memory of each role: controller, rollout engines, learner ranks, reward actors, Ray's
daemons (and the peer's single process), sampled with psutil every 0.5 s over each run's process tree.

    python -m benchmarks.memory                          # from benchmarks.peer's runs (demo scale)
    python -m benchmarks.memory --steps 5                # or a short demo run of its own

An actor's figure is its process plus what it spawned (vLLM's engine core); `peak per actor` is the
largest actor of the role, `peak of the role` the largest sum over the role's actors at one instant. RSS
counts shared library pages in every process (torch alone is several hundred MiB), so sums overstate
what the machine holds. On a GPU run the learner and engines also report device memory in metrics.jsonl
(`memory/*`), which this table does not cover.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_DIR, print_table, write_json


def rows_of(system: str, memory: dict[str, dict[str, float]]) -> list[list[Any]]:
    return [[system, role, m["actors"], m["peak_actor_gib"], m["peak_role_gib"]] for role, m in memory.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default=str(OUT_DIR / "peer_demo.json"), help="benchmarks.peer's JSON")
    ap.add_argument("--steps", type=int, default=0, help="run a demo of this many steps instead")
    args = ap.parse_args()
    systems: dict[str, dict[str, Any]] = {}
    peer = Path(args.peer)
    if args.steps == 0 and peer.exists():
        for name, s in json.loads(peer.read_text())["systems"].items():
            if s is not None:
                systems[name] = s["memory"]
        source = str(peer)
    else:
        from benchmarks.peer import run_grpo_ray

        systems["grpo-ray"] = run_grpo_ray("demo", args.steps or 5, [], run_name="memory")["memory"]
        source = "a demo run of its own"
    table = [row for name, memory in systems.items() for row in rows_of(name, memory)]
    print_table(f"peak resident memory per role (GiB; from {source})",
                ["system", "role", "actors", "peak per actor", "peak of the role"], table)
    write_json("memory", {"source": source, "systems": systems})


if __name__ == "__main__":
    main()
