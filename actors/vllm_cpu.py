"""vLLM on CPU next to other work on the same cores: no busy-waiting between engine steps.

vLLM's engine core and its worker processes talk through shared-memory queues
(`vllm.distributed.device_communicators.shm_broadcast`). A reader of such a queue busy-waits with
`sched_yield` for `busy_loop_s` = 1 s after every message before it falls back to waiting on a zmq
notification. On a GPU node that spin costs a host core nobody else needs. On a CPU machine the
engines share the cores with the learner and the other engines: each worker (pinned to its core)
spins for a second after every generate call and every weight sync, which is exactly when the
learner computes reference logprobs and trains, and each engine core spins while its worker runs
a decode step, taking a core from the other engine's worker. Measured on the demo: the learner ran
at about 80% of its cores while the engines spun.

`apply()` (CPU only; vLLM calls it in every process it spawns, through the general plugin in
`actors.weight_sync.register_vllm_plugin`) makes every reader wait on the notification at once. The
writer notifies on every message, so nothing is missed; a wait costs a socket wake-up (tens of
microseconds) instead of a spinning core. The spin is read on every wait, so queues created before
the plugin loaded are covered too.
"""

from __future__ import annotations

import os
from typing import Any

BUSY_LOOP_ENV = "GRPO_RAY_VLLM_CPU_BUSY_LOOP_S"
"""Overrides CPU_BUSY_LOOP_S (benchmarks set it to vLLM's 1 s for the before / after comparison)."""
CPU_BUSY_LOOP_S = float(os.environ.get(BUSY_LOOP_ENV, "0"))
"""Seconds a shared-memory queue reader spins before it sleeps on the notification (vLLM's default: 1)."""


def apply() -> None:
    """Idempotent; a no-op on GPU platforms."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.distributed.device_communicators import shm_broadcast

    cls: Any = shm_broadcast.SpinCondition
    if getattr(cls.wait, "_no_idle_spin", False):
        return
    original = cls.wait

    def wait(self: Any, timeout_ms: int | None = None) -> None:
        self.busy_loop_s = CPU_BUSY_LOOP_S
        original(self, timeout_ms)

    wait._no_idle_spin = True  # type: ignore[attr-defined]
    cls.wait = wait
