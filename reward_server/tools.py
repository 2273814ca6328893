"""Tools a policy may call during a multi-turn rollout: plain Python classes behind a small registry.

    response so far ... <calc>123456+654321</calc>      generation stops at the tool's `call_end`
        -> the tool runs (in a tool process, `reward_server.tool_runner`, never in the engine's process)
        -> <result>777777</result> is appended as token ids with loss mask 0; generation continues

A tool is any class with the attributes of `Tool` and a `__call__(argument) -> str`; it is named in
`rollout.tools` by a registered name (`TOOL_PATHS`) or by `module:Class`. Its `schema()` is the
OpenAI-style function description a chat template with tool support (Qwen2.5's, for one) renders into
the system prompt; a base model learns the markers from its prompt instead.

`ToolSettings` is what crosses from the controller to the rollout engines: which tools each data source
may call, and the limits of a multi-turn rollout.
"""

from __future__ import annotations

import ast
import importlib
import json
import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

TOOL_PATHS: dict[str, str] = {
    "calculator": "reward_server.tools:Calculator",
    "python": "reward_server.tools:PythonTool",
}
"""Registered tool name -> `module:Class` (a tool process imports it)."""

ALL_SOURCES = "*"
"""The data source of a `rollout.tools` pair that applies to every source not named on its own."""


class Tool(Protocol):
    """What the rollout worker and the tool process read of a tool class."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]
    """JSON schema of the tool's one argument object (for `schema()`)."""
    call_start: ClassVar[str]
    call_end: ClassVar[str]
    """Generation stops at this string; the argument is the text between the last `call_start` and it."""
    output_start: ClassVar[str]
    output_end: ClassVar[str]
    """The tool's output is appended between these two, with loss mask 0."""

    def __call__(self, argument: str) -> str: ...


def schema(tool: type[Tool]) -> dict[str, Any]:
    """The tool as a chat template's `tools=[...]` entry (OpenAI function-calling layout)."""
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}


JSON_FORMAT = "@json"
"""Suffix of a tool spec (`calculator@json`) whose calls use Qwen2.5's format instead of the tool's markers."""
JSON_CALL_START, JSON_CALL_END = "<tool_call>", "</tool_call>"
"""Qwen2.5's call markers around `{"name": ..., "arguments": {...}}` (its chat template's tool instructions)."""
JSON_OUTPUT_START, JSON_OUTPUT_END = "<tool_response>\n", "\n</tool_response>"
"""Around the output of a JSON-format call, as Qwen2.5's chat template renders a tool's reply."""


def is_json(spec: str) -> bool:
    """Whether the spec's calls use Qwen2.5's `<tool_call>` JSON format (`JSON_FORMAT`)."""
    return spec.endswith(JSON_FORMAT)


def call_end(spec: str, tool: type[Tool]) -> str:
    """The string that ends a call of the tool named by `spec` (generation stops there)."""
    return JSON_CALL_END if is_json(spec) else tool.call_end


def output_markers(spec: str, tool: type[Tool]) -> tuple[str, str]:
    """(start, end) around the output of a call of the tool named by `spec`."""
    return (JSON_OUTPUT_START, JSON_OUTPUT_END) if is_json(spec) else (tool.output_start, tool.output_end)


def tool_class(spec: str) -> type[Tool]:
    """The class of a registered name or a `module:Class` path, with or without the `@json` suffix;
    ValueError when neither."""
    spec = spec.removesuffix(JSON_FORMAT)
    path = TOOL_PATHS.get(spec, spec)
    module, sep, name = path.partition(":")
    if not sep:
        raise ValueError(f"unknown tool {spec!r}; registered: {', '.join(TOOL_PATHS)}, or give module:Class")
    return getattr(importlib.import_module(module), name)


def find_call(text: str, tools: dict[str, type[Tool]]) -> tuple[str, str] | None:
    """(tool spec, argument) of the call that ends `text` (one turn's output, stop string included), or None.

    A marker call's argument is the text between the tool's markers. A JSON-format call (specs with `@json`)
    is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: the name picks the tool among the source's
    JSON-format tools, and the argument is `json_argument`'s. Malformed JSON or an unknown name is no call."""
    for spec, tool in tools.items():
        if not is_json(spec) and text.endswith(tool.call_end):
            body = text[: len(text) - len(tool.call_end)]
            start = body.rfind(tool.call_start)
            if start >= 0:
                return spec, body[start + len(tool.call_start):]
    by_name = {tool.name: spec for spec, tool in tools.items() if is_json(spec)}
    if by_name and text.endswith(JSON_CALL_END):
        body = text[: len(text) - len(JSON_CALL_END)]
        start = body.rfind(JSON_CALL_START)
        if start >= 0:
            return _json_call(body[start + len(JSON_CALL_START):], by_name, tools)
    return None


def _json_call(payload: str, by_name: dict[str, str], tools: dict[str, type[Tool]]) -> tuple[str, str] | None:
    try:
        call = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or call["name"] not in by_name:
        return None
    spec = by_name[call["name"]]
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI's layout sends the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return spec, json_argument(tools[spec], arguments)


