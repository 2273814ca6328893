"""What every benchmark shares: the output folder, tables, the machine's description, the memory of each
role (psutil over a process tree), and the arrival time of each metrics line of a running job.

Every benchmark prints a table and writes `runs/bench/<name>.json` with the same numbers plus the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path("runs/bench")
"""Where every benchmark writes its JSON (and the runs it starts)."""

ROLE_OF_TITLE = (
    ("RolloutWorker", "rollout"),
    ("LearnerWorker", "learner"),
    ("RewardActor", "reward"),
    ("SimEngineHost", "rollout (simulated)"),
)
"""Ray names an actor's process `ray::<Class>...`: the role of each actor class. A process spawned by an
actor (vLLM's engine core, a verifier sandbox) belongs to its actor's role."""


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was when the benchmark started."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def write_json(name: str, data: dict[str, Any]) -> Path:
    """runs/bench/<name>.json with `data` and the machine."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=1, default=str))
    print(f"wrote {path}", flush=True)
    return path


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table; floats with 3 significant decimals."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in text:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(flush=True)


# --- memory of each role -------------------------------------------------------------------------


def role_of(title: str) -> str | None:
    for cls, role in ROLE_OF_TITLE:
        if f"ray::{cls}" in title:
            return role
    return None


def process_title(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except Exception:  # gone, or not ours to read
        return ""


class RoleMemory:
    """Samples the resident memory of every process under `root_pid` every `interval_s` on a thread.

    Each process counts for the nearest actor above it (itself included): an actor's figure is its own
    RSS plus its children's (vLLM's engine core). The root process is the `controller` (the driver, or a
    single-process trainer); Ray's own daemons are `ray`. RSS counts shared library pages in every
    process, so sums over processes overstate what the machine holds; peaks are per actor and per role.
    """

    def __init__(self, root_pid: int, *, root_role: str = "controller", interval_s: float = 0.5):
        self.root_pid, self.root_role, self.interval_s = root_pid, root_role, interval_s
        self.peak_actor: dict[str, float] = {}    # role -> largest single actor (GiB)
        self.peak_role: dict[str, float] = {}     # role -> largest sum over its actors at one instant (GiB)
        self.actors: dict[str, set[int]] = {}      # role -> pids of its actors seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RoleMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a process tree changing under us: skip this sample
                pass
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        import psutil

        root = psutil.Process(self.root_pid)
        info: dict[int, tuple[int, float, str | None]] = {}  # pid -> (parent, GiB, role if an actor)
        for p in (root, *root.children(recursive=True)):
            try:
                info[p.pid] = (p.ppid(), p.memory_info().rss / 2**30, role_of(process_title(p)))
            except Exception:  # gone meanwhile
                continue
        per_actor: dict[int, tuple[str, float]] = {}
        for pid, (_, gib, _) in info.items():
            owner, role = self._owner(pid, info)
            per_actor[owner] = (role, per_actor.get(owner, (role, 0.0))[1] + gib)
        sums: dict[str, float] = {}
        for pid, (role, gib) in per_actor.items():
            self.peak_actor[role] = max(self.peak_actor.get(role, 0.0), gib)
            sums[role] = sums.get(role, 0.0) + gib
            self.actors.setdefault(role, set()).add(pid)
        for role, gib in sums.items():
            self.peak_role[role] = max(self.peak_role.get(role, 0.0), gib)

    def _owner(self, pid: int, info: dict[int, tuple[int, float, str | None]]) -> tuple[int, str]:
        """The actor (or the root) a process counts for, and its role; Ray's daemons count as 'ray'."""
        if pid == self.root_pid:
            return pid, self.root_role
        chain = [pid]
        while pid in info and pid != self.root_pid:
            role = info[pid][2]
            if role is not None:
                return pid, role
            pid = info[pid][0]
            chain.append(pid)
        # Under the root but under no actor: Ray's daemons; each counts with what it spawned (idle workers).
        return (chain[-2] if len(chain) >= 2 else chain[0]), "ray"

    def result(self) -> dict[str, dict[str, float]]:
        return {role: {"actors": len(self.actors.get(role, ())), "peak_actor_gib": self.peak_actor[role],
                       "peak_role_gib": self.peak_role[role]} for role in sorted(self.peak_actor)}


# --- a job whose metrics.jsonl we watch as it runs --------------------------------------------------


class MetricsTail:
    """Records when each line of `path` appears (polled every `interval_s` on a thread): the wall-clock
    of every step, including what the step's own timers do not see (the controller between phases)."""

    def __init__(self, path: Path, *, interval_s: float = 0.02):
        self.path, self.interval_s = path, interval_s
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MetricsTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval_s)

    def _poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        now = time.perf_counter()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in data[: end + 1].splitlines():
            try:
                self.rows.append((now, json.loads(line)))
            except ValueError:
                continue


def run_logged(cmd: list[str], *, log_path: Path, env: dict[str, str] | None = None,
               metrics_path: Path | None = None, root_role: str = "controller") -> dict[str, Any]:
    """Run `cmd` with its output in `log_path`; wall seconds, exit code, the memory of each role, and (with
    `metrics_path`) the arrival time of each metrics line, relative to the start."""
    import contextlib

    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        tail = MetricsTail(metrics_path) if metrics_path is not None else None
        with RoleMemory(proc.pid, root_role=root_role) as memory, \
                (tail if tail is not None else contextlib.nullcontext()):
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        sys.stderr.write(log_path.read_text()[-4000:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {code}; log: {log_path}")
    rows = [(t - start, row) for t, row in tail.rows] if tail is not None else []
    return {"wall_s": wall, "memory": memory.result(), "rows": rows}
