"""The driver's stall watchdog: a step phase that runs too long is reported with what it waits for.

    controller loop ── timer("rollout") ──► watchdog: phase "rollout" of step 12 began at t0
    watchdog thread, every few seconds: now - t0 > stall_warning_s ?
        ──► log "step 12: phase rollout running for 915s: waiting for generate (8 prompts x 8) since
            08:01:02 (912s, deadline 1800s) on engine 1"   (from cluster.calls' registry of waits)

It only reports: the calls' own deadlines decide when a wait fails. A further warning follows at every
further multiple of the threshold, so a long stall is logged a few times, not every poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cluster.calls import PendingCall, pending_calls
from trainer.steps import PhaseTimer

log = logging.getLogger(__name__)

POLL_S = 5.0
"""Longest time between two looks (shorter for small thresholds)."""


def describe(calls: list[PendingCall], now: float) -> str:
    """What the driver waits for, oldest first; one clause per wait."""
    if not calls:
        return "no remote call is pending (the driver itself is busy)"
    parts = []
    for c in calls:
        deadline = f", deadline {c.timeout_s:.0f}s" if c.timeout_s is not None else ""
        since = time.strftime("%H:%M:%S", time.localtime(c.since))
        parts.append(f"{c.what} since {since} ({now - c.since:.0f}s{deadline}) on {', '.join(c.waiting) or 'nobody'}")
    return "waiting for " + "; ".join(parts)


class StallWatchdog:
    """Watches the current phase from a daemon thread; `report` gets each warning (default: the log)."""

    def __init__(self, threshold_s: float, *, report: Callable[[str], None] | None = None,
                 poll_s: float | None = None) -> None:
        self.threshold_s = threshold_s
        self.report = report or log.warning
        self.poll_s = poll_s if poll_s is not None else min(POLL_S, max(threshold_s / 4, 0.01))
        self._phase: tuple[int, str, float] | None = None  # (step, phase, start on time.monotonic())
        self._warned = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if threshold_s > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="stall-watchdog")
            self._thread.start()

    def timer(self, step: int) -> PhaseTimer:
        """A PhaseTimer for `step` whose phases this watchdog watches; an error in a phase names the step."""
        return PhaseTimer(on_phase=lambda phase, begins: self.phase(step, phase, begins), label=f"step {step}")

    def phase(self, step: int, phase: str, begins: bool) -> None:
        with self._lock:
            self._phase = (step, phase, time.monotonic()) if begins else None
            self._warned = 0

    def check(self) -> str | None:
        """The warning due now, if any (called by the thread; callable directly)."""
        with self._lock:
            if self._phase is None or self.threshold_s <= 0:
                return None
            step, phase, start = self._phase
            elapsed = time.monotonic() - start
            if elapsed < self.threshold_s * (self._warned + 1):
                return None
            self._warned = int(elapsed // self.threshold_s)
        return (f"step {step}: phase {phase} running for {elapsed:.0f}s (stall_warning_s = {self.threshold_s:g}): "
                + describe(pending_calls(), time.time()))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            message = self.check()
            if message is not None:
                self.report(message)
