"""The demo's tasks: seeded generators for addition with a digit-by-digit chain of thought, Countdown, and
a one-line function to write from input/output examples (scored by running it).

Each row of a data set is a `TaskExample`, written as one JSONL line with the fields the trainer reads
(`prompt`: the bare question, `ground_truth`, `task`) plus `solution` for Countdown.

Arithmetic: "What is 347+86?". The reference completion (what follows the template's "<think>") adds
column by column from the least significant digit, each step "a+b+carry=sum":

    7+6+0=13,4+8+1=13,3+0+1=4</think><answer>433</answer>

A missing digit of the shorter number is written as 0; the answer is the steps' last digits read
backwards, led by the final carry. `arithmetic_completion(..., wrong_step=i)` writes one step with a
wrong sum and carries on consistently from it, so the answer is wrong: pretraining on a share of those
leaves the base model imperfect in a way that RL can fix.

Countdown: given 3-4 numbers and a target, an equation that uses each number exactly once with
+ - * / and parentheses. Instances are generated backwards (combine the numbers in a random order with
random operations, keeping every intermediate a non-negative integer), so each one is solvable and
stores its solution. The ground truth is JSON `{"numbers": [...], "target": int}`, which
`reward_server.verifiers.verify_countdown` reads.

Function: "Write f(x) in one line. f(0)=49, f(1)=52, f(2)=55." The function is `x*x*q + x*a + b` with q in
{0, 1}, a in 0..9 and b in 0..99, shown at x = 0, 1, 2; the reference completion takes the two
differences, then writes the program (quadratic when they differ, and then a = first difference - 1):

    52-49=3,55-52=3</think><answer>```python
    def f(x): return x*3+49
    ```</answer>

The ground truth is the `code` verifier's JSON (docs/code_rewards.md) with one assert over hidden inputs
(4 of 3..20, never the shown 0, 1, 2): `{"asserts": ["assert [f(x) for x in (4, 9, 13, 17)] == [...]"]}`;
one assert, so a sample costs one sandbox run. `function_completion(..., wrong_step=i)` writes one
difference off by one or two and the program that follows from it, as `arithmetic_completion` does.

Splits: questions are unique within a data set and the held-out split shares no question with the
train split (for addition, a+b and b+a count as the same question).
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ARITHMETIC = "arithmetic"
COUNTDOWN = "countdown"
FUNCTION = "code"
"""The function task's rows name the `code` verifier as their task, so any verifier setting scores them by running."""

ARITHMETIC_MIN, ARITHMETIC_MAX = 10, 999
"""Operands have 2 or 3 digits (the task checked to be learnable on this CPU, DESIGN.md "Facts")."""
MAX_STEP_SUM = 19
"""Largest column sum, 9+9+1; a wrong step's sum stays in 0..19 so it still looks like a column sum."""
WRONG_SUM_DELTAS = (-2, -1, 1, 2)
"""How far a wrong step's sum is off: near misses, the kind of slip sampling makes."""

COUNTDOWN_NUMBER_MIN, COUNTDOWN_NUMBER_MAX = 1, 99
COUNTDOWN_TARGET_MIN, COUNTDOWN_TARGET_MAX = 1, 999
COUNTDOWN_SIZES = (3, 4)
"""How many numbers an instance gives."""

FUNCTION_A_MAX = 9
FUNCTION_B_MAX = 99
"""Coefficients: a in 0..9 keeps each difference small (at most 12), b in 0..99 makes 2,000 functions."""
FUNCTION_SHOWN = (0, 1, 2)
"""Inputs shown in the prompt: f(0) is b, and the differences give a and whether x*x is there."""
FUNCTION_HIDDEN_RANGE = (3, 20)
FUNCTION_HIDDEN_COUNT = 4
"""Hidden inputs per function, drawn from FUNCTION_HIDDEN_RANGE (none of them shown)."""
WRONG_DIFF_DELTAS = (-2, -1, 1, 2)

