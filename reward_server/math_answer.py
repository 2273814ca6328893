"""Symbolic checking of a final math answer against the ground truth, with math-verify and sympy.

math-verify (HuggingFace) parses LaTeX and plain expressions into sympy and compares them with
several strategies (numeric with rounding, symbolic simplification, sets, intervals, tuples,
matrices, relations, percentages, `\\text{}` units). On top of it, two normalisations it lacks:
scientific notation written as `1.5e3`, and a number followed by plain words (`5 dollars`).

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

_DELIMITED_RE = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")
"""An unescaped `$`, `\\boxed`, `\\(` or `\\[`: the text has its own math delimiters (`\\$5` has not)."""


def normalize_answer(answer: str) -> str:
    """Rewrite the forms math-verify misreads; leaves everything else as it is."""
    words = _NUMBER_THEN_WORDS_RE.fullmatch(answer)
    if words:
        return words.group(1)
    return _SCI_RE.sub(r"\1 \\times 10^{\2}", answer)


def _as_latex(text: str) -> str:
    """Wrap bare text in `$...$` so math-verify reads it as one LaTeX expression; text that already
    carries its own delimiters or a `\\boxed{}` is left for math-verify's extraction."""
    if _DELIMITED_RE.search(text):
        return text
    return f"${text}$"


def parse_ground_truth(ground_truth: str) -> list:
    """The ground truth parsed by math-verify; raises ValueError when it does not parse (a data bug,
    which must show up as an error rather than as a silently wrong model)."""
    gold = parse(_as_latex(ground_truth.strip()), parsing_timeout=None)  # type: ignore[arg-type]
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
    pred = parse(_as_latex(normalize_answer(answer)), parsing_timeout=None)  # type: ignore[arg-type]
    if not pred:
        return False
    # allow_set_relation_comp: `1 < x < 2` answers the interval `(1, 2)`.
    return bool(verify(gold, pred, timeout_seconds=None, allow_set_relation_comp=True))
