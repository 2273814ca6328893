"""Starting or joining Ray.

`address="local"` starts a private Ray on this machine, bound to 127.0.0.1 with no dashboard: the
one-machine debugging path, CI and the demo. It never joins another cluster, whatever `RAY_ADDRESS` or
a record of an earlier `ray start` (/tmp/ray/ray_current_cluster, live or stale) says; only inside a
`ray job submit` does it join the job's cluster. `address="auto"` joins the cluster a `ray job submit`
runs in (or the one `RAY_ADDRESS` names). Anything else is passed to `ray.init` as the address of an
existing head. `init_ray` says which of these it did.

Whoever starts Ray shuts it down: `init_ray` and `shutdown_ray` nest. A call of `init_ray` while Ray is up
(started by an earlier `init_ray` in this process, say a test session's or a pipeline's, or by a plain
`ray.init`) joins it, and the matching `shutdown_ray` leaves it running; only the `shutdown_ray` that
matches the `init_ray` which started Ray stops it. So every entry point (train, sft, reject) owns exactly
the Ray it started, and a pipeline or a test session can run several of them in one Ray.

SIGTERM (a `kill`, a scheduler's preemption, `ray job stop`) ends a run the way Ctrl-C does: the handler
raises `Terminated`, a KeyboardInterrupt, in the driver's main thread; it unwinds through the run's
clean-up (engines and their vLLM processes and /dev/shm files, actors, Ray), and the command line then
exits with 143 (128 + SIGTERM, what a shell reports for a process ended by SIGTERM; `exit_code_after`).
It must be a KeyboardInterrupt: Ray's wait loops turn a KeyboardInterrupt raised by a signal handler
into one raised from `ray.get`, but a SystemExit into an unexpected-exit status on which the driver
aborts (signal 6) without running any clean-up; Ray's own handler, which `ray.init` installs, does
exactly that (`sys.exit`). `init_ray` replaces it once Ray is up; `shutdown_ray` restores the handler
that was there before.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import ray

LOOPBACK = "127.0.0.1"
JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the environment of every `ray job submit` entrypoint, and nowhere else."""
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
"""143: the exit status of a run stopped by SIGTERM, after its clean-up."""
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray replaces a node address of 127.0.0.1 by the machine's outward address unless this is "0" (its
single-machine mode), so a local Ray sets it to keep every server it starts on the loopback interface."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def init_ray(address: str = "local", *, num_cpus: int | None = None, num_gpus: int | None = None,
             log_to_driver: bool = True) -> str:
    """Start (local) or join (auto / host:port) Ray, unless this process already did. `num_gpus`: GPUs a
    local Ray declares (None: the ones it finds); Ray schedules declared GPUs it does not have like real
    ones, which is how placement is tested on a CPU machine.

    Returns the GCS address of the cluster this process is connected to, and prints what it did.
    """
    if ray.is_initialized():
        _opened.append(False)
        return _gcs_address()
    previous = signal.getsignal(signal.SIGTERM)
    gcs = _init(address, num_cpus=num_cpus, num_gpus=num_gpus, log_to_driver=log_to_driver)
    _opened.append(True)
    _stop_on_sigterm(previous)
    return gcs


_opened: list[bool] = []
"""One entry per `init_ray` not yet matched by a `shutdown_ray`: True for the one that started Ray."""


def _init(address: str, *, num_cpus: int | None, num_gpus: int | None, log_to_driver: bool) -> str:
    if address == "local" and in_ray_job():
        # Inside a `ray job submit` the driver must join the job's cluster, not start another.
        ray.init(address="auto", log_to_driver=log_to_driver)
        return _announce("joined the cluster of this Ray job")
    if address != "local":
        ray.init(address=address, log_to_driver=log_to_driver)
        return _announce(f"joined the Ray cluster at {address!r}")
    _keep_on_loopback()
    # address="local" (not None): Ray then ignores RAY_ADDRESS and /tmp/ray/ray_current_cluster and
    # starts a private instance, so another cluster on this machine, live or stale, is never joined.
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        # Actors import the project's packages; on one machine they share this checkout.
        runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}},
        log_to_driver=log_to_driver,
    )
    return _announce("started a private local Ray on 127.0.0.1")


def in_ray_job() -> bool:
    """True in the entrypoint of a `ray job submit` (and the processes it starts)."""
    return bool(os.environ.get(JOB_DRIVER_ENV))


def _gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _announce(what: str) -> str:
    gcs = _gcs_address()
    print(f"grpo-ray: {what} (GCS {gcs})", flush=True)
    return gcs


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH", "")
    root = str(repo_root())
    return root if not current else f"{root}{os.pathsep}{current}"


def _keep_on_loopback() -> None:
    # Ray reads the variable when it is imported, so set the constant it became as well; the variable
    # reaches the processes Ray starts.
    from ray._private import ray_constants

    os.environ[LOOPBACK_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


_handler_before_ray: list = []
"""The SIGTERM handler that `init_ray` replaced (none, or one), restored by `shutdown_ray`."""


class Terminated(KeyboardInterrupt):
    """Raised in the driver's main thread by SIGTERM (inside `ray.get` it arrives as a KeyboardInterrupt)."""


_sigterm_received: list[bool] = []


def exit_code_after(interrupt: KeyboardInterrupt) -> int | None:
    """TERMINATED_EXIT_CODE when this interrupt came from SIGTERM (after `init_ray`), else None (Ctrl-C)."""
    return TERMINATED_EXIT_CODE if isinstance(interrupt, Terminated) or _sigterm_received else None


def _stop_on_sigterm(previous: object) -> None:
    """Installed after `ray.init`, which installs Ray's own handler (a later install wins)."""
    if threading.current_thread() is not threading.main_thread():
        return  # Python takes signal handlers in the main thread only; Ray's stays
    _handler_before_ray[:] = [previous]
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: object) -> None:
    # A second SIGTERM (a scheduler repeating itself) must not cut the clean-up short; SIGKILL still can.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sigterm_received.append(True)
    # os.write: print() may be in the middle of a write on this thread, and is not reentrant.
    os.write(2, b"grpo-ray: SIGTERM: stopping; cleaning up the run's actors, engines and Ray first\n")
    raise Terminated(TERMINATED_EXIT_CODE)


def shutdown_ray() -> None:
    """Match the latest `init_ray`: stop Ray if that call started it, else leave it to its owner."""
    started_here = _opened.pop() if _opened else True
    if not started_here:
        return
    if ray.is_initialized():
        ray.shutdown()
    if _handler_before_ray and threading.current_thread() is threading.main_thread():
        previous = _handler_before_ray.pop()
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