_ARITHMETIC_QUESTION = re.compile(r"^What is (\d+)\+(\d+)\?$")
_FUNCTION_QUESTION = re.compile(r"^Write f\(x\) in one line\. f\(0\)=(\d+), f\(1\)=(\d+), f\(2\)=(\d+)\.$")


@dataclass(frozen=True)
class TaskExample:
    """One data set row."""

    prompt: str
    """The bare question; the trainer applies the template."""
    ground_truth: str
    """What the task's verifier compares the answer with (an integer, or Countdown's JSON)."""
    task: str
    """Which verifier scores it: "arithmetic", "countdown" or "code"."""
    solution: str | None = None
    """Countdown only: an equation that reaches the target."""

    def to_json(self) -> str:
        row = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(row, sort_keys=True)

    @staticmethod
    def from_json(line: str) -> TaskExample:
        row = json.loads(line)
        return TaskExample(row["prompt"], row["ground_truth"], row["task"], row.get("solution"))


# --------------------------------------------------------------------------------------- arithmetic


def arithmetic_question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def parse_arithmetic_question(question: str) -> tuple[int, int]:
    match = _ARITHMETIC_QUESTION.match(question)
    if match is None:
        raise ValueError(f"not an addition question: {question!r}")
    return int(match.group(1)), int(match.group(2))


