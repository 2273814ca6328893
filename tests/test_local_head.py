"""`cluster.jobs.start_local_head` without starting Ray: the ports it hands `ray start`, and what it says when
`ray start` fails. (tests/test_job_submit.py and tests/test_end_to_end.py start real heads.)"""

from __future__ import annotations

import subprocess

import pytest

from cluster import jobs


def test_every_port_of_the_head_is_picked_free_and_distinct_and_a_failed_start_says_why(monkeypatch, tmp_path):
    """Ray's own fixed defaults (the dashboard agent's 52365, the client server's 10001) are never left to
    chance: a picked GCS port equal to one of them made `ray start` fail on its own agent."""
    picks = iter([52365, 52365, 41000, 52365, 41000, 10001, 43000])  # the OS may hand out a port twice
    monkeypatch.setattr(jobs, "free_port", lambda host: next(picks))
    seen = []

    def ray_start(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Failed to bind 127.0.0.1:52365: in use")

    monkeypatch.setattr(jobs.subprocess, "run", ray_start)
    with pytest.raises(RuntimeError, match=r"ray.* start .*exited 1: Failed to bind 127.0.0.1:52365: in use"):
        jobs.start_local_head(num_cpus=1, temp_dir=tmp_path)
    [cmd] = seen
    ports = {arg.split("=")[0]: int(arg.split("=")[1]) for arg in cmd if arg.startswith("--") and "port=" in arg}
    assert ports == {"--port": 52365, "--dashboard-port": 41000, "--dashboard-agent-listen-port": 10001,
                     "--ray-client-server-port": 43000}
