"""A local run starts its own Ray beside another cluster, live or stale, and leaves that cluster alone.

Users very often have a Ray cluster running on their machine (`RAY_ADDRESS` pointing at it), or a stale
record of one in /tmp/ray/ray_current_cluster; a local run must neither join nor disturb either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.jobs import start_local_head
from cluster.ray_init import LOOPBACK, free_port
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"
RECORD = Path("/tmp/ray/ray_current_cluster")
"""Where `ray start` records the cluster that `ray.init()` without an address joins."""

pytestmark = pytest.mark.slow


@pytest.fixture
def stale_record():
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


def _actors_of(head) -> list:
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
        assert _actors_of(head) == []
    finally:
        head.stop()


@pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first")
def test_tiny_run_beside_another_cluster_uses_its_own(stale_record, tmp_path):
    head = start_local_head(num_cpus=1)
    other_gcs = f"{LOOPBACK}:{head.gcs_port}"
    env = dict(os.environ, RAY_ADDRESS=other_gcs)  # a user's shell that points at the other cluster
    try:
        result = _run(["-m", "trainer", "train", "--example", "tiny_cpu",
                       "--set", f"model.path={MODEL}", "--set", f"data.train_path={DATA / 'train.jsonl'}",
                       "--set", f"data.eval_path={DATA / 'heldout.jsonl'}", "--set", f"output_dir={tmp_path}",
                       "--set", "name=beside", "--set", "total_steps=1", "--set", "eval.every_steps=0",
                       "--set", "data.eval_size=8", "--set", "checkpoint_every=0"], env, timeout_s=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "started a private local Ray on 127.0.0.1" in result.stdout, result.stdout[-3000:]
        assert other_gcs not in result.stdout
        assert len(read_metrics(tmp_path / "beside", "train")) == 1
        # The other cluster is alive, ran nothing of ours, and its record and the stale one are unchanged.
        assert _actors_of(head) == []
        assert RECORD.read_text() == stale_record
    finally:
        head.stop()
