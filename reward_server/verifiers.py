"""Exact verifiers for the demo tasks, and final-answer extraction.

Pure functions on strings; none of them evaluates model text. A wrong or malformed answer is False;
a malformed ground truth raises ValueError (a data bug, which the reward records as an error). The countdown equation is parsed with
`ast` and only literal integers, + - * / and parentheses are walked, with exact `Fraction` arithmetic
(so `6/4*2` is 3, not 3.0000000000000004, and `1/0` is a wrong answer rather than an exception).
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

MAX_EQUATION_CHARS = 256
"""Longer countdown answers are rejected before parsing: a real equation over a handful of numbers
is a few dozen characters, and the parser's cost grows with nesting."""

MAX_EQUATION_NODES = 128
"""Upper bound on AST nodes walked, a second guard against pathological input."""

_INT_RE = re.compile(r"[+-]?[0-9]+")
_EQUATION_CHARS_RE = re.compile(r"[0-9+\-*/() \t]*")
"""Characters an equation may contain; rejects names, floats, `0x10` and `1_0` before parsing."""

_BINOPS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


MAX_BOXED = 16
"""More balanced `\\boxed{}` than this where the final answer stands give no answer (degenerate
text, or a list of guesses); the cap also bounds the work of comparing them."""

MAX_JOIN_CHARS = 100
"""Longest text between two boxes that can still join them into one answer (`\\quad \\text{and}
\\quad` is 22 characters); a longer stretch is reasoning, never a separator."""

_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textrm|textnormal|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")
_SEPARATOR_RE = re.compile(
    r"(?:\s+|[,;.:&~]|\$|\\[()\[\]\\,;:! ]|\\(?:q?quad|thinspace|enspace)(?![A-Za-z])"
    r"|(?i:and|or|either|maybe|perhaps|possibly|also)(?![A-Za-z])|\\(?:lor|vee|land|wedge)(?![A-Za-z])"
    r"|(?i:for\s+)?(?i:part\s*)?\(\s*[a-z0-9]{1,3}\s*\)|(?i:part)\s+[a-z0-9]{1,3}(?![A-Za-z0-9])"
    r"|\\?[A-Za-z]+(?:_\{?[A-Za-z0-9]+\}?)?'?\s*=)*"
)
"""What may stand between two boxes of one answer: spaces, punctuation, math delimiters and TeX
spacing, `and`/`or` (bare, in `\\text{}`, `\\lor`) with a hedge word, a part label (`for part (a)`),
a variable label (`y_2 =`). Each alternative starts with its own character class, and the text is
at most `MAX_JOIN_CHARS` long, so matching stays cheap."""
_OR_WORD_RE = re.compile(r"(?i:(?<![A-Za-z])or(?![A-Za-z]))|\\(?:lor|vee)(?![A-Za-z])")

