"""The response formats the templates ask for, read back for the rewards: R1-Zero's `<think>...</think>`
and R1's readable cold-start format `|special_token|<reasoning_process>|special_token|<summary>`
(arXiv:2501.12948, section 2.3.1).

`readable_response` writes the cold-start format and `split_readable` reads it back strictly;
`chain_of_thought` finds the reasoning in either format. The prompts that open them are rendered by
`trainer.templates`, which re-exports these names.
"""

from __future__ import annotations

THINK_OPEN = "<think>"

COLD_START_MARKER = "|special_token|"
"""R1's delimiter around the reasoning process in the cold-start format."""


def readable_response(reasoning: str, summary: str, *, marker: str = COLD_START_MARKER) -> str:
    """R1's cold-start output: `marker + reasoning + marker + summary`."""
    if marker in reasoning or marker in summary:
        raise ValueError(f"the reasoning and the summary must not contain the marker {marker!r}")
    return f"{marker}{reasoning}{marker}{summary}"


def split_readable(text: str, *, marker: str = COLD_START_MARKER) -> tuple[str, str] | None:
    """(reasoning, summary) of a readable response, or None unless it opens with the marker, holds it
    exactly twice and both parts are non-empty."""
    if not text.startswith(marker) or text.count(marker) != 2:
        return None
    _, reasoning, summary = text.split(marker)
    if not reasoning.strip() or not summary.strip():
        return None
    return reasoning, summary


def chain_of_thought(text: str, *, marker: str = COLD_START_MARKER) -> str | None:
    """The reasoning of a completion: between the cold-start markers, else inside the first
    `<think>...</think>` (pass the text through `completion_for_reward` first), else None."""
    readable = split_readable(text, marker=marker)
    if readable is not None:
        return readable[0]
    start = text.find(THINK_OPEN)
    end = text.find("</think>", start + len(THINK_OPEN)) if start != -1 else -1
    return text[start + len(THINK_OPEN):end] if end != -1 else None


def completion_for_reward(prompt: str, completion: str) -> str:
    """The completion as the format reward should see it: with the <think> the prompt opened."""
    return THINK_OPEN + completion if prompt.endswith(THINK_OPEN) else completion