def arithmetic_steps(a: int, b: int, *, wrong_step: int | None = None,
                     wrong_delta: int = 1) -> tuple[list[str], str]:
    """The column steps of a+b and the answer they lead to.

    With `wrong_step=i`, step i's sum is off by `wrong_delta` (kept within 0..19; the sign flips if it
    would leave that range), and the later carries and the answer follow the wrong sum.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    steps, digits, carry = [], [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        if i == wrong_step:
            wrong = total + wrong_delta
            total = wrong if 0 <= wrong <= MAX_STEP_SUM else total - wrong_delta
        steps.append(f"{x}+{y}+{carry}={total}")
        digits.append(str(total % 10))
        carry = total // 10
    answer = (str(carry) if carry else "") + "".join(reversed(digits))
    return steps, str(int(answer))


def arithmetic_completion(a: int, b: int, *, wrong_step: int | None = None, wrong_delta: int = 1) -> str:
    """The reference completion: chain of thought, then the answer (see the module docstring)."""
    steps, answer = arithmetic_steps(a, b, wrong_step=wrong_step, wrong_delta=wrong_delta)
    return ",".join(steps) + f"</think><answer>{answer}</answer>"


def generate_arithmetic(n: int, seed: int) -> list[TaskExample]:
    """`n` distinct addition questions (a+b and b+a count as one)."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < n:
        a, b = rng.randint(ARITHMETIC_MIN, ARITHMETIC_MAX), rng.randint(ARITHMETIC_MIN, ARITHMETIC_MAX)
        key = (min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        rows.append(TaskExample(arithmetic_question(a, b), str(a + b), ARITHMETIC))
    return rows


def arithmetic_key(example: TaskExample) -> tuple[int, int]:
    a, b = parse_arithmetic_question(example.prompt)
    return min(a, b), max(a, b)


# ---------------------------------------------------------------------------------------- countdown

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


@dataclass(frozen=True)
class _Expr:
    value: int
    text: str
    precedence: int


def _combine(left: _Expr, op: str, right: _Expr) -> _Expr | None:
    """left op right if it stays a non-negative integer (exact division, no division by zero)."""
    if op == "+":
        value = left.value + right.value
    elif op == "-":
        value = left.value - right.value
    elif op == "*":
        value = left.value * right.value
    else:
        if right.value == 0 or left.value % right.value:
            return None
        value = left.value // right.value
    if value < 0:
        return None
    p = _PRECEDENCE[op]
    # Parentheses only where precedence needs them: a-(b+c) and a/(b*c) keep theirs, (a+b)+c does not.
    lt = left.text if left.precedence >= p else f"({left.text})"
    rt = right.text if right.precedence > p or (right.precedence == p and op in "+*") else f"({right.text})"
    return _Expr(value, f"{lt}{op}{rt}", p)


def _random_solution(numbers: list[int], rng: random.Random) -> _Expr | None:
    """Combine all numbers in a random order into one expression; None if no operation fitted a pair."""
    pool = [_Expr(x, str(x), _ATOM) for x in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        # Try the operations in a random order, each both ways round, and keep the first that stays a
        # non-negative integer; picking one op blindly would reject most "-" and "/" and skew to "+".
        combined = None
        for op in rng.sample("+-*/", 4):
            combined = _combine(pool[i], op, pool[j]) or _combine(pool[j], op, pool[i])
            if combined is not None:
                break
        if combined is None:
            return None
        pool = [e for k, e in enumerate(pool) if k not in (i, j)] + [combined]
    return pool[0]


def countdown_question(numbers: list[int], target: int) -> str:
    return (f"Using the numbers {numbers}, create an equation that equals {target}. "
            "Use +, -, *, / and each number exactly once.")


def countdown_ground_truth(numbers: list[int], target: int) -> str:
    return json.dumps({"numbers": numbers, "target": target})


def generate_countdown(n: int, seed: int) -> list[TaskExample]:
    """`n` distinct solvable Countdown instances (same multiset of numbers and target count as one)."""
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    rows = []
    while len(rows) < n:
        numbers = [rng.randint(COUNTDOWN_NUMBER_MIN, COUNTDOWN_NUMBER_MAX) for _ in range(rng.choice(COUNTDOWN_SIZES))]
        found = _random_solution(numbers, rng)
        if found is None:
            continue
        target, equation = found.value, found.text
        key = (tuple(sorted(numbers)), target)
        if not COUNTDOWN_TARGET_MIN <= target <= COUNTDOWN_TARGET_MAX or key in seen:
            continue
        seen.add(key)
        rows.append(TaskExample(countdown_question(numbers, target),
                                countdown_ground_truth(numbers, target), COUNTDOWN, equation))
    return rows


def countdown_key(example: TaskExample) -> tuple[tuple[int, ...], int]:
    truth = json.loads(example.ground_truth)
    return tuple(sorted(truth["numbers"])), truth["target"]


def countdown_completion(example: TaskExample) -> str:
    """A reference completion: the solution's steps, evaluated left to right, then the equation."""
    if example.solution is None:
        raise ValueError("a countdown example needs its solution")
    steps = _steps_of(example.solution)
    return ",".join(steps) + f"</think><answer>{example.solution}</answer>"


def _steps_of(equation: str) -> list[str]:
    """The binary operations of `equation` in evaluation order, e.g. "36-19=17" (exact integers only)."""

    steps: list[str] = []
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = walk(node.left), walk(node.right)
            op = ops[type(node.op)]
            value = {"+": left + right, "-": left - right, "*": left * right}.get(op)
            if value is None:
                if right == 0 or left % right:
                    raise ValueError(f"inexact division in {equation!r}")
                value = left // right
            steps.append(f"{left}{op}{right}={value}")
            return value
        raise ValueError(f"unexpected node in a generated solution: {ast.dump(node)}")

    walk(ast.parse(equation, mode="eval").body)
    return steps


# ----------------------------------------------------------------------------------------- function


def function_expression(q: int, a: int, b: int) -> str:
    """The canonical one-line body of x*x*q + x*a + b, e.g. "x*x+x*3+49", "x+7", "x*4", "12"."""
    terms = (["x*x"] if q else []) + ([] if a == 0 else ["x"] if a == 1 else [f"x*{a}"]) + ([str(b)] if b else [])
    return "+".join(terms) or "0"


def function_value(q: int, a: int, b: int, x: int) -> int:
    return q * x * x + a * x + b


def function_question(q: int, a: int, b: int) -> str:
    y0, y1, y2 = (function_value(q, a, b, x) for x in FUNCTION_SHOWN)
    return f"Write f(x) in one line. f(0)={y0}, f(1)={y1}, f(2)={y2}."


def parse_function_question(question: str) -> tuple[int, int, int]:
    """The shown values f(0), f(1), f(2)."""
    match = _FUNCTION_QUESTION.match(question)
    if match is None:
        raise ValueError(f"not a function question: {question!r}")
    y0, y1, y2 = (int(g) for g in match.groups())
    return y0, y1, y2


def function_ground_truth(q: int, a: int, b: int, hidden: Iterable[int]) -> str:
    """The `code` verifier's JSON: one assert over the hidden inputs (docs/code_rewards.md)."""
    xs = tuple(hidden)
    want = [function_value(q, a, b, x) for x in xs]
    return json.dumps({"asserts": [f"assert [f(x) for x in {xs!r}] == {want!r}"]})


def function_completion(question: str, *, wrong_step: int | None = None, wrong_delta: int = 1) -> str:
    """The reference completion: the two differences, then the program that follows from them.

    With `wrong_step=i` (0 or 1), difference i is off by `wrong_delta` (or by its negative, when the
    difference would fall below 0 or the slip would still lead to the right program; a quadratic's second
    difference, whose size does not shape the program, is written equal to the first) and the program
    follows the wrong difference, so it is wrong.
    """
    y = parse_function_question(question)
    right = (y[1] - y[0], y[2] - y[1])
    diffs = right
    if wrong_step is not None:
        slips = [right[wrong_step] + wrong_delta, right[wrong_step] - wrong_delta] + ([right[0]] if wrong_step else [])
        candidates = [tuple(d if i == wrong_step else right[i] for i in range(2)) for d in slips if d >= 0]
        diffs = next(c for c in candidates if _program_of(y[0], *c) != _program_of(y[0], *right))
    steps = ",".join(f"{y[i + 1]}-{y[i]}={d}" for i, d in enumerate(diffs))
    return f"{steps}</think><answer>```python\ndef f(x): return {_program_of(y[0], *diffs)}\n```</answer>"


def _program_of(y0: int, d1: int, d2: int) -> str:
    """The expression the differences imply: x*x is there when they differ, and then a = d1 - 1."""
    q = int(d2 != d1)
    return function_expression(q, max(d1 - q, 0), y0)


def generate_function(n: int, seed: int) -> list[TaskExample]:
    """`n` distinct functions (at most 2,000: every q, a, b), each with its own hidden inputs."""
    total = 2 * (FUNCTION_A_MAX + 1) * (FUNCTION_B_MAX + 1)
    if n > total:
        raise ValueError(f"the function task has {total} distinct questions, not {n}")
    rng = random.Random(seed)
    seen: set[tuple[int, int, int]] = set()
    rows = []
    while len(rows) < n:
        key = (rng.randint(0, 1), rng.randint(0, FUNCTION_A_MAX), rng.randint(0, FUNCTION_B_MAX))
        if key in seen:
            continue
        seen.add(key)
        hidden = sorted(rng.sample(range(FUNCTION_HIDDEN_RANGE[0], FUNCTION_HIDDEN_RANGE[1] + 1),
                                   FUNCTION_HIDDEN_COUNT))
        rows.append(TaskExample(function_question(*key), function_ground_truth(*key, hidden), FUNCTION))
    return rows


def noisy_function_completion(example: TaskExample, rng: random.Random, wrong_share: float) -> str:
    """The reference completion, or with probability `wrong_share` one with a wrong difference."""
    if rng.random() >= wrong_share:
        return function_completion(example.prompt)
    return function_completion(example.prompt, wrong_step=rng.randrange(2), wrong_delta=rng.choice(WRONG_DIFF_DELTAS))


_ARITH_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: lambda u, v: u + v, ast.Sub: lambda u, v: u - v, ast.Mult: lambda u, v: u * v}
_PROGRAM_FENCE = re.compile(r"```(?:python|py|python3)?\n(.*?)```", re.S)
_HIDDEN_ASSERT = re.compile(r"^assert \[f\(x\) for x in \(([\d, ]+)\)\] == \[([-\d, ]+)\]$")


def check_function_answer(answer: str, ground_truth: str) -> bool:
    """A fast check of an answer to the function task without running it: the program must read
    `def f(x): return EXPR` with EXPR made of x, integers, +, - and * only, evaluated here on the hidden
    inputs. It accepts a subset of what the `code` verifier's sandbox does (the base build's quick
    evaluation uses it; training and its evaluation run programs in the sandbox)."""
    blocks = _PROGRAM_FENCE.findall(answer)
    match = _HIDDEN_ASSERT.match(json.loads(ground_truth)["asserts"][0])
    if not blocks or match is None:
        return False
    try:
        (fn,) = ast.parse(blocks[-1]).body
    except (SyntaxError, ValueError):
        return False
    if not (isinstance(fn, ast.FunctionDef) and fn.name == "f" and [p.arg for p in fn.args.args] == ["x"]
            and len(fn.body) == 1 and isinstance(fn.body[0], ast.Return) and fn.body[0].value is not None):
        return False
    body = fn.body[0].value
    xs = [int(v) for v in match.group(1).split(",") if v.strip()]
    want = [int(v) for v in match.group(2).split(",") if v.strip()]
    try:
        return [_arith(body, x) for x in xs] == want
    except ValueError:
        return False


def _arith(node: ast.expr, x: int) -> int:
    if isinstance(node, ast.Name) and node.id == "x":
        return x
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand, x)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_arith(node.left, x), _arith(node.right, x))
    raise ValueError("not an integer expression of x")


