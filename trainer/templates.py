"""Prompt templates.

`r1_zero` is the DeepSeek-R1-Zero template (arXiv:2501.12948, Table 1): a conversation in which the
assistant first reasons inside <think> tags and then answers inside <answer> tags. It ends with
"Assistant: <think>" so a base model starts reasoning at once; the format reward still sees the
opening tag because `completion_for_reward` puts it back.

`r1_chat` is the variant for instruct models: the same instruction as a system message, rendered by
the tokenizer's own chat template.

`r1_cold_start` prompts for R1's readable cold-start format (arXiv:2501.12948, section 2.3.1): the
response is `|special_token|<reasoning_process>|special_token|<summary>`, written by
`readable_response` and read back strictly by `split_readable`. The marker is plain text here, not an
added token, so any tokenizer can carry it; `chain_of_thought` finds the reasoning in either format.

`r1_zero_readable` is the R1-Zero prompt without its opening `<think>`, answered in the readable format.
It is for a base model whose skill is bound to the exact prompt it was pretrained on: the tiny base's
per-token loss on its own correct chains of thought was 0.036 after the R1-Zero prompt and 2.3 after the
cold-start instruction (64 held-out questions), so a cold start behind a new instruction has to relearn
addition. With the marker added as one token (`trainer.pipeline.add_marker_token`, its embedding copied
from `<think>`), the readable response starts exactly where the base's pretraining responses did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)

THINK_OPEN = "<think>"


def r1_zero(question: str) -> str:
    """The R1-Zero prompt for a base model."""
    return f"{R1_ZERO_INSTRUCTION} User: {question} Assistant: {THINK_OPEN}"


def r1_chat(question: str, tokenizer: Any) -> str:
    """The R1 instruction as a system message, rendered with the model's chat template."""
    messages = [
        {"role": "system", "content": R1_ZERO_INSTRUCTION},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text) + THINK_OPEN


COLD_START_MARKER = "|special_token|"
"""R1's delimiter around the reasoning process in the cold-start format."""

COLD_START_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The Assistant first writes its reasoning process between two |special_token| markers, then a "
    "summary that ends with the answer enclosed within <answer> </answer> tags."
)


def r1_cold_start(question: str) -> str:
    """The prompt for the readable cold-start format; the response opens with the marker."""
    return f"{COLD_START_INSTRUCTION} User: {question} Assistant:"


def r1_zero_readable(question: str) -> str:
    """The R1-Zero prompt without `<think>`: the response opens with the cold-start marker instead."""
    return f"{R1_ZERO_INSTRUCTION} User: {question} Assistant: "


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


TEMPLATES: dict[str, Callable[..., str]] = {"r1_zero": r1_zero, "r1_chat": r1_chat,
                                            "r1_cold_start": r1_cold_start, "r1_zero_readable": r1_zero_readable}
"""Template name -> renderer. `r1_chat` also needs the tokenizer."""


def render(template: str, question: str, tokenizer: Any = None) -> str:
    """Apply the named template to one question."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    if template == "r1_chat":
        if tokenizer is None:
            raise ValueError("template 'r1_chat' needs the tokenizer (its chat template renders the prompt)")
        return r1_chat(question, tokenizer)
    return TEMPLATES[template](question)


def completion_for_reward(prompt: str, completion: str) -> str:
    """The completion as the format reward should see it: with the <think> the prompt opened."""
    return THINK_OPEN + completion if prompt.endswith(THINK_OPEN) else completion
