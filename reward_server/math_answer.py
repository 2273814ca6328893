"""Symbolic checking of a final math answer against the ground truth, with math-verify and sympy.

math-verify (HuggingFace) parses LaTeX and plain expressions into sympy and compares them with
several strategies (numeric with rounding, symbolic simplification, sets, intervals, tuples,
matrices, relations, percentages, `\\text{}` units). On top of it, rules it lacks:

- scientific notation written as `1.5e3`, and a number followed by plain words (`5 dollars`);
- alternatives (`3 or 4`, `3 \\text{ or } 4`, `3 \\lor 4`): an answer whose alternatives are
  each right is right (a restatement); one that mixes right and wrong ones is wrong (a hedge;
  math-verify alone took `3 \\lor 4` or `3 or maybe 4` for one of them); otherwise the list of
  them (`3, 4`) is compared, so it matches a reference that lists those values (the reference's
  own alternatives are read as a list too);
- a multiple-choice answer (`C`, `(C)`, `\\text{(C)}`, `C. x = 42`) is its letter when the other
  side is one too;
- thousands separators written as thin spaces or `{,}` (`3\\,141`, `3{,}141`) are dropped, on both
  sides; a number followed by `percent` keeps its percent sign;
- plain-text functions (`sqrt(2)/2`, `cbrt(2)`, `exp(1)`, `ln(2)`, `pi/4`, `abs(-3)`) are read as
  their LaTeX, in an answer or a ground truth written without TeX commands;
- an answer `5 = x` (a value, then the variable it names) is read as `x = 5`;
- numbers compare with a relative tolerance instead of math-verify's rounding to 6 decimal places,
  which took any two numbers under 5e-7 for equal (`1/3^{40}` and `1/3^{41}`); see `numeric_eq`;
- a percentage `p\\%` against a plain number matches both p/100 and p (a reference in percent
  units, as "what percent" problems state them); math-verify took this only for integers.

math-verify's own timeout uses `signal.alarm`, which only works on the main thread; it is disabled
here (`parsing_timeout=None`, `timeout_seconds=None`). The caller bounds the time instead: the
reward actor runs this in a worker subprocess that it kills on timeout (`reward_server.sandbox`),
since a sympy call such as `2^{10^{10}}` hangs inside C code where no signal or thread can stop it.
"""

from __future__ import annotations

import logging
import re

import math_verify.grader
from math_verify import parse, verify
from math_verify.grader import get_pct_val, safe_sympy_doit
from sympy import Basic, Float, MatrixBase
from sympy.matrices.expressions.matexpr import MatrixExpr

# Silence math-verify's "timeout is disabled" warning: the sandbox owns the timeout.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_SCI_RE = re.compile(r"(?<![\w.])([0-9]+(?:\.[0-9]*)?)[eE]([+-]?[0-9]+)(?![\w.])")
"""`1.5e3`, `2E-4`; the lookarounds keep `e` as Euler's number elsewhere (`2e`, `x e3`)."""

_NUMBER_THEN_WORDS_RE = re.compile(r"\s*([+-]?[0-9][0-9,]*(?:\.[0-9]+)?)\s+([A-Za-z]+(?:\s+[A-Za-z]+)*)\.?\s*")
"""A number followed by plain words only (`5 dollars`, `12 square meters`): keep the number."""
_PERCENT_WORDS = frozenset({"percent", "percentage", "pct"})

_THOUSANDS_RE = re.compile(r"(?<=[0-9])(?:\\[,;! ]|\\thinspace\s*|\{,\}|,\\!|[\u2009\u202f])(?=[0-9]{3}(?![0-9]))")
"""A thin space (`\\,`, `\\;`, `\\!`, `\\ `, U+2009, U+202F) or `{,}` between a digit and a group of
exactly three: a thousands separator (`3\\,141`, `1{,}000{,}000`). A plain `, ` is not one: `32, 349`
is a list."""

_PLAIN_CALL_RE = re.compile(r"(?<![A-Za-z])(sqrt|cbrt|abs)\s*\(|[()]")
_PLAIN_CALLS = {"sqrt": ("\\sqrt{", "}"), "cbrt": ("\\sqrt[3]{", "}"), "abs": ("\\left|", "\\right|")}
"""Plain-text calls whose argument LaTeX takes in braces or bars: name -> (opening, closing)."""
_PLAIN_NAME_RE = re.compile(
    r"(?<![\\A-Za-z])(sqrt|exp|ln|log|sin|cos|tan|sec|csc|cot|arcsin|arccos|arctan|sinh|cosh|tanh|pi)(?![A-Za-z])"
)
"""Plain-text names that LaTeX writes as a command (`ln(2)` is `\\ln(2)`, `pi` is `\\pi`)."""

