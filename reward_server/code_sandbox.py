"""A sandbox for model-written programs, built from what Linux gives a process: namespaces, rlimits, a uid.

Not to be confused with `reward_server.sandbox`, the worker process of the math verifiers (trusted code
under a time limit). Here the code is hostile by assumption: RL optimises against the reward, and a
program that can read the expected output, kill the scorer or fill the disk will be found.

    CodeSandbox.run(program, stdin) ── Popen(python -I -S code_launch.py, new session, minimal env, no fds)
        launcher: unshare(net + pid + mount), private tmpfs over /tmp, /var/tmp, /dev/shm
          init (pid 1): own /proc ── program: rlimits, sandbox uid, execve(python -I -S -B main.py)
        host: reads stdout/stderr with a cap, kills the whole group at the wall deadline or overflow,
              removes the private working directory

What each limit (`SandboxLimits`) defends against is in its docstring. When the host is not root, the
launcher asks for an unprivileged user namespace (net + pid) instead; when that is refused too, the
program runs with the limits alone (no private network, /tmp, /proc or uid), and every `RunResult`
says which (`isolation`), so a run can refuse to train on code it cannot contain.

Programs of a batch run in parallel, at most `workers` at a time (`run_many`, a bounded thread pool:
each thread only waits on its child). Each concurrent run holds its own uid from a range, taken by a
file lock, so one program's processes never count against another's RLIMIT_NPROC, even across reward
actors on one node.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).with_name("code_launch.py")
EXIT_SETUP_FAILED = 125
"""The launcher's exit code when the sandbox could not be set up (`code_launch.EXIT_SETUP_FAILED`)."""
READ_CHUNK = 1 << 16
SETUP_TIMEOUT_S = 60.0
"""Most time from launch to the program's start (namespaces, mounts, the launcher's own interpreter); past it
the run is an error of the sandbox, not a wrong program."""
REAP_TIMEOUT_S = 10.0
"""How long the processes of a run may take to die after SIGKILL (a fork bomb's 32 exit in milliseconds)."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one program run may use; every limit is on by default."""

    wall_s: float = 4.0
    """Wall-clock seconds from the program's start to its end; past it the whole process group is killed (infinite loops, sleeps, a loop that ignores SIGTERM)."""
    cpu_s: int = 4
    """RLIMIT_CPU seconds per process (busy loops; SIGXCPU then SIGKILL a second later)."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS per process (memory bombs fail with MemoryError instead of pushing the host into swap)."""
    max_processes: int = 32
    """RLIMIT_NPROC of the sandbox uid, threads included (fork bombs)."""
    max_open_files: int = 64
    """RLIMIT_NOFILE (descriptor exhaustion)."""
    max_file_bytes: int = 16 << 20
    """RLIMIT_FSIZE: largest file the program may write (SIGXFSZ past it; disk fillers)."""
    tmpfs_bytes: int = 64 << 20
    """Size of each private tmpfs over /tmp, /var/tmp and /dev/shm (writes there never reach the host)."""
    max_output_bytes: int = 1 << 20
    """stdout and stderr captured, together; past it the group is killed (1 GB to stdout)."""
    network: bool = False
    """False: a network namespace of its own, with only a loopback that is down (no host listener, no internet)."""
    uid_base: int = 61000
    """First uid a run takes when the host is root; the range must own no files (a uid per concurrent run, so RLIMIT_NPROC is per run)."""
    uid_count: int = 64
    """Size of the uid range, the most runs at once on one host across all sandboxes."""
    python: str = ""
    """Interpreter of the programs ('': this one when the sandbox uid may execute it, else python3 from /usr/bin)."""