def json_argument(tool: type[Tool], arguments: Any) -> str:
    """The string a tool's `__call__` gets from a JSON call's arguments: the value of the tool's one required
    parameter when it is a string (`{"expression": "1+2"}` -> "1+2" for the calculator), else the arguments
    as JSON text."""
    required = tool.parameters.get("required") or list(tool.parameters.get("properties", {}))
    if isinstance(arguments, dict) and len(required) == 1 and isinstance(arguments.get(required[0]), str):
        return str(arguments[required[0]])
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolSettings:
    """Tools per data source and the limits of a multi-turn rollout (`RolloutConfig.tool_settings`; the
    defaults and their reasons live in `trainer.config_sections.MultiTurnConfig`)."""

    by_source: tuple[tuple[str, tuple[str, ...]], ...]
    """(data source, tool specs) pairs; source "*" applies to every source not named."""
    max_turns: int
    """Policy turns per response (tool calls are at most max_turns - 1 of them)."""
    max_tool_output_tokens: int
    """Tokens of one tool output appended, its markers included; a longer output is cut (the markers kept)."""
    timeout_s: float
    """Deadline of one tool call; past it the tool process is killed and the call is a recorded failure."""
    workers: int
    """Tool processes per rollout engine (calls of concurrent samples run in parallel on them)."""

    def tools_for(self, source: str) -> tuple[str, ...]:
        table = dict(self.by_source)
        return table.get(source, table.get(ALL_SOURCES, ()))

    def all_tools(self) -> tuple[str, ...]:
        return tuple(sorted({t for _, specs in self.by_source for t in specs}))


def parse_tool_routes(routes: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`("math:python", "*:calculator+python")` -> (("math", ("python",)), ("*", ("calculator", "python")));
    a spec may end in `@json` (Qwen2.5's call format). ValueError on a malformed or repeated source, a tool
    that does not import, or two JSON-format tools of one source with the same name."""
    out: dict[str, tuple[str, ...]] = {}
    for pair in routes:
        source, sep, names = (part.strip() for part in pair.partition(":"))
        if not (sep and source and names):
            raise ValueError(f"rollout.tools: {pair!r} is not of the form source:tool[+tool...]")
        if source in out:
            raise ValueError(f"rollout.tools: source {source!r} is named twice")
        specs = tuple(s.strip() for s in names.split("+"))
        names_seen = [tool_class(spec).name for spec in specs if is_json(spec)]
        if len(set(names_seen)) < len(names_seen):
            raise ValueError(f"rollout.tools: source {source!r} has two JSON-format tools of one name")
        for spec in specs:
            tool_class(spec)
        out[source] = specs
    return tuple(out.items())


# --- the built-in tools ------------------------------------------------------------------------------

MAX_DIGITS = 4000
"""Largest integer (in decimal digits) the calculator handles; past it the call fails instead of eating the
tool process's memory (`9**9**9`)."""

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


class Calculator:
    """Arithmetic on integers and decimals: + - * / // % ** and parentheses (no names, no calls)."""

    name: ClassVar[str] = "calculator"
    description: ClassVar[str] = "Evaluate an arithmetic expression exactly and return its value."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["expression"],
        "properties": {"expression": {"type": "string", "description": "e.g. 123456789+987654321"}}}
    call_start: ClassVar[str] = "<calc>"
    call_end: ClassVar[str] = "</calc>"
    output_start: ClassVar[str] = "<result>"
    output_end: ClassVar[str] = "</result>"

    def __call__(self, argument: str) -> str:
        value = self._eval(ast.parse(argument.strip(), mode="eval").body)
        return str(value)

    def _eval(self, node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self._eval(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self._eval(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) * len(str(abs(int(left)))) > MAX_DIGITS:
                raise ValueError("result too large")
            value = _BINARY[type(node.op)](left, right)
            if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 4:
                raise ValueError("result too large")
            return value
        raise ValueError(f"not arithmetic: {ast.dump(node)[:80]}")


PYTHON_WALL_S = 5.0
"""Wall-clock limit of one program the `python` tool runs (below the default tool deadline, so a slow
program comes back as its own timeout rather than as a killed tool process)."""
MAX_OUTPUT_CHARS = 2000
"""Characters of a program's output the `python` tool returns (the rollout cuts tokens again)."""


class PythonTool:
    """Runs a Python program in the code sandbox (`reward_server.code_sandbox`) and returns what it printed,
    or the last line of its error; the ReTool / SimpleTIR code interpreter."""

    name: ClassVar[str] = "python"
    description: ClassVar[str] = "Run a Python program and return its standard output."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["code"],
        "properties": {"code": {"type": "string", "description": "a Python program; print the results"}}}
    call_start: ClassVar[str] = "<code>"
    call_end: ClassVar[str] = "</code>"
    output_start: ClassVar[str] = "<interpreter>"
    output_end: ClassVar[str] = "</interpreter>"

    def __init__(self) -> None:
        from reward_server.code_sandbox import CodeSandbox, SandboxLimits

        self.sandbox = CodeSandbox(SandboxLimits(wall_s=PYTHON_WALL_S), workers=1)

    def __call__(self, argument: str) -> str:
        program = _strip_fence(argument)
        result = self.sandbox.run(program)
        if result.ok:
            return result.stdout.decode(errors="replace")[:MAX_OUTPUT_CHARS]
        if result.status != "exited":
            return f"Error: {result.status}"
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return (lines[-1] if lines else f"Error: exit code {result.returncode}")[:MAX_OUTPUT_CHARS]


def _strip_fence(code: str) -> str:
    """A program written in a ```python fence inside the call markers, without the fence."""
    text = code.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text
