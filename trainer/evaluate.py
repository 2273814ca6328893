"""Held-out metrics from k samples per prompt: pass@1 (mean over the k samples, as R1 reports it) and
cons@k (majority vote over the k extracted answers; ties go to the answer seen first)."""

from __future__ import annotations

from collections import Counter


def pass_at_1(correct: list[list[bool]]) -> float:
    """Mean over prompts of the share of its k samples that are correct."""
    if not correct:
        raise ValueError("no prompts to evaluate")
    return sum(sum(group) / len(group) for group in correct) / len(correct)


def majority_vote(answers: list[str | None]) -> int | None:
    """Index of the first sample holding the most common non-empty answer, or None if none has one."""
    counted = Counter(a.strip() for a in answers if a is not None and a.strip())
    if not counted:
        return None
    best = max(counted.values())
    winners = {a for a, c in counted.items() if c == best}
    return next(i for i, a in enumerate(answers) if a is not None and a.strip() in winners)


def cons_at_k(answers: list[list[str | None]], correct: list[list[bool]]) -> float:
    """Share of prompts whose majority answer is correct."""
    if not answers:
        raise ValueError("no prompts to evaluate")
    hits = 0
    for group_answers, group_correct in zip(answers, correct, strict=True):
        winner = majority_vote(group_answers)
        hits += winner is not None and group_correct[winner]
    return hits / len(answers)
