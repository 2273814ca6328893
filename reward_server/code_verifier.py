"""The `code` verifier: the completion's program runs against the row's test cases in `CodeSandbox`.

The program is the last fenced code block of the answer (after `</think>`), tagged `python`, `py`,
`python3` or untagged. Python only: it is the one interpreter every node of a Ray cluster has (Ray
itself runs on it), so the verifier needs nothing installed; a compiled language would need its
toolchain on every reward node, and its build step inside the sandbox.

The ground truth is a JSON object with one or both of:

    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}          standard input -> standard output
    {"fn_name": "add", "inputs": [[1, 2], ...], "outputs": [3, ...]}   call-based: add(1, 2) == 3
    {"asserts": ["assert add(1, 2) == 3", ...]}                        assert-style, right side a literal

`inputs`/`outputs` are the APPS/TACO `input_output` layout: without `fn_name` each input is a
program's stdin and its stdout must match the output line by line (trailing spaces and trailing
blank lines ignored); with `fn_name` each input is the argument list of that function (a module
function, or a method of a `Solution` class) and its return value must equal the output after a
JSON round trip (an output given as `[value]`, as APPS often writes it, also matches `value`).
Each assert must read `assert EXPR == LITERAL`: the sandbox evaluates EXPR and the host compares.

Why the host compares: an expected value never enters the sandbox, so a program cannot read it
(from the harness's frame, its file, /proc) and print it; it can forge the result line, but only
with a value it computed. A program that returns an object whose `__eq__` is always true gains
nothing either: only its JSON text crosses back.

Every case is its own run (a fresh interpreter under the limits). Without partial credit a sample
stops at its first failing case. Each sample has a budget (`RewardConfig.timeout_s`): cases that
would start past it fail. A program that fails, times out or overflows its output is a wrong answer
(reward 0, the reason recorded), not an error: early in RL most programs fail, and errors count
against `reward.max_error_fraction`. An error is a sandbox that could not start or a malformed
ground truth (a data bug).
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cluster.untyped import JsonValue
from reward_server.code_sandbox import CodeSandbox, RunResult

PYTHON_TAGS = ("", "python", "py", "python3")
"""Fence tags whose block counts as the program."""

RESULT_MARK = "#grpo-ray-result# "
"""Starts the harness's result line on stdout (a program that prints it gains nothing: see the docstring)."""

MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class Case:
    """One test case: a stdin with its expected stdout, or an expression with its expected JSON value."""

    stdin: str = ""
    """The program's standard input (stdio cases)."""
    expected_stdout: str | None = None
    """Expected standard output; None for a value case."""
    expr: str | None = None
    """Python expression the harness evaluates after running the program (value cases)."""
    expected_value: JsonValue = None
    """Expected value, JSON-normalised (lists, not tuples)."""


@dataclass(frozen=True)
class CodeVerdict:
    """How a program did on its cases."""

    passed: int
    total: int
    reason: str | None = None
    """Why not all passed (the first failing case), or the error."""
    error: bool = False
    """The verifier could not judge (sandbox setup failed, malformed ground truth)."""


def extract_program(text: str) -> tuple[str | None, str]:
    """(the last fenced Python block of `text`, '') or (None, why there is none). One linear pass."""
    from reward_server.verifiers import ONLY_IN_THINK, _after_reasoning

    region = _after_reasoning(text)
    if region is None:
        return None, ONLY_IN_THINK
    blocks: list[tuple[str, str]] = []  # (tag, body) of each closed ``` block
    at = 0
    while (start := region.find("```", at)) != -1:
        line_end = region.find("\n", start)
        if line_end == -1:
            break
        end = region.find("```", line_end)
        if end == -1:
            break
        blocks.append((region[start + 3:line_end].strip().lower(), region[line_end + 1:end]))
        at = end + 3
    if not blocks:
        return None, "no fenced code block"
    tag, body = blocks[-1]
    if tag not in PYTHON_TAGS:
        return None, f"last code block is {tag!r}, not Python"
    return body, ""


def parse_cases(ground_truth: str) -> list[Case]:
    """The test cases of a ground-truth JSON (see the module docstring); ValueError if malformed."""
    try:
        spec = json.loads(ground_truth)
    except json.JSONDecodeError as exc:
        raise ValueError(f"code ground truth is not JSON ({exc}): {ground_truth[:80]!r}") from exc
    if not isinstance(spec, dict) or not ({"inputs", "asserts"} & set(spec)):
        raise ValueError(f"code ground truth has neither inputs/outputs nor asserts: {ground_truth[:80]!r}")
    cases: list[Case] = []
    if "inputs" in spec:
        inputs, outputs, fn_name = spec["inputs"], spec.get("outputs"), spec.get("fn_name")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise ValueError("code ground truth: inputs and outputs must be lists of one length")
        for given, want in zip(inputs, outputs, strict=True):
            if fn_name:
                args = given if isinstance(given, list) else [given]
                cases.append(Case(expr=f"_call({fn_name!r}, {json.dumps(args)!r})", expected_value=_normal(want)))
            else:
                cases.append(Case(stdin=_text(given), expected_stdout=_text(want)))
    for line in spec.get("asserts", []):
        cases.append(_assert_case(line))
    if not cases:
        raise ValueError("code ground truth has no test cases")
    return cases