# ------------------------------------------------------------------------------------------- splits

GENERATORS: dict[str, Callable[[int, int], list[TaskExample]]] = {
    ARITHMETIC: generate_arithmetic,
    COUNTDOWN: generate_countdown,
    FUNCTION: generate_function,
}
"""Task name -> generator(n, seed)."""


def make_splits(task: str, n_train: int, n_heldout: int, seed: int) -> tuple[list[TaskExample], list[TaskExample]]:
    """Train and held-out splits with no question in common (each generated question is unique)."""
    rows = GENERATORS[task](n_train + n_heldout, seed)
    # Held-out first: growing n_train later keeps the same held-out questions for the same seed.
    return rows[n_heldout:], rows[:n_heldout]


def reference_completion(example: TaskExample) -> str:
    """The correct completion of an example (what follows "<think>" in the template)."""
    if example.task == ARITHMETIC:
        return arithmetic_completion(*parse_arithmetic_question(example.prompt))
    if example.task == COUNTDOWN:
        return countdown_completion(example)
    if example.task == FUNCTION:
        return function_completion(example.prompt)
    raise ValueError(f"unknown task {example.task!r}")


def noisy_arithmetic_completion(example: TaskExample, rng: random.Random, wrong_share: float) -> str:
    """The reference completion, or with probability `wrong_share` one with a single wrong step."""
    a, b = parse_arithmetic_question(example.prompt)
    if rng.random() >= wrong_share:
        return arithmetic_completion(a, b)
    n_steps = max(len(str(a)), len(str(b)))
    return arithmetic_completion(a, b, wrong_step=rng.randrange(n_steps), wrong_delta=rng.choice(WRONG_SUM_DELTAS))


# -------------------------------------------------------------------------------------------- JSONL


def write_jsonl(path: str | Path, rows: Iterable[TaskExample]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(r.to_json() + "\n" for r in rows))
    tmp.replace(out)  # atomic: a reader never sees half a file
    return out


def read_jsonl(path: str | Path) -> Iterator[TaskExample]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield TaskExample.from_json(line)
