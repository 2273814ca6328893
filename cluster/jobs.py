"""Helpers around `ray job submit`: a Ray head on 127.0.0.1 for one machine, and the submit command.

On a real cluster the head already runs; users submit with

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m trainer train --example qwen25_gsm8k_r1_zero

and the controller joins that cluster (`cluster.address=auto`, which a job's RAY_ADDRESS also selects).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.network import free_port
from cluster.ray_init import LOOPBACK, LOOPBACK_ONLY_ENV

HEAD_MARKER_ENV = "GRPO_RAY_LOCAL_HEAD"
NO_AGENT_YET = "No available agent to submit job"
"""Ray's job server's answer (HTTP 500) until the head's job agent has registered."""
AGENT_RETRY_S = 3.0


@dataclass(frozen=True)
class LocalHead:
    """A Ray head started with `ray start --head`, bound to 127.0.0.1."""

    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    temp_dir: Path
    """Ray's session files; also the value of HEAD_MARKER_ENV in every process of this head."""

    @property
    def dashboard_address(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def submit(self, entrypoint: list[str], *, working_dir: str | Path, timeout_s: float) -> subprocess.CompletedProcess:
        """`ray job submit` (waits for the job to finish and streams its logs)."""
        cmd = [_ray_cli(), "job", "submit", "--address", self.dashboard_address,
               "--working-dir", str(working_dir), "--", *entrypoint]
        deadline = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                    timeout=max(1.0, deadline - time.monotonic()), check=False)
            # The job server answers before its agent has registered (slow on a loaded machine); Ray says
            # to try again, and nothing was submitted.
            if NO_AGENT_YET not in result.stderr or time.monotonic() + AGENT_RETRY_S >= deadline:
                return result
            time.sleep(AGENT_RETRY_S)

    def stop(self) -> None:
        """Kill this head's processes only (`ray stop` would stop every Ray on the machine)."""
        import psutil

        mine = []
        for proc in psutil.process_iter():
            try:
                if _belongs(proc, str(self.temp_dir)):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in mine:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(mine, timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_head(*, num_cpus: int, temp_dir: str | Path | None = None, timeout_s: float = 60.0) -> LocalHead:
    """Start a Ray head on 127.0.0.1 with its dashboard (the job server) on 127.0.0.1 as well.

    `temp_dir` must be short: Ray puts Unix sockets under it, and their paths may not exceed 107 bytes.
    """
    gcs_port, dashboard_port, agent_port, client_port = distinct_free_ports(4)
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = dict(os.environ)
    env[LOOPBACK_ONLY_ENV] = "0"  # keep the node address 127.0.0.1 (see cluster.ray_init)
    # Ray 2.60 has token authentication on by default, but its job CLI only sends the token
    # (~/.ray/auth_token) when the mode is named.
    env.setdefault("RAY_AUTH_MODE", "token")
    # `ray start` refuses to start without a token, and a fresh machine has none (~/.ray/auth_token is
    # written by the first `ray.init`): give this head its own, beside its session files.
    if not (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")):
        token_path = Path(temp_dir) / "auth_token"
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env[HEAD_MARKER_ENV] = str(temp_dir)  # inherited by every process of this head, whatever it renames itself
    # Jobs run `python` from PATH; make it this interpreter so they see the same packages.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [_ray_cli(), "start", "--head", f"--port={gcs_port}", "--node-ip-address", LOOPBACK,
           "--dashboard-host", LOOPBACK, f"--dashboard-port={dashboard_port}",
           # Ray's fixed defaults (52365, 10001) would clash with a port picked above, or with another Ray
           f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
           f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {started.returncode}: "
                           f"{(started.stderr or started.stdout).strip()[-2000:]}")
    head = LocalHead(gcs_port, dashboard_port, env, Path(temp_dir))
    _wait_for_port(dashboard_port, timeout_s)
    return head


def distinct_free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now, all different (each pick is the OS's, so two may repeat)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(LOOPBACK)
        if port not in ports:
            ports.append(port)
    return ports


def _belongs(proc, temp_dir: str) -> bool:
    """A process of the head at `temp_dir`: it inherited the marker, or (Ray's agents, which start with a
    fresh environment) it writes its logs there."""
    if proc.environ().get(HEAD_MARKER_ENV) == temp_dir:
        return True
    return any(f.path.startswith(temp_dir) for f in proc.open_files())


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout_s:.0f} s")


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")
