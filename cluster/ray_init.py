"""Starting or joining Ray.

`address="local"` starts a private Ray on this machine, bound to 127.0.0.1 with no dashboard: the
one-machine debugging path, CI and the demo. `address="auto"` joins the cluster a `ray job submit`
runs in. Anything else is passed to `ray.init` as the address of an existing head.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray

LOOPBACK = "127.0.0.1"
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray replaces a node address of 127.0.0.1 by the machine's outward address unless this is "0" (its
single-machine mode), so a local Ray sets it to keep every server it starts on the loopback interface."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def init_ray(address: str = "local", *, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Start (local) or join (auto / host:port) Ray, unless this process already did."""
    if ray.is_initialized():
        return
    # Actors import the project's packages; on one machine they share this checkout.
    env = {"env_vars": {"PYTHONPATH": _pythonpath()}}
    if address == "local":
        # Inside a `ray job submit` the job's driver must join its cluster, not start another.
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address="auto", runtime_env=env, log_to_driver=log_to_driver)
            return
        _keep_on_loopback()
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            runtime_env=env,
            log_to_driver=log_to_driver,
        )
    else:
        ray.init(address=address, log_to_driver=log_to_driver)


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


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
