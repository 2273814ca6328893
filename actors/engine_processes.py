"""What a rollout engine leaves on its node, recorded while it runs and removed once it is gone.

A vLLM engine is more than its Ray actor: `AsyncLLM` spawns an engine-core process, which starts the
executor's worker processes (and Python's resource tracker); a CPU engine of TP = 1 runs its worker inside
the engine core (`actors.rollout_engine.engine_executor_args`). Killing the actor (`ray.kill`, a replaced
engine) does not kill them: the engine core and its workers keep running and, on a GPU, keep the memory
the replacement needs. And they leave files in /dev/shm, clean shutdowns included:

- `psm_*`: vLLM's `MessageQueue` rings between the engine core and its worker processes
  (vllm/distributed/device_communicators/shm_broadcast.py, 0.32), 160-240 MB each on CPU. The creating
  process (the engine core for the executor's broadcast queue, each worker for its response queue) unlinks a ring only in `ShmRingBuffer.__del__`, which never runs when
  the process dies by SIGKILL, and does not run either when it leaves through a signal handler
  and interpreter exit without collecting the queue (vLLM's own shutdown sends SIGTERM, then SIGKILL).
- `sem.mp-*`: named semaphores of the engine processes' multiprocessing locks, unlinked by Python's
  resource tracker, which a kill of the whole tree takes down too.

So the engine actor reports, once it is up, its descendant processes (pid and start time, so a reused
pid is never killed) and the /dev/shm files they map (`record`); when the engine is replaced or the run
ends, a task on the engine's node (`reap_on_node`; never assumed to be the driver's) kills what is left
of those processes and unlinks exactly those files that no living process maps any more.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = "/dev/shm"
REAP_WAIT_S = 10.0
"""How long a reap waits for SIGKILLed processes to be gone before it looks at their files."""


@dataclass(frozen=True)
class EngineProcesses:
    """One engine's processes on its node and the /dev/shm files they map, as recorded while it ran."""

    node_id: str
    """Ray node id of the engine's node: the reap runs there."""
    processes: tuple[tuple[int, float], ...]
    """(pid, start time) of each descendant of the engine actor (engine core, workers, resource tracker)."""
    shm: tuple[str, ...]
    """Paths under /dev/shm those processes mapped (vLLM's psm_* rings, sem.mp-* semaphores)."""

    def merged(self, other: EngineProcesses) -> EngineProcesses:
        """The union of two recordings of one engine (at start-up and at shutdown)."""
        return EngineProcesses(self.node_id, tuple(sorted(set(self.processes) | set(other.processes))),
                               tuple(sorted(set(self.shm) | set(other.shm))))


@dataclass(frozen=True)
class Reaped:
    """What a reap did on the engine's node."""

    killed: tuple[int, ...]
    """Pids that were still running and were SIGKILLed."""
    alive: tuple[int, ...]
    """Pids still running after the wait (should be empty)."""
    unlinked: tuple[str, ...]
    kept: tuple[str, ...]
    """Recorded files left in place because another living process still maps them."""

    def __str__(self) -> str:
        text = f"killed {len(self.killed)} process(es), unlinked {len(self.unlinked)} /dev/shm file(s)"
        if self.alive:
            text += f"; still running: {list(self.alive)}"
        if self.kept:
            text += f"; kept (still mapped by another process): {list(self.kept)}"
        return text


def record(root_pid: int, node_id: str) -> EngineProcesses:
    """The descendants of `root_pid` (the engine actor's process) and the /dev/shm files they map."""
    import psutil

    procs = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            procs.append((p.pid, p.create_time()))
        except psutil.NoSuchProcess:
            pass
    return EngineProcesses(node_id, tuple(sorted(procs)), tuple(sorted(shm_mapped(pid for pid, _ in procs))))


def shm_mapped(pids: Iterable[int]) -> set[str]:
    """Files under /dev/shm that these processes map now, by the names they have now.

    Matched by inode, not by the name in /proc/PID/maps: glibc's `sem_open` creates a semaphore under a
    temporary name, maps it, then links it to its real name (`sem.mp-*` for multiprocessing's locks) and
    unlinks the temporary one, so its creator's maps show `/dev/shm/sem.XXXXXX (deleted)` while the file
    lives on as `sem.mp-*`. A file already unlinked under every name is not named."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in text.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode path
            if len(fields) == 6 and fields[5].startswith(SHM_DIR + "/"):
                inodes.add(int(fields[4]))
    if not inodes:
        return set()
    found: set[str] = set()
    with os.scandir(SHM_DIR) as entries:
        for entry in entries:
            try:
                if entry.inode() in inodes and entry.is_file(follow_symlinks=False):
                    found.add(entry.path)
            except OSError:  # unlinked meanwhile
                pass
    return found


def shm_mapped_by_anyone(except_pids: set[int]) -> set[str]:
    """Files under /dev/shm that any process on this machine maps, except `except_pids`."""
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) not in except_pids]
    return shm_mapped(pids)


def reap(recorded: EngineProcesses, wait_s: float = REAP_WAIT_S) -> Reaped:
    """On the engine's node: SIGKILL what is left of the recorded processes, wait for them to be gone,
    then unlink the recorded /dev/shm files that no other living process maps."""
    import psutil

    running = []
    for pid, started in recorded.processes:
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:  # not a new process that reuses the pid
                running.append(p)
        except psutil.NoSuchProcess:
            pass
    for p in running:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    alive = _wait_gone(running, wait_s)
    in_use = shm_mapped_by_anyone(except_pids={os.getpid()})
    unlinked, kept = [], []
    for path in recorded.shm:
        if path in in_use:
            kept.append(path)
            continue
        try:
            os.unlink(path)
            unlinked.append(path)
        except FileNotFoundError:  # its creator or the resource tracker got there first
            pass
    return Reaped(tuple(p.pid for p in running), tuple(p.pid for p in alive), tuple(unlinked), tuple(kept))


def _wait_gone(procs: list, wait_s: float) -> list:
    """The processes still running after up to `wait_s` seconds. A zombie counts as gone: it maps nothing
    and holds no memory, and only its parent (the engine actor, or init) can reap it."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def reap_on_node(records: Iterable[EngineProcesses], timeout_s: float) -> list[Reaped]:
    """`reap` each record in a Ray task pinned to its engine's node (all at once); raises on a timeout."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(reap)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(r.node_id, soft=False)).remote(r)
            for r in records]
    return list(ray.get(refs, timeout=timeout_s))