NO_ANSWER = "no answer"
ONLY_IN_THINK = "answer only inside <think>"


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None; what training rewards and evaluation both grade
    (see `final_answer` for the rules)."""
    return final_answer(text)[0]


def final_answer(text: str) -> tuple[str | None, str]:
    """(the final answer, stripped, ""), or (None, why there is none).

    The answer stands after the chain of thought: after the last `</think>`, and not in a `<think>`
    that is never closed (a text that opens `<think>` without closing it has no answer). There, the
    last closed `<answer>...</answer>` (the innermost if tags nest), else the last non-empty
    `\\boxed{...}` whose braces balance. A `\\boxed{}` inside the `<answer>` is unwrapped.

    The last box counts, as public graders read a completion: a response that boxes an answer,
    reconsiders and boxes another is graded on the second. Boxes right before it that only
    separators divide from it (`\\boxed{1}, \\boxed{2}`, `\\boxed{3} \\quad\\text{and}\\quad
    \\boxed{4}`; see `_SEPARATOR_RE`) are one answer with it, the list of their different values
    (`1, 2`), which matches a reference listing those values and never a single value; joined by
    `or` they are alternatives (`3 or 4`), a hedge that is wrong unless each is right. Boxing
    candidates therefore never pays: earlier boxes are either superseded or part of a list. More
    than `MAX_BOXED` boxes give none.
    """
    region = _after_reasoning(text)
    if region is None:
        return None, ONLY_IN_THINK
    close = region.rfind("</answer>")
    if close != -1:
        open_ = region.rfind("<answer>", 0, close)
        if open_ != -1:
            tagged = region[open_ + len("<answer>") : close].strip()
            boxed, why = _boxed_answer(tagged)
            return (tagged, "") if why == NO_ANSWER else (boxed, why)
    return _boxed_answer(region)


def _after_reasoning(text: str) -> str | None:
    """The text after the chain of thought, or None when the chain of thought never ends."""
    end = text.rfind("</think>")
    if end != -1:
        text = text[end + len("</think>") :]
    elif "<think>" in text:
        return None
    reopened = text.find("<think>")  # a later, unclosed <think>: reasoning again up to the end
    return text if reopened == -1 else text[:reopened]


def _boxed_answer(text: str) -> tuple[str | None, str]:
    """The final answer among the outer `\\boxed{}` of `text` (see `final_answer`), else (None,
    why). Linear-time scans (`reward_server.textscan`; imported here so the verifier worker never
    loads numpy)."""
    from reward_server.textscan import last_boxed, outer_boxed_gaps

    boxes = outer_boxed_gaps(text, limit=MAX_BOXED, max_gap=MAX_JOIN_CHARS)
    if boxes is None:
        return None, f"more than {MAX_BOXED} \\boxed{{}}"
    last = max((i for i, (box, _) in enumerate(boxes) if box), default=None)
    if last is None:
        return None, NO_ANSWER
    first, hedge = last, False
    while first > 0 and boxes[first - 1][0]:
        joint = _joint(boxes[first][1])
        if joint is None:
            break
        first, hedge = first - 1, hedge or joint == "or"
    distinct: dict[str, str] = {}  # whitespace-free form -> first spelling, in order
    for box, _ in boxes[first : last + 1]:
        distinct.setdefault("".join(box.split()), box)
    if len(distinct) > 1:
        return (" or " if hedge else ", ").join(distinct.values()), ""
    (answer,) = distinct.values()
    # A box in the box (`\\boxed{\\boxed{5}}`): the innermost last one, as a single scan would find.
    return (last_boxed(answer) or answer if "\\boxed" in answer else answer), ""


def _joint(gap: str | None) -> str | None:
    """How the text between two boxes joins them: "or" (alternatives), "list", or None (it is
    reasoning, or too long to read: the earlier box is superseded)."""
    if gap is None:
        return None
    gap = _TEXT_WRAPPER_RE.sub(r" \1 ", gap)
    if not _SEPARATOR_RE.fullmatch(gap):
        return None
    return "or" if _OR_WORD_RE.search(gap) else "list"


def verify_arithmetic(answer: str, ground_truth: str) -> bool:
    """True iff `answer` is an integer (ASCII digits, optional sign and surrounding spaces) equal to
    `ground_truth`.

    Raises ValueError when `ground_truth` itself is not an integer.
    """
    answer, ground_truth = answer.strip(), ground_truth.strip()
    if not _INT_RE.fullmatch(ground_truth):
        raise ValueError(f"arithmetic ground truth is not an integer: {ground_truth[:80]!r}")
    return bool(_INT_RE.fullmatch(answer)) and int(answer) == int(ground_truth)


def verify_countdown(answer: str, ground_truth: str) -> bool:
    """True iff `answer` is an equation over the given numbers that equals the target.

    `ground_truth` is JSON `{"numbers": [..], "target": int}`. The answer uses every number exactly
    once, as integer literals, combined with + - * / and parentheses (no unary minus, no other
    operators); it may end with `= target`. Division is exact, and division by zero is a wrong answer.
    Raises ValueError when `ground_truth` is malformed.
    """
    numbers, target = _countdown_spec(ground_truth)
    expr = answer.strip()
    if not expr or len(expr) > MAX_EQUATION_CHARS:
        return False
    if "=" in expr:
        expr, _, rhs = expr.partition("=")
        if not _INT_RE.fullmatch(rhs.strip()) or Fraction(int(rhs)) != target:
            return False
    if not _EQUATION_CHARS_RE.fullmatch(expr):
        return False
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    if sum(1 for _ in ast.walk(tree)) > MAX_EQUATION_NODES:
        return False
    used: list[int] = []
    try:
        value = _eval_node(tree.body, used)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(used) == Counter(numbers) and value == target


def _countdown_spec(ground_truth: str) -> tuple[list[int], Fraction]:
    """(numbers, target) from the JSON ground truth; ValueError if malformed (a data bug, reported
    as an error rather than scored as a wrong answer)."""
    try:
        spec = json.loads(ground_truth)
        numbers = [int(n) for n in spec["numbers"]]
        return numbers, Fraction(int(spec["target"]))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"countdown ground truth is malformed ({e}): {ground_truth[:80]!r}") from e


def _eval_node(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an allowed node; records every integer literal in `used`."""
    if isinstance(node, ast.Constant):
        # bool is an int subclass; only genuine ints count as the given numbers.
        if type(node.value) is not int:
            raise ValueError(f"not an integer literal: {node.value!r}")
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _eval_node(node.left, used)
        right = _eval_node(node.right, used)
        return _BINOPS[type(node.op)](left, right)
    raise ValueError(f"disallowed syntax: {type(node).__name__}")
