"""One run per directory: an exclusive lock on `run_dir/run.lock` held for the whole run.

Two runs writing one directory corrupt each other without an error (metrics interleave, one moves the
other's config and checkpoints aside, `model/` ends up the second's). Every entry point that writes a
run directory (train, sft, reject, the pipeline and its stages) holds this lock first and refuses to
start when another process holds it, naming that process (pid, host, start time and command, which the
holder writes into the lock file).

The lock is `fcntl.flock` on an open file: the OS releases it when the holder exits or is killed (-9
included), so a stale lock file never blocks a new run and there is nothing to clean up. The file stays
in the directory; only its lock means anything. Child processes started with exec (Ray, vLLM) do not
inherit it (close-on-exec). On NFS, flock works where the server supports locks (Linux maps it to
fcntl byte-range locks); on a filesystem without locks the run refuses with the OS's error.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "run.lock"


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""

    def __init__(self, lock: Path | str, holder: str) -> None:
        super().__init__(str(lock), holder)
        self.lock = Path(lock)
        self.holder = holder

    def __str__(self) -> str:
        return (f"{self.lock.parent} is in use by another run ({self.holder}); lock file {self.lock}. Two runs in "
                f"one directory would overwrite each other's checkpoints and metrics: wait for that run to end, "
                f"stop it, or give this one another output_dir or name.")


@contextmanager
def hold_run_dir(run_dir: Path | str) -> Iterator[Path]:
    """Hold `run_dir`'s lock for the block (creating the directory); RunDirectoryBusy, having changed
    nothing, if another process holds it. Yields the lock file's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(lock, _describe_holder(fd)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock


def _describe_holder(fd: int) -> str:
    """What the holder wrote into the lock file, in words."""
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid and host" if not raw.strip() else f"holder {raw[:200]!r}"
