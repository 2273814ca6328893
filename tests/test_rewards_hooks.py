"""Verifier hooks for the sandbox tests. A separate light module (stdlib only), because the sandbox
worker imports a hook's module: importing a test module would drag torch into the worker."""

from __future__ import annotations

import time


def sleepy_verifier(answer: str, ground_truth: str) -> bool:
    """Hangs for `answer` seconds, then accepts."""
    time.sleep(float(answer))
    return True


def raising_verifier(answer: str, ground_truth: str) -> bool:
    """Always raises, with the answer in the message."""
    raise RuntimeError(f"hook refused {answer!r}")
