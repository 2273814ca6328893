"""A persistent worker subprocess that runs answer verifiers under a hard time limit.

Why a process: a sympy call on model text (`2^{10^{10}}`) can hang inside C code, where neither a
signal nor a thread can interrupt it, and math-verify's own `signal.alarm` timeout only works on
the main thread. So verification runs in a child process that imports sympy and math-verify once
and then answers requests over a pipe; when a request passes its time limit the parent kills the
child (SIGKILL), starts a fresh one, and reports `VerifierTimeout`.

Protocol: one JSON object per line. Request `{"verifier", "answer", "ground_truth"}`; reply
`{"value": bool}` or `{"error": "ExceptionType: message"}`. The child first sends `{"ready": true}`
once its imports are done, so import time never counts against a sample's limit. It writes replies
to a private copy of its stdout and points fd 1 at stderr, so a verifier that prints cannot corrupt
the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

VERIFIER_PATHS: dict[str, str] = {
    "math": "reward_server.math_answer:verify_math",
    "arithmetic": "reward_server.verifiers:verify_arithmetic",
    "countdown": "reward_server.verifiers:verify_countdown",
}
"""Verifier name -> `module:function` the worker imports; each is `(answer, ground_truth) -> bool`."""

MEMORY_LIMIT_BYTES = 4 << 30
"""Address-space cap of the worker: a runaway big-integer power grows by ~100 MB/s, and on a shared
machine it must fail with MemoryError long before it hurts the neighbours."""

STARTUP_TIMEOUT_S = 120.0
"""Time the worker may take to import sympy and math-verify (seconds on an idle machine, much more
when many actors start at once on few cores)."""

MAX_ERROR_CHARS = 500
"""Exception texts are cut to this length; they travel in every RewardResult."""


class VerifierTimeout(Exception):
    """The verifier ran past its limit; its process was killed."""


class VerifierError(Exception):
    """The verifier raised (the message is the worker's exception text) or its process died."""


class LineWorker:
    """A child process `python -m MODULE CONFIG_JSON` that answers one JSON line per request line, killed
    and replaced when it hangs or dies. The child first sends `{"ready": true}` (or `{"error": ...}`).
    Subclasses name the module (`MODULE`), themselves in errors (`NAME`), the exception raised when the
    child fails (`ERROR`), and the config they pass (`_config`). Not thread-safe: one request at a time."""

    MODULE: str
    NAME: str
    ERROR: type[Exception]

    def __init__(self, *, startup_timeout_s: float) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        """Processes replaced after a timeout or a crash (a health metric)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._ready = False
        self._start()

    def _config(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the process (idempotent)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    def _start(self) -> None:
        # The child sees the parent's import path, so code given by module path (a test hook included)
        # imports there exactly as it would here.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.MODULE, json.dumps(self._config())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._buffer = b""
        self._ready = False

    def _restart(self) -> None:
        self.close()
        self.restarts += 1
        self._start()

    def _wait_ready(self) -> None:
        if self._ready:
            return
        try:
            reply = self._read_reply(self.startup_timeout_s)
        except TimeoutError:
            self._restart()
            raise self.ERROR(f"{self.NAME} did not start within {self.startup_timeout_s:.0f} s") from None
        if not reply.get("ready"):
            raise self.ERROR(f"{self.NAME} failed to start: {reply.get('error', reply)}")
        self._ready = True

    def _send(self, message: dict) -> None:
        assert self._proc is not None and self._proc.stdin is not None, "the process runs after _start"
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._restart()
            raise self.ERROR(f"{self.NAME} died before the request") from None

    def _read_reply(self, timeout_s: float) -> dict:
        """Next JSON line from the process. TimeoutError past `timeout_s`; `ERROR` if it died."""
        assert self._proc is not None and self._proc.stdout is not None, "the process runs after _start"
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: killed by the OS (out of memory in C) or crashed
                code = self._proc.wait()
                self._restart()
                raise self.ERROR(f"{self.NAME} died (exit code {code})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


class VerifierSandbox(LineWorker):
    """Runs named verifiers in a worker subprocess; kills and replaces it on timeout.

    Not thread-safe: one request at a time (a reward actor scores its chunk sequentially).
    """

    MODULE, NAME, ERROR = "reward_server.sandbox", "verifier worker", VerifierError

    def __init__(
        self,
        timeout_s: float,
        *,
        verifiers: Mapping[str, str] = VERIFIER_PATHS,
        memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.timeout_s = timeout_s
        self.verifiers = dict(verifiers)
        self.memory_limit_bytes = memory_limit_bytes
        super().__init__(startup_timeout_s=startup_timeout_s)

    def _config(self) -> dict:
        return {"verifiers": self.verifiers, "memory_limit_bytes": self.memory_limit_bytes}

    def check(self, verifier: str, answer: str, ground_truth: str) -> bool:
        """The verifier's verdict; raises VerifierTimeout or VerifierError."""
        if verifier not in self.verifiers:
            raise VerifierError(f"unknown verifier {verifier!r}; known: {', '.join(self.verifiers)}")
        self._wait_ready()
        request = {"verifier": verifier, "answer": answer, "ground_truth": ground_truth}
        self._send(request)
        try:
            reply = self._read_reply(self.timeout_s)
        except TimeoutError:
            self._restart()
            raise VerifierTimeout("timeout") from None
        if "error" in reply:
            raise VerifierError(reply["error"])
        return bool(reply["value"])

    def __del__(self) -> None:
        self.close()


# -- the worker side ----------------------------------------------------------------------------


def _load(path: str) -> Callable[[str, str], bool]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _limit_worker(memory_limit_bytes: int) -> None:
    """Cap the worker's memory and make it die with its parent (so a hung sympy call can never
    outlive the reward actor)."""
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _worker_main(config_json: str) -> None:
    # Replies go to a private copy of stdout; fd 1 then points at stderr so stray prints are harmless.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    config = json.loads(config_json)
    try:
        _limit_worker(config["memory_limit_bytes"])
        verifiers = {name: _load(path) for name, path in config["verifiers"].items()}
    except Exception as exc:
        out.write(json.dumps({"error": _error_text(exc)}) + "\n")
        return
    # One call each before "ready": math-verify imports its LaTeX parser on first use (seconds on a
    # busy machine), which would otherwise count against the first sample's limit after a restart.
    for verify in verifiers.values():
        try:
            verify("1", "1")
        except BaseException:  # a hook may refuse "1"; warming up is all that matters
            pass
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            value = verifiers[request["verifier"]](request["answer"], request["ground_truth"])
            reply: dict = {"value": bool(value)}
        except BaseException as exc:  # MemoryError and RecursionError included: report, keep serving
            reply = {"error": _error_text(exc)}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _worker_main(sys.argv[1])