_VALUE_IS_VARIABLE_RE = re.compile(
    r"\s*([^=<>]+?)\s*=\s*((?:[A-DF-HJ-Za-df-hj-z]|\\(?!pi(?![A-Za-z])|infty(?![A-Za-z]))[A-Za-z]+)"
    r"(?:_\{?[A-Za-z0-9]+\}?)?)\s*"
)
"""`5 = x`: a value, then a lone variable (a letter other than e and i, or a command such as
`\\theta`, with an optional subscript)."""
_LONE_VARIABLE_RE = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?\s*")
_RELATION_RE = re.compile(r"\\(?:le|ge|ne|lt|gt|leq|geq|neq|approx|sim|in)(?![A-Za-z])|,")
"""A relation or a list before `= x` (`1 \\le 5 = x`, `1, 2 = x`): not a value restated, left as written."""

_OR_RE = re.compile(
    r"\\(?:text|textrm|textnormal|textbf|mathrm|mbox)\s*\{\s*or\s*\}|\\(?:lor|vee)(?![A-Za-z])|\bor\b",
    re.IGNORECASE,
)
"""A disjunction: the word `or` (also inside `\\text{}`), `\\lor`, `\\vee`."""

_CHOICE_RE = re.compile(r"\s*(?:\\text(?:bf)?\s*\{\s*)?\(?([A-E])\)?\s*(?:\}\s*)?(?:[.:]\s.*)?", re.DOTALL)
"""A choice letter A-E, bare, in parentheses or `\\text{}`, optionally followed by `. ` or `: ` and
its text (`C. x = 42`)."""

MAX_ALTERNATIVES = 8
"""An answer listing more alternatives (`a or b or ...`) is wrong without parsing them all."""

_SPACE_RUN_RE = re.compile(r"[^\S\n]+")
_NEWLINE_RUN_RE = re.compile(r" ?\n\s*")

_DELIMITED_RE = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")
"""An unescaped `$`, `\\boxed`, `\\(` or `\\[`: the text has its own math delimiters (`\\$5` has not)."""


def normalize_answer(answer: str) -> str:
    """Rewrite the forms math-verify misreads; leaves everything else as it is."""
    answer = _canonical(answer)
    words = _NUMBER_THEN_WORDS_RE.fullmatch(answer)
    if words:
        percent = words.group(2).lower() in _PERCENT_WORDS
        return words.group(1) + ("\\%" if percent else "")
    answer = _SCI_RE.sub(r"\1 \\times 10^{\2}", answer)
    swapped = _VALUE_IS_VARIABLE_RE.fullmatch(answer)
    value = swapped.group(1) if swapped else ""
    if swapped and not _LONE_VARIABLE_RE.fullmatch(value) and not _RELATION_RE.search(value):
        return f"{swapped.group(2)} = {value}"
    return answer


def _canonical(text: str) -> str:
    """What both sides get: spaces squeezed, thousands separators dropped, plain-text functions as
    LaTeX."""
    return _plain_functions(_THOUSANDS_RE.sub("", _squeeze_space(text)))


def _plain_functions(text: str) -> str:
    """`sqrt(2)/2` -> `\\sqrt{2}/2`, `pi/4` -> `\\pi /4`, in a text without TeX commands (one with
    them is LaTeX already, where `sqrt` may be a word in `\\text{}`). Unbalanced parentheses leave
    the text as it is. One pass with a stack of closings."""
    if "\\" in text:
        return text
    out: list[str] = []
    closings: list[str] = []
    pos = 0
    for match in _PLAIN_CALL_RE.finditer(text):
        out.append(text[pos : match.start()])
        pos = match.end()
        if match.group(1):
            opening, closing = _PLAIN_CALLS[match.group(1)]
            out.append(opening)
            closings.append(closing)
        elif match.group() == "(":
            out.append("(")
            closings.append(")")
        elif closings:
            out.append(closings.pop())
        else:
            return text
    if closings:
        return text
    out.append(text[pos:])
    return _PLAIN_NAME_RE.sub(r"\\\1 ", "".join(out))


def _squeeze_space(text: str) -> str:
    """Runs of spaces become one (a newline stays, it ends inline math): math-verify's extraction
    slows down superlinearly on long runs (3,000 spaces took 20 s)."""
    return _NEWLINE_RUN_RE.sub("\n", _SPACE_RUN_RE.sub(" ", text))


def _as_latex(text: str) -> str:
    """Wrap bare text in `$...$` so math-verify reads it as one LaTeX expression; text that already
    carries its own delimiters or a `\\boxed{}` is left for math-verify's extraction."""
    if _DELIMITED_RE.search(text):
        return text
    return f"${text}$"


def _parse(text: str) -> list:
    return parse(_as_latex(text), parsing_timeout=None)  # type: ignore[arg-type]


def parse_ground_truth(ground_truth: str) -> list:
    """The ground truth parsed by math-verify; raises ValueError when it does not parse (a data bug,
    which must show up as an error rather than as a silently wrong model). Alternatives (`3 or 4`)
    are the list of them."""
    gold = _parse(_OR_RE.sub(",", _canonical(ground_truth.strip())))
    if not gold:
        raise ValueError(f"ground truth does not parse: {ground_truth[:80]!r}")
    return gold


