"""Prompt templates.

`r1_zero` is the DeepSeek-R1-Zero template (arXiv:2501.12948, Table 1): a conversation in which the
assistant first reasons inside <think> tags and then answers inside <answer> tags. It ends with
"Assistant: <think>" so a base model starts reasoning at once; the format reward still sees the
opening tag because `completion_for_reward` puts it back.

`r1_chat` is the variant for instruct models: the same instruction as a system message, rendered by
the tokenizer's own chat template.
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


TEMPLATES: dict[str, Callable[..., str]] = {"r1_zero": r1_zero, "r1_chat": r1_chat}
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
