"""Waiting on remote calls with a deadline, and errors that say which actor failed and why.

    refs of one verb on several actors --get_all(timeout_s)--> results in order
        or RemoteCallError("<what>: <actor> died / raised <root cause> / no answer within <t> s")

Every wait in progress is listed in a registry (`tracking`, `pending_calls`: what, which actors have
not answered, since when), which the driver's stall watchdog (`trainer.watchdog`) reports from.

Every remote call of a run goes through here: the first failure is raised at once (the other calls may
still be running), and a call that does not answer within its deadline names every actor still pending.
An actor that died is reported as its death (with Ray's reason), not as the failure of its peer that
then timed out waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray import ObjectRef



class RemoteCallError(RuntimeError):
    """A remote call failed or missed its deadline; the message names the component and the root cause."""


@dataclass
class PendingCall:
    """A wait in progress: `what` ("generate (8 prompts x 8)"), the actors that have not answered yet."""

    what: str
    waiting: list[str]
    since: float = field(default_factory=time.time)
    """Wall-clock start (time.time())."""
    timeout_s: float | None = None


_PENDING: dict[int, PendingCall] = {}
_PENDING_LOCK = threading.Lock()


@contextmanager
def tracking(what: str, waiting: Sequence[str], timeout_s: float | None = None) -> Iterator[PendingCall]:
    """List a wait in the registry while it runs; update `call.waiting` as answers come in."""
    call = PendingCall(what, list(waiting), timeout_s=timeout_s)
    with _PENDING_LOCK:
        _PENDING[id(call)] = call
    try:
        yield call
    finally:
        with _PENDING_LOCK:
            _PENDING.pop(id(call), None)


def pending_calls() -> list[PendingCall]:
    """Copies of the waits in progress, oldest first."""
    with _PENDING_LOCK:
        calls = [replace(c, waiting=list(c.waiting)) for c in _PENDING.values()]
    return sorted(calls, key=lambda c: c.since)


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


def get_all(refs: Sequence[ObjectRef[Any]], *, what: str, names: Sequence[str], timeout_s: float | None,
            error: type[Exception] = RemoteCallError, keep: tuple[type[Exception], ...] = ()) -> list[Any]:
    """`ray.get` of every ref within `timeout_s` (None: no deadline), raising on the first failure.

    `names[i]` names the actor behind `refs[i]` ("engine 1", "learner rank 3"); `what` names the call
    ("generate", "weight sync of version 7"). Failures raise `error`, except an actor's own exception of
    a type in `keep` (e.g. StaleEngineError), which is raised as that type so callers can tell it apart.
    """
    results: list[Any] = [None] * len(refs)
    for turn in _in_turn(refs, what=what, names=names, timeout_s=timeout_s):
        if turn[0] is None:
            raise error(f"{what}: no answer within {timeout_s:.0f}s from {', '.join(names[j] for j in turn[1])}")
        i, ref = turn
        try:
            results[i] = _get(ref, what=what, name=names[i], keep=keep)
        except _Failed as e:
            raise error(f"{what}: {names[i]} failed: {root_cause(e.error)}") from e.error
    return results


class _Failed(Exception):
    """A call that raised or whose actor died (`error`: Ray's exception)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _in_turn(refs: Sequence[ObjectRef[Any]], *, what: str, names: Sequence[str], timeout_s: float | None
             ) -> Iterator[tuple[int, ObjectRef[Any]] | tuple[None, list[int]]]:
    """(index, ref) of each call as it finishes, listed in the registry while waiting; at the deadline one
    last (None, indexes of the calls still pending)."""
    import ray

    if len(names) != len(refs):
        raise ValueError(f"{len(names)} names for {len(refs)} calls")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    with tracking(what, names, timeout_s) as call:
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            call.waiting = [names[index[r]] for r in pending]
            if not ready:
                yield None, [index[r] for r in pending]
                return
            yield index[ready[0]], ready[0]


def _get(ref: ObjectRef[Any], *, what: str, name: str, keep: tuple[type[Exception], ...]) -> Any:
    """`ray.get` of a finished call; an actor's own exception of a type in `keep` is raised as that type,
    any other failure as _Failed."""
    import ray

    try:
        return ray.get(ref)
    except Exception as e:  # RayActorError (the actor died), RayTaskError (the call raised)
        cause = getattr(e, "cause", None)
        if keep and isinstance(cause, keep):
            raise type(cause)(f"{what}: {name}: {cause}") from e
        raise _Failed(e) from e


@dataclass(frozen=True)
class CallFailure:
    """One call of a `wait_each` that raised, whose actor died, or that missed the deadline."""

    name: str
    """The actor ("engine 1")."""
    cause: str
    """The root cause, as `root_cause` words it, or "gave no answer within <t>s"."""
    died: bool = False
    """The actor process is gone (Ray reported its death)."""
    timed_out: bool = False
    """No answer by the deadline: the actor may be hung (alive, but no use)."""

    def __str__(self) -> str:
        return f"{self.name}: {self.cause}"


def wait_each(refs: Sequence[ObjectRef[Any]], *, what: str, names: Sequence[str], timeout_s: float | None,
              keep: tuple[type[Exception], ...] = ()) -> list[Any]:
    """Like `get_all`, but every call gets its answer: a result, or a `CallFailure` for a call that
    raised, died or had not answered by the common deadline, so a caller can replace the failed actors
    and keep the others' work. An actor's own exception of a type in `keep` is raised at once."""
    results: list[Any] = [None] * len(refs)
    for i, result in each_as_done(refs, what=what, names=names, timeout_s=timeout_s, keep=keep):
        results[i] = result
    return results


def each_as_done(refs: Sequence[ObjectRef[Any]], *, what: str, names: Sequence[str], timeout_s: float | None,
                 keep: tuple[type[Exception], ...] = ()) -> Iterator[tuple[int, Any]]:
    """`wait_each` one call at a time: (index, result or `CallFailure`) of each call the moment it finishes,
    so a caller can use one actor's answer while the others still work; at the common deadline, a
    `CallFailure` for each call still pending. An exception of a type in `keep` is raised at once."""
    import ray

    for turn in _in_turn(refs, what=what, names=names, timeout_s=timeout_s):
        if turn[0] is None:
            for j in turn[1]:
                yield j, CallFailure(names[j], f"gave no answer to {what} within {timeout_s:.0f}s", timed_out=True)
            return
        i, ref = turn
        try:
            result = _get(ref, what=what, name=names[i], keep=keep)
        except _Failed as e:
            result = CallFailure(names[i], f"failed in {what}: {root_cause(e.error)}",
                                 died=isinstance(e.error, ray.exceptions.RayActorError))
        yield i, result