def verify_math(answer: str, ground_truth: str) -> bool:
    """True iff the final `answer` (already extracted from the completion) equals `ground_truth`.

    No time bound of its own: run it where it can be killed (see module docstring).
    """
    gold = parse_ground_truth(ground_truth)
    answer = answer.strip()
    if not answer:
        return False
    choices = _CHOICE_RE.fullmatch(answer), _CHOICE_RE.fullmatch(ground_truth)
    if choices[0] and choices[1]:
        return choices[0].group(1) == choices[1].group(1)
    alternatives = [alt.strip() for alt in _OR_RE.split(answer) if alt.strip()]
    if len(alternatives) > 1:
        if len(alternatives) > MAX_ALTERNATIVES:
            return False
        # Right and wrong alternatives side by side are a hedge; all right is a restatement.
        singles = [_equal(gold, alt) for alt in alternatives]
        if any(singles):
            return all(singles)
        answer = ", ".join(alternatives)
    return _equal(gold, answer)


def _equal(gold: list, answer: str) -> bool:
    pred = _parse(normalize_answer(answer))
    if not pred:
        return False
    # allow_set_relation_comp: `1 < x < 2` answers the interval `(1, 2)`.
    return bool(verify(gold, pred, timeout_seconds=None, allow_set_relation_comp=True))


# -- numbers ------------------------------------------------------------------------------------

REL_TOL = 1e-5
"""Numbers of which one is written with a decimal point are equal when they agree to this relative
tolerance: an irrational to six significant digits (`1.41421` for sqrt 2) matches, `5.001` does not
match 5."""
EXACT_REL_TOL = 1e-12
"""Exact expressions (no decimal point) are evaluated to `numeric_precision` (15) digits; they must
agree to this before their difference is checked for zero."""
ZERO_ATOL = 1e-12
"""Against an exact zero a relative tolerance means nothing: a value this close to 0 is 0 (float
noise such as 0.1 + 0.2 - 0.3)."""


def numeric_eq(a: Basic | MatrixBase, b: Basic | MatrixBase, float_rounding: int, numeric_precision: int) -> bool:
    """math-verify's `sympy_numeric_eq` with a relative tolerance (same arguments; `float_rounding`
    is unused). math-verify rounds to `float_rounding` decimals and chops tiny differences of exact
    expressions, so two different numbers under about 1e-6 were equal; here they are compared
    relative to their size (`REL_TOL` with a decimal involved, `EXACT_REL_TOL` without), with an
    absolute tolerance only against an exact zero. A percentage against a plain number matches as
    the fraction or in percent units. Matrices compare element by element, as in math-verify."""
    if isinstance(a, (MatrixBase, MatrixExpr)) and isinstance(b, (MatrixBase, MatrixExpr)):
        a, b = safe_sympy_doit(a), safe_sympy_doit(b)
        if isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape:
            return all(numeric_eq(x, y, float_rounding, numeric_precision) for x, y in zip(a.flat(), b.flat(), strict=True))
        return False
    pct_a, pct_b = get_pct_val(a), get_pct_val(b)
    if (pct_a is None) != (pct_b is None):
        percent, other = (pct_a, b) if pct_a is not None else (pct_b, a)
        return any(_numbers_equal(value, other, digits=numeric_precision) for value in (percent / 100, percent))
    if pct_a is not None:
        a, b = pct_a, pct_b
    return _numbers_equal(a, b, digits=numeric_precision)


def _numbers_equal(a: Basic, b: Basic, *, digits: int) -> bool:
    try:
        a, b = safe_sympy_doit(a), safe_sympy_doit(b)
        if a.free_symbols or b.free_symbols:  # expressions in variables: math-verify's own test
            return bool((a - b).evalf(chop=True, n=digits) == 0)
        if a.is_Rational and b.is_Rational:  # integers and fractions: exactly
            return bool(a == b)
        x, y = a.evalf(n=digits), b.evalf(n=digits)
        if not (x.is_number and y.is_number and x.is_finite and y.is_finite):
            return bool(a == b)
        if a.is_zero or b.is_zero:
            return bool(abs(x - y) <= ZERO_ATOL)
        inexact = a.has(Float) or b.has(Float)
        close = bool(abs(x - y) <= (REL_TOL if inexact else EXACT_REL_TOL) * max(abs(x), abs(y)))
        # Exact values that agree to 12 digits are equal only if their difference vanishes
        # (2^{70} + 1 is not 2^{70}); evalf resolves a difference to full relative precision.
        return close if inexact or not close else bool((a - b).evalf(chop=True, n=digits) == 0)
    except Exception:  # what sympy raises on odd input is open-ended; math-verify also answers False
        return False


# math-verify calls its numeric comparison through the module global, for numbers, matrix elements,
# interval ends, set members and equation sides alike: replacing it there fixes them all.
math_verify.grader.sympy_numeric_eq = numeric_eq
