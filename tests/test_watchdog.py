"""The stall watchdog (trainer.watchdog): a phase past its threshold is reported with the waits in progress
(which call, which actors, since when); a phase that ends in time is not. Fake waits, no Ray."""

from __future__ import annotations

import time

import pytest

from cluster.calls import pending_calls, tracking
from trainer.watchdog import StallWatchdog


def test_a_stalled_phase_names_the_call_the_actors_and_since_when():
    reports: list[str] = []
    watchdog = StallWatchdog(0.3, report=reports.append, poll_s=0.02)
    try:
        timer = watchdog.timer(step=12)
        with timer("rollout"), tracking("generate (8 prompts x 8)", ["engine 0", "engine 1"], 1800) as call:
            call.waiting = ["engine 1"]  # engine 0 answered, engine 1 did not
            time.sleep(0.5)
        assert len(reports) == 1, reports
        text = reports[0]
        assert text.startswith("step 12: phase rollout running for 0s (stall_warning_s = 0.3): waiting for "
                               "generate (8 prompts x 8) since ")
        assert "deadline 1800s) on engine 1" in text and "engine 0" not in text
        assert pending_calls() == []           # the wait left the registry when it ended
        with timer("train"):
            time.sleep(0.1)                     # within the threshold: nothing to say
        assert len(reports) == 1
    finally:
        watchdog.close()


def test_a_long_stall_warns_again_at_each_multiple_and_says_when_nothing_is_pending():
    reports: list[str] = []
    watchdog = StallWatchdog(0.2, report=reports.append, poll_s=0.02)
    try:
        with watchdog.timer(step=3)("weight_sync"):
            time.sleep(0.5)
        assert len(reports) == 2, reports      # at 0.2 s and at 0.4 s
        assert all("no remote call is pending" in r for r in reports)
    finally:
        watchdog.close()


def test_a_threshold_of_zero_starts_no_thread():
    watchdog = StallWatchdog(0.0)
    assert watchdog._thread is None
    with watchdog.timer(step=1)("rollout"):
        pass
    assert watchdog.check() is None
    watchdog.close()


def test_an_error_in_a_phase_names_the_step_and_the_phase():
    watchdog = StallWatchdog(0.0)
    with pytest.raises(RuntimeError, match="engine 1 died") as raised:
        with watchdog.timer(step=7)("rollout"):
            raise RuntimeError("generate (8 prompts x 8): engine 1 died")
    assert raised.value.__notes__ == ["raised in step 7, phase 'rollout'"]
    watchdog.close()
