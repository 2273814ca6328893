"""Waiting on remote calls with a deadline, and errors that say which actor failed and why.

    refs of one verb on several actors --get_all(timeout_s)--> results in order
        or RemoteCallError("<what>: <actor> died / raised <root cause> / no answer within <t> s")

Every remote call of a run goes through here: the first failure is raised at once (the other calls may
still be running), and a call that does not answer within its deadline names every actor still pending.
An actor that died is reported as its death (with Ray's reason), not as the failure of its peer that
then timed out waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class RemoteCallError(RuntimeError):
    """A remote call failed or missed its deadline; the message names the component and the root cause."""


def root_cause(error: BaseException) -> str:
    """The original exception under Ray's wrappers, as 'Type: message' (first line of Ray's reason)."""
    import ray

    if isinstance(error, ray.exceptions.RayActorError):
        reason = str(error).strip().splitlines()
        return f"the actor died ({reason[0] if reason else 'no reason given'})"
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause if getattr(error, "cause", None) is not None else error
        if cause is not error:
            return root_cause(cause)
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return lines[-1] if lines else type(error).__name__
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return f"{type(cause).__name__}: {cause}"


def get_all(refs: Sequence[Any], *, what: str, names: Sequence[str], timeout_s: float | None,
            error: type[Exception] = RemoteCallError, keep: tuple[type[Exception], ...] = ()) -> list[Any]:
    """`ray.get` of every ref within `timeout_s` (None: no deadline), raising on the first failure.

    `names[i]` names the actor behind `refs[i]` ("engine 1", "learner rank 3"); `what` names the call
    ("generate", "weight sync of version 7"). Failures raise `error`, except an actor's own exception of
    a type in `keep` (e.g. StaleEngineError), which is raised as that type so callers can tell it apart.
    """
    import ray

    if len(names) != len(refs):
        raise ValueError(f"{len(names)} names for {len(refs)} calls")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        if not ready:
            late = ", ".join(names[index[r]] for r in pending)
            raise error(f"{what}: no answer within {timeout_s:.0f}s from {late}")
        i = index[ready[0]]
        try:
            results[i] = ray.get(ready[0])
        except Exception as e:  # RayActorError (the actor died), RayTaskError (the call raised)
            cause = getattr(e, "cause", None)
            if keep and isinstance(cause, keep):
                raise type(cause)(f"{what}: {names[i]}: {cause}") from e
            raise error(f"{what}: {names[i]} failed: {root_cause(e)}") from e
    return results
