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
  side is one too.

math-verify's own timeout uses `signal.alarm`, which only works on the main thread; it is disabled
here (`parsing_timeout=None`, `timeout_seconds=None`). The caller bounds the time instead: the
reward actor runs this in a worker subprocess that it kills on timeout (`reward_server.sandbox`),
since a sympy call such as `2^{10^{10}}` hangs inside C code where no signal or thread can stop it.
"""

from __future__ import annotations

import logging
import re

from math_verify import parse, verify

# Silence math-verify's "timeout is disabled" warning: the sandbox owns the timeout.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_SCI_RE = re.compile(r"(?<![\w.])([0-9]+(?:\.[0-9]*)?)[eE]([+-]?[0-9]+)(?![\w.])")
"""`1.5e3`, `2E-4`; the lookarounds keep `e` as Euler's number elsewhere (`2e`, `x e3`)."""

_NUMBER_THEN_WORDS_RE = re.compile(r"\s*([+-]?[0-9][0-9,]*(?:\.[0-9]+)?)\s+[A-Za-z]+(?:\s+[A-Za-z]+)*\.?\s*")
"""A number followed by plain words only (`5 dollars`, `12 square meters`): keep the number."""

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
    answer = _squeeze_space(answer)
    words = _NUMBER_THEN_WORDS_RE.fullmatch(answer)
    if words:
        return words.group(1)
    return _SCI_RE.sub(r"\1 \\times 10^{\2}", answer)


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
    gold = _parse(_OR_RE.sub(",", _squeeze_space(ground_truth.strip())))
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