@dataclass(frozen=True)
class RunResult:
    """One program run: how it ended, what it printed, and how it was isolated."""

    status: str
    """'exited' (see returncode), 'timeout' (the wall clock or RLIMIT_CPU), 'output_limit' or 'setup_failed' (the
    program never started)."""
    returncode: int
    """Exit code, 128 + signal when a signal ended it (the launcher's convention); -9 when the host killed it."""
    stdout: bytes
    stderr: bytes
    wall_s: float
    """Launch to verdict, seconds (the sandbox's setup included)."""
    isolation: str
    """'namespaces' (root: net, pid and mount namespaces, a uid of its own), 'user-namespaces' (net and pid), or
    'rlimits-only'; with ', network allowed' when `SandboxLimits.network` is on."""

    @property
    def ok(self) -> bool:
        """The program ran to the end and exited 0."""
        return self.status == "exited" and self.returncode == 0


def isolation_mode() -> str:
    """What this host can give a program: 'namespaces' as root, else 'user-namespaces' when the kernel lets an
    unprivileged process make one (probed once in a child), else 'rlimits-only'."""
    if os.geteuid() == 0:
        return "namespaces"
    probe = "import ctypes,sys;sys.exit(ctypes.CDLL(None,use_errno=True).unshare(0x10000000|0x40000000|0x20000000))"
    ok = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True).returncode == 0
    return "user-namespaces" if ok else "rlimits-only"


def default_python() -> str:
    """This interpreter when every directory above it lets others through and others may execute it (a
    pyenv under /root does not), else /usr/bin/python3: a Python is the one interpreter every node has."""
    path = Path(os.path.realpath(sys.executable))
    ok = all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])
    return str(path) if ok else shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