def _assert_case(line: str) -> Case:
    try:
        (node,) = ast.parse(line.strip()).body
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"code ground truth: not one statement: {line[:80]!r}") from exc
    test = node.test if isinstance(node, ast.Assert) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        raise ValueError(f"code ground truth: asserts must read `assert EXPR == LITERAL`: {line[:80]!r}")
    try:
        want = ast.literal_eval(test.comparators[0])
    except ValueError as exc:
        raise ValueError(f"code ground truth: right side is not a literal: {line[:80]!r}") from exc
    return Case(expr=ast.unparse(test.left), expected_value=_normal(want))


def _text(value: JsonValue) -> str:
    return value if isinstance(value, str) else "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _normal(value: object) -> JsonValue:
    """`value` as it comes back from JSON (tuples become lists); ValueError when it has no JSON form."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"code ground truth: expected value has no JSON form: {value!r:.80}") from exc


HARNESS = '''\
import json as _json, sys as _sys
_out, _sys.stdout = _sys.stdout, _sys.stderr  # the program's prints stay off the result line
_ns = {{"__name__": "solution", "__builtins__": __builtins__}}
exec(compile({program!r}, "solution.py", "exec"), _ns)
def _call(name, args_json):
    fn = _ns.get(name)
    if fn is None and "Solution" in _ns:
        fn = getattr(_ns["Solution"](), name)
    return fn(*_json.loads(args_json))
_ns["_call"] = _call
_value = eval(compile({expr!r}, "case", "eval"), _ns)
_out.write("\\n" + {mark!r} + _json.dumps(_value) + "\\n")
_out.flush()
'''
"""Runs the program as a module named `solution` (its `if __name__ == "__main__"` block does not run),
then one case's expression, and prints the value as JSON on a marked line."""


def case_job(program: str, case: Case) -> tuple[str, str]:
    """(source, stdin) of the run that checks `program` on `case`."""
    if case.expr is None:
        return program, case.stdin
    return HARNESS.format(program=program, expr=case.expr, mark=RESULT_MARK), ""


def judge(case: Case, run: RunResult) -> str | None:
    """None when `run` passes `case`, else why not."""
    if run.status != "exited":
        return run.status
    if run.returncode != 0:
        last = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"exit code {run.returncode}: {last[0]}"[:MAX_REASON_CHARS]
    out = run.stdout.decode(errors="replace")
    if case.expected_stdout is not None:
        return None if _lines(out) == _lines(case.expected_stdout) else "wrong output"
    results = [line[len(RESULT_MARK):] for line in out.split("\n") if line.startswith(RESULT_MARK)]
    if not results:
        return "no result"
    try:
        value = json.loads(results[-1])
    except json.JSONDecodeError:
        return "result is not JSON"
    return None if value == case.expected_value or [value] == case.expected_value else "wrong value"


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().splitlines()]


class CodeVerifier:
    """Judges programs on their cases, samples in parallel in one `CodeSandbox`."""

    def __init__(self, sandbox: CodeSandbox, *, partial_credit: bool, sample_budget_s: float) -> None:
        self.sandbox = sandbox
        self.partial_credit = partial_credit
        self.sample_budget_s = sample_budget_s

    def verify_many(self, samples: Sequence[tuple[str, str]]) -> list[CodeVerdict]:
        """A verdict for each (program, ground truth), in order; at most `sandbox.workers` programs at once."""
        with ThreadPoolExecutor(max_workers=self.sandbox.workers) as pool:
            return list(pool.map(lambda s: self.verify(*s), samples))

    def verify(self, program: str, ground_truth: str) -> CodeVerdict:
        """How `program` does on the cases of `ground_truth`; never raises."""
        try:
            cases = parse_cases(ground_truth)
        except ValueError as exc:
            return CodeVerdict(0, 0, str(exc)[:MAX_REASON_CHARS], error=True)
        deadline = time.monotonic() + self.sample_budget_s
        passed, first_failure = 0, None
        for i, case in enumerate(cases):
            left = deadline - time.monotonic()
            if left <= 0:
                first_failure = first_failure or f"case {i}: sample time budget spent"
                break
            try:
                run = self.sandbox.run(*case_job(program, case), wall_s=left)
            except Exception as exc:  # the sandbox itself failed: an error, not the program's fault
                return CodeVerdict(passed, len(cases), f"sandbox: {type(exc).__name__}: {exc}"[:MAX_REASON_CHARS],
                                   error=True)
            if run.status == "setup_failed":
                return CodeVerdict(passed, len(cases), run.stderr.decode(errors="replace")[:MAX_REASON_CHARS],
                                   error=True)
            why = judge(case, run)
            if why is None:
                passed += 1
                continue
            first_failure = first_failure or f"case {i}: {why}"
            if not self.partial_credit:
                break
        return CodeVerdict(passed, len(cases), first_failure)
