"""One run per directory, with real processes: `python -m trainer train` holds `run_dir/run.lock`; a second
run in the same directory is refused with the holder's pid, host and start time and changes nothing; once
the holder is killed with SIGKILL, the OS has released the lock and a new run gets it. The other entry
points that write a run directory (sft, reject, pipeline) refuse the same way.

No Ray starts: the holder is stopped (SIGSTOP) as soon as it holds the lock, before it builds its actors
(the test checks that it has no child process), and the run that gets the lock afterwards finds the
directory's checkpoint already at total_steps, so it has nothing to train."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_checkpoint import _save
from trainer.run_lock import LOCK_FILE, RunDirectoryBusy, hold_run_dir

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"
START_TIMEOUT_S = 180.0
"""A `python -m trainer` process checking its inputs (imports torch and transformers) on a busy 2-core machine."""

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first")


def _train_cmd(out: Path, total_steps: int) -> list[str]:
    """The demo's command on a 16-prompt file (each run checks and tokenises its data before it starts)."""
    data = out.parent / "data"
    if not data.is_dir():
        data.mkdir()
        for name in ("train.jsonl", "heldout.jsonl"):
            (data / name).write_text("\n".join((DATA / name).read_text().splitlines()[:16]) + "\n")
    cmd = [sys.executable, "-m", "trainer", "train", "--example", "tiny_cpu"]
    for item in (f"model.path={MODEL}", f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'heldout.jsonl'}",
                 "data.eval_size=16", f"output_dir={out}", "name=run", f"total_steps={total_steps}"):
        cmd += ["--set", item]
    return cmd


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `directory`: content hash (files) and modification time."""
    out = {}
    for path in sorted(directory.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[path.relative_to(directory).as_posix()] = (digest, path.stat().st_mtime_ns)
    return out


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run directory with a config, metrics and a committed checkpoint at step 2."""
    run_dir = tmp_path / "out" / "run"
    _save(run_dir, 2)
    (run_dir / "config.json").write_text('{"name": "run"}')
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n{"step": 2, "kind": "train"}\n')
    return run_dir


@pytest.mark.slow  # three `python -m trainer` processes (torch and transformers imports): 20-100 s on 2 cores
def test_a_second_run_is_refused_and_a_killed_holder_frees_the_directory(finished_run, tmp_path):
    import psutil

    out, lock = finished_run.parent, finished_run / LOCK_FILE
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(_train_cmd(out, total_steps=3), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _holder(lock).get("pid") != first.pid:
            assert first.poll() is None, f"the first run exited {first.returncode}: {(tmp_path / 'first.log').read_text()}"
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # holds the lock, frozen before it starts any actor
        assert psutil.Process(first.pid).children(recursive=True) == [], "the first run started processes"
        before = _snapshot(finished_run)

        second = subprocess.run(_train_cmd(out, total_steps=3), cwd=ROOT, capture_output=True, text=True,
                                timeout=START_TIMEOUT_S)
        assert second.returncode == 3, second.stderr[-3000:]
        holder = _holder(lock)
        assert f"pid {first.pid} on host {socket.gethostname()}, started {holder['started']}" in second.stderr
        assert f"{finished_run} is in use by another run" in second.stderr and "Traceback" not in second.stderr
        assert _snapshot(finished_run) == before  # config, metrics, checkpoints, the lock file: untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9: the OS releases the lock, nobody cleans up
        first.wait(timeout=30)
        log.close()

    third = subprocess.Popen(_train_cmd(out, total_steps=2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    output, _ = third.communicate(timeout=START_TIMEOUT_S)
    assert third.returncode == 0 and "already finished 2 steps" in output, output[-3000:]
    assert _holder(lock)["pid"] == third.pid


@pytest.fixture
def held(tmp_path) -> Iterator[Path]:
    """A directory whose lock another process holds (until the test ends)."""
    run_dir = tmp_path / "out" / "held"
    code = ("import sys, time\nfrom trainer.run_lock import hold_run_dir\nwith hold_run_dir(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield run_dir
    finally:
        holder.kill()
        holder.wait(timeout=30)


def _entry_points() -> dict:
    from examples.configs import PIPELINE_EXAMPLES, REJECTION_EXAMPLES, SFT_EXAMPLES
    from trainer.pipeline import run_pipeline
    from trainer.rejection import run_rejection
    from trainer.sft import train_sft

    def named(cfg, run_dir: Path):
        return replace(cfg, output_dir=str(run_dir.parent), name=run_dir.name)

    return {
        "sft": lambda d: train_sft(named(SFT_EXAMPLES["tiny_cpu_sft"](), d)),
        "reject": lambda d: run_rejection(named(REJECTION_EXAMPLES["tiny_cpu_reject"](), d)),
        "pipeline": lambda d: run_pipeline(PIPELINE_EXAMPLES["r1_tiny"](quick=True, output_dir=str(d))),
    }


@pytest.mark.parametrize("entry", ["sft", "reject", "pipeline"])
def test_every_entry_point_that_writes_a_run_directory_refuses_a_held_one(held, entry, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name artifacts/ relative to the repository
    before = _snapshot(held)
    with pytest.raises(RunDirectoryBusy, match=r"is in use by another run \(pid \d+ on host"):
        _entry_points()[entry](held)
    assert _snapshot(held) == before


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    with hold_run_dir(tmp_path / "run"):
        with pytest.raises(RunDirectoryBusy):  # flock: a second open file conflicts, even in one process
            with hold_run_dir(tmp_path / "run"):
                pass
    with hold_run_dir(tmp_path / "run") as lock:
        assert _holder(lock)["pid"] == os.getpid()
