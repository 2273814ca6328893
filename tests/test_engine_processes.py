"""actors.engine_processes on real processes (no Ray, no vLLM): a stand-in engine actor whose child maps
a /dev/shm segment the way vLLM's MessageQueue does (multiprocessing.shared_memory); the child is
killed, so nothing of its own unlinks the segment. Real engines killed mid-run: test_end_to_end and
test_weight_sync."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from actors.engine_processes import EngineProcesses, reap, record

# The "engine actor": starts a child that creates a shared-memory segment, maps it, prints its path and
# sleeps; the segment is kept out of Python's resource tracker, as vLLM's rings outlive their creator's
# tracker when the whole tree is killed.
ACTOR = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import sys, time
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(create=True, size=1 << 20)
resource_tracker.unregister(shm._name, "shared_memory")
print("/dev/shm/" + shm.name, flush=True)
time.sleep(600)
'''], stdout=sys.stdout)
time.sleep(600)
"""


@contextmanager
def stand_in(script: str, prefix: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run a stand-in engine actor until it printed the /dev/shm path its child made; afterwards kill
    the actor and every process it had started, and remove the file, whatever the test did."""
    actor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    path, tree = "", []
    try:
        path = actor.stdout.readline().strip()
        assert path.startswith(prefix), path
        tree = psutil.Process(actor.pid).children(recursive=True)
        yield actor, path
    finally:
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        actor.kill()
        actor.wait()
        if path and os.path.exists(path):
            os.unlink(path)


@pytest.fixture
def stand_in_engine():
    with stand_in(ACTOR, "/dev/shm/psm_") as started:
        yield started


def _wait_mapped(pid: int, path: str) -> None:
    deadline = time.monotonic() + 30
    while path not in Path(f"/proc/{pid}/maps").read_text():
        assert time.monotonic() < deadline, f"{pid} never mapped {path}"
        time.sleep(0.05)


def test_record_names_the_childrens_processes_and_their_shared_memory(stand_in_engine):
    actor, path = stand_in_engine
    [child] = psutil.Process(actor.pid).children()
    _wait_mapped(child.pid, path)
    rec = record(actor.pid, "node-1")
    tree = [child, *child.children(recursive=True)]  # with the child's resource tracker
    assert rec.node_id == "node-1"
    assert rec.processes == tuple(sorted((p.pid, p.create_time()) for p in tree))
    assert rec.shm == (path,)


def test_reap_kills_what_outlived_the_actor_and_unlinks_its_segments(stand_in_engine):
    actor, path = stand_in_engine
    [child] = psutil.Process(actor.pid).children()
    _wait_mapped(child.pid, path)
    rec = record(actor.pid, "node-1")
    tree = [child, *child.children(recursive=True)]
    actor.kill()  # what ray.kill does to an engine actor: its child lives on, the segment stays
    actor.wait()
    assert child.is_running() and os.path.exists(path)
    done = reap(rec)
    assert sorted(done.killed) == sorted(p.pid for p in tree) and done.alive == ()
    assert done.unlinked == (path,) and done.kept == () and not os.path.exists(path)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree)


def test_reap_leaves_a_reused_pid_and_a_file_another_process_maps(stand_in_engine, tmp_path):
    actor, path = stand_in_engine
    [child] = psutil.Process(actor.pid).children()
    _wait_mapped(child.pid, path)
    # The recorded start time differs: the pid now names another process, which must not be killed.
    rec = EngineProcesses("node-1", ((child.pid, child.create_time() - 100.0),), (path,))
    done = reap(rec, wait_s=0.5)
    assert done.killed == () and child.is_running()
    assert done.kept == (path,) and os.path.exists(path)  # still mapped by the live child


# The "engine actor" again, whose child now holds a multiprocessing lock, as vLLM's engine core and workers
# do: glibc makes the named semaphore under a temporary name, maps it, links it to `sem.mp-*` and unlinks
# the temporary name, so the child's /proc/PID/maps never shows the name the file lives on under.
SEMAPHORE_ACTOR = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import multiprocessing, time
lock = multiprocessing.get_context("spawn").Lock()
print("/dev/shm/sem." + lock._semlock.name.lstrip("/"), flush=True)
time.sleep(600)
'''], stdout=sys.stdout)
time.sleep(600)
"""


def test_a_semaphore_is_recorded_by_its_real_name_and_unlinked_by_the_reap():
    with stand_in(SEMAPHORE_ACTOR, "/dev/shm/sem.mp-") as (actor, path):
        assert os.path.exists(path)
        [child] = psutil.Process(actor.pid).children()
        assert path not in Path(f"/proc/{child.pid}/maps").read_text()  # mapped under its temporary name
        rec = record(actor.pid, "node-1")
        assert path in rec.shm, rec.shm
        actor.kill()  # ray.kill: the child and its resource tracker live on until the reap kills them
        actor.wait()
        done = reap(rec)
        assert path in done.unlinked and not os.path.exists(path)