class CodeSandbox:
    """Runs programs under `SandboxLimits`; `run` one, `run_many` a batch in parallel. Thread-safe."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), *, workers: int = 0) -> None:
        """`workers`: programs at once (0: the CPUs this process may use, its actor's share)."""
        self.limits = limits
        self.workers = workers or len(os.sched_getaffinity(0))
        self.isolation = isolation_mode()
        self.python = limits.python or default_python()
        self._root = os.geteuid() == 0
        self._lock_dir = Path(tempfile.gettempdir()) / "grpo-ray-sandbox-uids"

    def run(self, program: str, stdin: str = "", *, wall_s: float | None = None) -> RunResult:
        """Run `program` (Python source) with `stdin`; `wall_s` lowers the limit (a sample's remaining budget)."""
        wall = min(self.limits.wall_s, wall_s) if wall_s is not None else self.limits.wall_s
        with self._uid() as uid, _private_dir(uid) as workdir:
            (workdir / "main.py").write_text(program)
            (workdir / "stdin.txt").write_text(stdin)
            return self._launch(workdir, uid, max(wall, 0.0))

    def run_many(self, jobs: Sequence[tuple[str, str]]) -> list[RunResult]:
        """Run each (program, stdin), at most `workers` at a time; results in the jobs' order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))

    # -- one run ---------------------------------------------------------------------------------

    def _launch(self, workdir: Path, uid: int | None, wall_s: float) -> RunResult:
        limits = self.limits
        isolation = self.isolation + (", network allowed" if limits.network else "")
        started_r, started_w = os.pipe()  # the launcher writes one byte to it as the program starts
        config = {
            "isolation": self.isolation, "network": limits.network, "started_fd": started_w,
            "tmpfs_bytes": limits.tmpfs_bytes, "python": self.python, "uid": uid, "gid": uid,
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir)},
            "rlimits": {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_bytes,
                        "RLIMIT_NPROC": limits.max_processes, "RLIMIT_NOFILE": limits.max_open_files,
                        "RLIMIT_FSIZE": limits.max_file_bytes, "RLIMIT_CORE": 0},
        }
        start = time.monotonic()
        try:
            with open(workdir / "stdin.txt", "rb") as stdin:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(config)],
                    stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                    env={"PATH": "/usr/bin:/bin"}, close_fds=True, pass_fds=(started_w,),
                    start_new_session=True)
        except BaseException:
            os.close(started_r)
            raise
        finally:
            os.close(started_w)
        try:
            status, out, err = _collect(proc, started_r, wall_s=wall_s, cap=limits.max_output_bytes)
        finally:
            os.close(started_r)
            _kill_group(proc.pid)
            proc.wait()
            if uid is not None:
                _reap_uid(uid)
            for stream in (proc.stdout, proc.stderr):
                assert stream is not None, "Popen was given PIPE for both"
                stream.close()
        code = proc.returncode
        if status == "setup_failed":
            err += f"sandbox setup failed: the program had not started after {SETUP_TIMEOUT_S:.0f} s".encode()
        elif status == "exited" and code == EXIT_SETUP_FAILED and err.startswith(b"sandbox setup failed"):
            status = "setup_failed"
        elif status == "exited" and code == 128 + signal.SIGXCPU:
            # RLIMIT_CPU, not the wall clock, stopped a busy loop: on an idle machine CPU time (which counts
            # the interpreter's start) reaches the limit first; either way the program ran out of time.
            status = "timeout"
        return RunResult(status, code, out, err, time.monotonic() - start, isolation)

    @contextmanager
    def _uid(self) -> Iterator[int | None]:
        """A uid of the range no other run holds (an flock per uid, released if this process dies); None unless root."""
        if not self._root:
            yield None
            return
        self._lock_dir.mkdir(mode=0o700, exist_ok=True)
        for uid in range(self.limits.uid_base, self.limits.uid_base + self.limits.uid_count):
            fd = os.open(self._lock_dir / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)
            return
        raise RuntimeError(f"all {self.limits.uid_count} sandbox uids from {self.limits.uid_base} are in use")


@contextmanager
def _private_dir(uid: int | None) -> Iterator[Path]:
    """A fresh directory only `uid` (and root) may enter, removed afterwards whatever the program left."""
    path = Path(tempfile.mkdtemp(prefix="grpo-ray-code-"))
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _collect(proc: subprocess.Popen[bytes], started_fd: int, *, wall_s: float,
             cap: int) -> tuple[str, bytes, bytes]:
    """Read stdout and stderr until both close; ('timeout' | 'output_limit' | 'exited' | 'setup_failed', stdout,
    stderr). The wall clock starts when the launcher reports the program started (`started_fd`): setting up
    namespaces can take seconds on a loaded host, which must not count against the program."""
    assert proc.stdout is not None and proc.stderr is not None, "Popen was given PIPE for both"
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    open_fds, total = {*chunks, started_fd}, 0
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while open_fds - {started_fd}:
        left = deadline - time.monotonic()
        if left <= 0:
            return ("timeout" if started_fd not in open_fds else "setup_failed"), *_joined(chunks, proc)
        for fd in select.select(list(open_fds), [], [], left)[0]:
            data = os.read(fd, READ_CHUNK)
            if fd == started_fd:  # one byte just before execve, or EOF when the launcher died first
                open_fds.discard(fd)
                deadline = time.monotonic() + wall_s
                continue
            if not data:
                open_fds.discard(fd)
            total += len(data)
            chunks[fd].append(data)
            if total > cap:
                return "output_limit", *_joined(chunks, proc)
    left = deadline - time.monotonic()
    try:
        proc.wait(timeout=max(left, 0.0))
    except subprocess.TimeoutExpired:
        return "timeout", *_joined(chunks, proc)
    return "exited", *_joined(chunks, proc)


def _joined(chunks: dict[int, list[bytes]], proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None, "Popen was given PIPE for both"
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def _kill_group(pgid: int) -> None:
    """SIGKILL the launcher's whole group (init of the pid namespace included, which takes the rest along)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_uid(uid: int) -> None:
    """SIGKILL every process of `uid` until none is left, so nothing of a run outlives its verdict and the
    uid's next run starts with its whole RLIMIT_NPROC. In a pid namespace the kernel is already killing
    them (init died), but asynchronously; without one this is what catches a program that left the group."""
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while pids := [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _owner(e) == uid]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox uid {uid} still runs {len(pids)} processes after SIGKILL")
        time.sleep(0.005)


def _owner(entry: os.DirEntry[str]) -> int | None:
    try:
        return entry.stat().st_uid
    except FileNotFoundError:  # exited while we looked
        return None

