"""Tool processes: the tools of multi-turn rollouts run here, never in the engine's process, each call
under a deadline.

    ToolRunner.call(spec, argument)  (thread-safe; a rollout worker calls it from asyncio.to_thread)
        takes an idle ToolProcess of its pool (`workers` of them) ── one JSON line ──► the process
        ◄── {"output": ...} or {"error": ...}; past `timeout_s` the process is SIGKILLed and replaced

A tool that raises, hangs, or kills its process gives a `ToolOutcome` with `error` set and the text the
model sees (`Error: ...`): a bounded, recorded failure that never stops the rollout. The processes follow
the verifier worker's design (`reward_server.sandbox`): tool classes are imported once, replies go to a
private copy of stdout (a tool that prints cannot corrupt the protocol), memory is capped, and each dies
with its parent.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from reward_server.sandbox import (
    MAX_ERROR_CHARS,
    MEMORY_LIMIT_BYTES,
    STARTUP_TIMEOUT_S,
    LineWorker,
    _error_text,
    _limit_worker,
)
from reward_server.tools import tool_class


@dataclass(frozen=True)
class ToolOutcome:
    """One tool call: the text appended for the model, and the failure when there was one."""

    output: str
    """What the tool returned, or `Error: <reason>` when it failed."""
    error: str | None = None
    """Why the call failed ('timeout after 2 s', 'ZeroDivisionError: ...'); None when it returned."""
    seconds: float = 0.0


class ToolProcessError(RuntimeError):
    """A tool process died or never started; it was replaced."""


class ToolProcess(LineWorker):
    """One tool process: every configured tool imported once, one call at a time."""

    MODULE, NAME, ERROR = "reward_server.tool_runner", "tool process", ToolProcessError

    def __init__(self, specs: Sequence[str], *, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 memory_limit_bytes: int = MEMORY_LIMIT_BYTES) -> None:
        self.specs = list(specs)
        self.memory_limit_bytes = memory_limit_bytes
        super().__init__(startup_timeout_s=startup_timeout_s)

    def _config(self) -> dict:
        return {"tools": self.specs, "memory_limit_bytes": self.memory_limit_bytes}

    def call(self, spec: str, argument: str, timeout_s: float) -> ToolOutcome:
        start = time.monotonic()
        try:
            self._wait_ready()
            self._send({"tool": spec, "argument": argument})
            reply = self._read_reply(timeout_s)
        except TimeoutError:
            self._restart()
            return _failed(f"timeout after {timeout_s:g} s", start)
        except ToolProcessError as err:
            return _failed(str(err), start)
        if "error" in reply:
            return _failed(reply["error"], start)
        return ToolOutcome(output=str(reply["output"]), seconds=time.monotonic() - start)


def _failed(reason: str, start: float) -> ToolOutcome:
    reason = reason[:MAX_ERROR_CHARS]
    return ToolOutcome(output=f"Error: {reason}", error=reason, seconds=time.monotonic() - start)


class ToolRunner:
    """A pool of `workers` tool processes; `call` blocks until one is free, then runs the call on it."""

    def __init__(self, specs: Sequence[str], *, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._processes = [ToolProcess(specs) for _ in range(max(1, workers))]
        self._idle: queue.Queue[ToolProcess] = queue.Queue()
        for p in self._processes:
            self._idle.put(p)

    def call(self, spec: str, argument: str) -> ToolOutcome:
        process = self._idle.get()
        try:
            return process.call(spec, argument, self.timeout_s)
        finally:
            self._idle.put(process)

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self._processes)

    def close(self) -> None:
        for p in self._processes:
            p.close()


# -- the process side ------------------------------------------------------------------------------


def _process_main(config_json: str) -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    config = json.loads(config_json)
    try:
        _limit_worker(config["memory_limit_bytes"])
        tools = {spec: tool_class(spec)() for spec in config["tools"]}
    except Exception as exc:
        out.write(json.dumps({"error": _error_text(exc)}) + "\n")
        return
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply: dict = {"output": str(tools[request["tool"]](request["argument"]))}
        except BaseException as exc:  # MemoryError and RecursionError included: report, keep serving
            reply = {"error": _error_text(exc)}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _process_main(sys.argv[1])
