"""R1's rejection-sampling filters (arXiv:2501.12948, section 2.3.3), each a pure function of the text.

"We filter out chain-of-thought with mixed languages, long paragraphs, and code blocks": each rule
is one function returning the reason it rejects, or None. `first_rejection` runs them in order;
`Deduplicator` drops repeated samples. Every function is linear in the length of its input: no regex
here can backtrack (each pattern is a single character class, or a literal), so hostile model output
(a megabyte of one character, unclosed fences, millions of newlines) costs one pass.

Departures from the paper, which names the rules but not their thresholds:
    - Mixed language: words are runs of letters of one script (Latin, CJK characters one by one,
      Cyrillic, ...); a chain of thought is mixed when the share of words outside the target
      language's script exceeds `max_foreign_share` (0 by default: a single foreign word rejects).
    - Long paragraphs: paragraphs are separated by blank lines; one longer than `max_paragraph_chars`
      rejects (R1 gives no number; 1,000 characters by default).
    - Code blocks: a fenced block (a line opening with three backticks or three tildes) or an
      HTML-style `<code>` element rejects; inline code in single backticks does not.
    - Dedup: exact match after Unicode normalisation (NFKC), case folding and collapsing whitespace,
      per prompt (the same response to two prompts is kept for both).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Hashable
from dataclasses import dataclass

DEFAULT_MAX_PARAGRAPH_CHARS = 1000
"""R1 does not say how long a "long paragraph" is; a thousand characters is several dense sentences."""

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"latin"}),
    "zh": frozenset({"cjk"}),
    "ru": frozenset({"cyrillic"}),
    "ja": frozenset({"cjk", "kana"}),
    "ko": frozenset({"hangul", "cjk"}),
}
"""Target language -> the scripts its words may be written in."""

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = "\u3040-\u30ff"
_WORD_RE = re.compile(rf"[{_CJK}]|[{_KANA}]+|[^\W\d_{_CJK}{_KANA}]+")
"""A CJK character alone (Chinese has no spaces), a run of kana, or a run of other letters. Each
alternative is one character class, so matching is linear."""

_RANGES: tuple[tuple[str, int, int], ...] = (
    ("latin", 0x0041, 0x024F), ("latin", 0x1E00, 0x1EFF), ("greek", 0x0370, 0x03FF), ("cyrillic", 0x0400, 0x052F),
    ("hebrew", 0x0590, 0x05FF), ("arabic", 0x0600, 0x06FF), ("hangul", 0x1100, 0x11FF),
    ("kana", 0x3040, 0x30FF), ("cjk", 0x3400, 0x4DBF), ("cjk", 0x4E00, 0x9FFF), ("hangul", 0xAC00, 0xD7AF),
    ("cjk", 0xF900, 0xFAFF),
)


@functools.lru_cache(maxsize=4096)
def _script_of_char(ch: str) -> str:
    code = ord(ch)
    for name, low, high in _RANGES:
        if low <= code <= high:
            return name
    return "other"


def scripts_of(word: str) -> frozenset[str]:
    """The scripts a word's letters belong to (usually one; two for letters of two scripts glued
    together, which then count against the target language)."""
    if word.isascii():
        return _LATIN
    return frozenset(_script_of_char(ch) for ch in word)


_LATIN = frozenset({"latin"})


def script_counts(text: str) -> dict[str, int]:
    """Words of `text` per script (a word written in two scripts counts for both)."""
    counts: dict[str, int] = {}
    for match in _WORD_RE.finditer(text):
        for name in scripts_of(match.group()):
            counts[name] = counts.get(name, 0) + 1
    return counts


def mixed_language(cot: str, *, target_language: str = "en", max_foreign_share: float = 0.0) -> str | None:
    """Reject a chain of thought whose share of words outside the target language's scripts exceeds
    `max_foreign_share`. A chain with no words at all passes (digits and symbols are no language)."""
    if target_language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown target language {target_language!r}; known: {', '.join(LANGUAGE_SCRIPTS)}")
    allowed = LANGUAGE_SCRIPTS[target_language]
    total = foreign = 0
    seen: set[str] = set()
    for match in _WORD_RE.finditer(cot):
        scripts = scripts_of(match.group())
        total += 1
        if not scripts <= allowed:
            foreign += 1
            seen |= scripts - allowed
    if total == 0:
        return None
    if foreign / total > max_foreign_share:
        return f"mixed_language: {foreign} of {total} words not {target_language} ({', '.join(sorted(seen))})"
    return None


def longest_paragraph(text: str) -> int:
    """Characters in the longest paragraph; paragraphs are separated by lines holding only whitespace."""
    longest = current = 0
    for line in text.split("\n"):
        if line.strip():
            current += len(line) + (1 if current else 0)  # the newline joining it to the previous line
            longest = max(longest, current)
        else:
            current = 0
    return longest


def overlong_paragraph(cot: str, *, max_paragraph_chars: int = DEFAULT_MAX_PARAGRAPH_CHARS) -> str | None:
    """Reject a chain of thought with a paragraph longer than `max_paragraph_chars` characters."""
    if max_paragraph_chars < 1:
        raise ValueError("max_paragraph_chars must be >= 1")
    longest = longest_paragraph(cot)
    if longest > max_paragraph_chars:
        return f"overlong_paragraph: {longest} > {max_paragraph_chars} characters"
    return None


_FENCES = ("```", "~~~")


def code_block(cot: str) -> str | None:
    """Reject a chain of thought holding a fenced code block (a line opening with ``` or ~~~, even if
    never closed) or a `<code>` element."""
    for line in cot.split("\n"):
        if line.lstrip().startswith(_FENCES):
            return "code_block: fenced block"
    if "<code>" in cot.lower():
        return "code_block: <code> element"
    return None


Rule = Callable[[str], "str | None"]
"""A filter: chain of thought -> reason for rejecting it, or None."""


@dataclass(frozen=True)
class FilterSettings:
    """The rules' thresholds as plain values (unpacked from the rejection config by its caller)."""

    target_language: str = "en"
    max_foreign_share: float = 0.0
    max_paragraph_chars: int = DEFAULT_MAX_PARAGRAPH_CHARS
    reject_code: bool = True


def rules(settings: FilterSettings) -> dict[str, Rule]:
    """Rule name -> rule, in the order they are applied; the names are the report's reasons."""
    table: dict[str, Rule] = {
        "mixed_language": lambda cot: mixed_language(cot, target_language=settings.target_language,
                                                     max_foreign_share=settings.max_foreign_share),
        "overlong_paragraph": lambda cot: overlong_paragraph(cot, max_paragraph_chars=settings.max_paragraph_chars),
    }
    if settings.reject_code:
        table["code_block"] = code_block
    return table


RULE_NAMES: tuple[str, ...] = tuple(rules(FilterSettings(reject_code=True)))
"""Every rule's name, in the order they are applied: the reasons a filter can reject a sample for."""


def first_rejection(cot: str, table: dict[str, Rule]) -> tuple[str, str] | None:
    """(rule name, its message) of the first rule that rejects `cot`, or None if all pass."""
    for name, rule in table.items():
        message = rule(cot)
        if message is not None:
            return name, message
    return None


_SPACE_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """What dedup compares: NFKC, case-folded, whitespace runs collapsed to one space, stripped."""
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Deduplicator:
    """Remembers (key, normalised text) digests; `seen` says whether a sample was met before.

    The key scopes dedup (the prompt: the same response to two prompts is two samples). Memory is one
    32-byte digest per kept sample.
    """

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def seen(self, key: Hashable, text: str) -> bool:
        """True if (key, text) was offered before (after `normalise`); records it otherwise."""
        digest = hashlib.sha256(f"{key!r}\0{normalise(text)}".encode()).digest()
        if digest in self._digests:
            return True
        self._digests.add(digest)
        return False

    def __len__(self) -> int:
        return len(self._digests)
