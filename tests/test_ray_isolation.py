"""A local run starts its own Ray beside another cluster, live or stale, and leaves that cluster alone.

Users very often have a Ray cluster running on their machine (`RAY_ADDRESS` pointing at it), or a stale
record of one in /tmp/ray/ray_current_cluster; a local run must neither join nor disturb either.

Here `init_ray` itself, in fresh processes; the whole run, `python -m trainer train` from a shell whose
RAY_ADDRESS names a live cluster beside a stale record, is the killed driver of tests/test_end_to_end.py
(`test_tiny_run_beside_another_cluster_uses_its_own`), which saves a system start-up of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster.jobs import start_local_head
from cluster.network import free_port
from cluster.ray_init import LOOPBACK

ROOT = Path(__file__).resolve().parent.parent
RECORD = Path("/tmp/ray/ray_current_cluster")
"""Where `ray start` records the cluster that `ray.init()` without an address joins."""

pytestmark = pytest.mark.slow


@contextmanager
def stale_ray_record() -> Iterator[str]:
    """A record of a cluster that is gone (nothing listens at its address); any real record is restored."""
    saved = RECORD.read_text() if RECORD.exists() else None
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    stale = f"{LOOPBACK}:{free_port()}"
    RECORD.write_text(stale)
    try:
        yield stale
    finally:
        if saved is None:
            RECORD.unlink(missing_ok=True)
        else:
            RECORD.write_text(saved)


@pytest.fixture
def stale_record() -> Iterator[str]:
    with stale_ray_record() as stale:
        yield stale


def actors_of(head) -> list:
    out = subprocess.run([str(Path(sys.executable).parent / "ray"), "list", "actors", "--address",
                          head.dashboard_address, "--format", "json"],
                         env=head.env, capture_output=True, text=True, timeout=120, check=True)
    if out.stdout.strip() == "No resource in the cluster":  # what Ray prints for none, even with json
        return []
    return json.loads(out.stdout)


def _run(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_init_ray_local_ignores_stale_record_and_ray_address(stale_record):
    head = start_local_head(num_cpus=1)
    other_gcs = f"{LOOPBACK}:{head.gcs_port}"
    try:
        for env_address in (None, other_gcs):
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            if env_address:
                env["RAY_ADDRESS"] = env_address
            code = ("from cluster.ray_init import init_ray, shutdown_ray\n"
                    "print('GCS=' + init_ray('local', num_cpus=1, log_to_driver=False))\nshutdown_ray()\n")
            result = _run(["-c", code], env, timeout_s=180)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "started a private local Ray" in result.stdout, result.stdout
            gcs = next(line[4:] for line in result.stdout.splitlines() if line.startswith("GCS="))
            assert gcs not in (other_gcs, stale_record), (gcs, other_gcs, stale_record)
        assert RECORD.read_text() == stale_record
        assert actors_of(head) == []
    finally:
        head.stop()
