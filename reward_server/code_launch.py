"""The launcher of one sandboxed program (`reward_server.code_sandbox`), run as `python -I -S code_launch.py CONFIG`.

It imports nothing from the project (so `-I -S` holds: no site-packages, no PYTHON* variables, no
current directory on the path) and runs in the program's private working directory, with the
program's stdin, stdout and stderr already in place and a fresh session (the host kills the group).

    launcher (root, host namespaces) ── unshare(net, pid, mount); tmpfs over /tmp, /var/tmp, /dev/shm
      └─ init (pid 1 of the new pid namespace, root): mounts its own /proc
           └─ program (the sandbox uid, rlimits, no new privileges): execve(python -I -S -B main.py)

When the program exits, init exits, and the kernel kills every process left in the namespace (a
daemon that double-forked included); when the host kills the group, init dies and takes them along.
Without root the launcher tries an unprivileged user namespace (net + pid) instead, or nothing;
the host chooses the mode (`CONFIG["isolation"]`) and reports it with every result.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 12, 1 << 14, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
EXIT_SETUP_FAILED = 125
"""Exit code when the sandbox itself could not be set up (the program never ran)."""
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
"""Directories any uid may write on a Linux host; each gets a private, size-capped tmpfs."""
WORKDIR = "/tmp/work"
"""Where the program finds its private working directory (and HOME) inside the mount namespace."""

_libc = ctypes.CDLL(None, use_errno=True)


def _call(ret: int, what: str) -> None:
    if ret != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _die_with_parent() -> None:
    _call(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def _enter_namespaces(cfg: dict) -> None:
    net = 0 if cfg["network"] else CLONE_NEWNET
    if cfg["isolation"] == "namespaces":
        _call(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | net), "unshare")
        # Private propagation first, so the tmpfs mounts below never reach the host.
        _call(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        options = f"size={cfg['tmpfs_bytes']},mode=1777".encode()
        for path in WORLD_WRITABLE:
            if os.path.isdir(path):
                _call(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mount {path}")
        # The working directory may lie under the host's /tmp, now hidden: bind it at WORKDIR.
        os.mkdir(WORKDIR)
        _call(_libc.mount(b"/proc/self/cwd", WORKDIR.encode(), None, MS_BIND, None), f"bind {WORKDIR}")
        os.chdir(WORKDIR)
    elif cfg["isolation"] == "user-namespaces":
        _call(_libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | net), "unshare(user)")


def _exec_program(cfg: dict) -> None:
    """In the program's process: limits, then the unprivileged uid, then the interpreter."""
    for name, value in cfg["rlimits"].items():
        soft = int(value)
        hard = soft + 1 if name == "RLIMIT_CPU" else soft  # SIGXCPU at soft, SIGKILL a second later
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if cfg["isolation"] == "namespaces":
        cfg["env"]["HOME"] = WORKDIR
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")  # setuid binaries gain nothing
    # The host's wall clock starts now; the program never holds this descriptor.
    os.write(cfg["started_fd"], b"1")
    os.close(cfg["started_fd"])
    os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-B", "main.py"], cfg["env"])


def _status_code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _init(cfg: dict) -> None:
    """pid 1 of the namespace: its own /proc, then run the program and exit with its status."""
    _die_with_parent()
    if cfg["isolation"] == "namespaces":
        _call(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    child = os.fork()
    if child == 0:
        try:
            _exec_program(cfg)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    while True:
        pid, status = os.waitpid(-1, 0)  # init reaps orphans too, until the program itself ends
        if pid == child:
            os._exit(_status_code(status))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        _die_with_parent()
        _enter_namespaces(cfg)
        pid = os.fork()
    except OSError as exc:
        sys.stderr.write(f"sandbox setup failed: {exc}\n")
        os._exit(EXIT_SETUP_FAILED)
    if pid == 0:
        try:
            _init(cfg)
        except BaseException as exc:
            sys.stderr.write(f"sandbox setup failed: {exc}\n")
        os._exit(EXIT_SETUP_FAILED)
    _, status = os.waitpid(pid, 0)
    os._exit(_status_code(status))


if __name__ == "__main__":
    main()
