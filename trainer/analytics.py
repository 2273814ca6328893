"""R1-Zero analytics of a batch of completions: what the R1 paper watches while RL runs (arXiv:2501.12948,
section 2.2.4): response length, reflection ("wait", "verify", "recheck", ...), the language mix of the chain
of thought, and pass@k beside pass@1 and cons@k.

Every function is pure and linear in the text: a completion can be megabytes of hostile text (see
`reward_server.textscan`), so reflection words are found by one regex of literal alternatives between word
boundaries (no nested quantifier, nothing to backtrack over), and words are counted by one vectorised pass.

Departures: the reflection vocabulary follows the keyword lists of R1-Zero analyses (Liu et al., "Understanding
R1-Zero-Like Training", arXiv:2503.20783); R1 itself reports the "aha moment" ("Wait, wait. Wait.") without a
list. pass@k is the unbiased estimator of Chen et al. (arXiv:2107.03374) from the n samples of each prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REFLECTION_WORDS = (
    "wait", "verify", "verifying", "verified", "verification", "recheck", "re-check", "rechecking",
    "double-check", "double check", "double-checking", "check again", "rethink", "re-think", "think again",
    "reconsider", "re-consider", "reevaluate", "re-evaluate", "reexamine", "re-examine", "retry", "hmm",
)
"""Words and phrases that mark reflection in a chain of thought (matched case-insensitively, whole words)."""

_REFLECTION_RE = re.compile(
    # Bounded by non-letters rather than \b, so "字Wait" counts (a CJK character is a word character to \b);
    # each alternative is a literal anchored by its first word, so a run of blanks is scanned once.
    r"(?<![A-Za-z])(?:" + "|".join(re.escape(w).replace(r"\ ", r"[ \t]+")
                                   for w in sorted(REFLECTION_WORDS, key=len, reverse=True)) + r")(?![A-Za-z])",
    re.IGNORECASE)

ANALYTICS_PREFIXES = ("reflection_", "cot_")
"""Metric keys written by this module's batch statistics start with one of these."""

LANGUAGES = ("en", "zh", "other")
"""Language groups of the chain-of-thought mix: Latin-script words, CJK characters, any other letters."""


def reflection_count(text: str) -> int:
    """How many reflection words or phrases `text` holds (non-overlapping, whole words, any case)."""
    return len(_REFLECTION_RE.findall(text))


def reflection_stats(texts: Sequence[str]) -> dict[str, float]:
    """Mean reflection words per response, and the share of responses with at least one."""
    if not texts:
        raise ValueError("no responses")
    counts = [reflection_count(t) for t in texts]
    return {"reflection_words_per_response": sum(counts) / len(counts),
            "reflection_frac": sum(c > 0 for c in counts) / len(counts)}


def reflection_accuracy(texts: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Accuracy of the responses with at least one reflection word and of those without (R1-Zero's question:
    does reflecting pay?); a kind with no responses has no key, since neither 0 nor NaN would be true."""
    if len(texts) != len(correct):
        raise ValueError(f"{len(texts)} responses but {len(correct)} correctness flags")
    with_check = [ok for t, ok in zip(texts, correct) if reflection_count(t) > 0]
    without = [ok for t, ok in zip(texts, correct) if reflection_count(t) == 0]
    out = {}
    if with_check:
        out["reflection_accuracy_with"] = sum(with_check) / len(with_check)
    if without:
        out["reflection_accuracy_without"] = sum(without) / len(without)
    return out


def language_counts(text: str) -> dict[str, int]:
    """Words of `text` per language group: Latin-script word runs, CJK characters (one word each), others."""
    from reward_server.textscan import count_words

    words, en = count_words(text, "en")
    _, zh = count_words(text, "zh")
    return {"en": en, "zh": zh, "other": words - en - zh}


def language_mix(chains_of_thought: Sequence[str | None]) -> dict[str, float]:
    """Share of all chain-of-thought words per language group, the words per response, the share of chains
    that mix groups, and the share of responses that have a chain of thought at all (None: it has none)."""
    if not chains_of_thought:
        raise ValueError("no responses")
    totals = dict.fromkeys(LANGUAGES, 0)
    mixed = with_words = 0
    for cot in chains_of_thought:
        if not cot:
            continue
        counts = language_counts(cot)
        for lang, n in counts.items():
            totals[lang] += n
        present = sum(n > 0 for n in counts.values())
        with_words += present > 0
        mixed += present > 1
    words = sum(totals.values())
    # No words at all (a chain of digits and signs): the shares are 0, and cot_words_per_response says why.
    out = {f"cot_lang/{lang}": totals[lang] / words if words else 0.0 for lang in LANGUAGES}
    out["cot_words_per_response"] = words / len(chains_of_thought)
    out["cot_mixed_frac"] = mixed / with_words if with_words else 0.0
    out["cot_frac"] = sum(c is not None for c in chains_of_thought) / len(chains_of_thought)
    return out


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over prompts of the chance that k of its n samples, drawn without replacement, hold a correct
    one: 1 - C(n - c, k) / C(n, k), computed as a product so large n does not overflow."""
    if not correct:
        raise ValueError("no prompts to evaluate")
    total = 0.0
    for group in correct:
        n, c = len(group), sum(group)
        if not 1 <= k <= n:
            raise ValueError(f"pass@{k} needs 1 <= k <= n samples per prompt, got n = {n}")
        if n - c < k:
            total += 1.0
            continue
        miss = 1.0
        for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
            miss *= 1.0 - k / i
        total += 1.0 - miss
    return total / len(correct)


def pass_at_ks(correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """pass@k for k = 2, 4, 8, ... below n and k = n (n: the fewest samples of any prompt); empty if n < 2."""
    n = min(len(g) for g in correct) if correct else 0
    ks = [k for k in (2**i for i in range(1, n.bit_length())) if k < n] + ([n] if n >= 2 else [])
    return {f"pass@{k}": pass_at_k(correct, k) for k in ks}
