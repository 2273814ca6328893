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

The response formats' writer and readers (`readable_response`, `split_readable`, `chain_of_thought`,
`completion_for_reward`) live with the rewards that read them, in `reward_server.response_format`, and
are imported from here too.

`r1_zero_readable` is the R1-Zero prompt without its opening `<think>`, answered in the readable format.
It is for a base model whose skill is bound to the exact prompt it was pretrained on: the tiny base's
per-token loss on its own correct chains of thought was 0.036 after the R1-Zero prompt and 2.3 after the
cold-start instruction (64 held-out questions), so a cold start behind a new instruction has to relearn
addition. With the marker added as one token (`trainer.pipeline.add_marker_token`, its embedding copied
from `<think>`), the readable response starts exactly where the base's pretraining responses did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from reward_server.response_format import COLD_START_MARKER as COLD_START_MARKER
from reward_server.response_format import THINK_OPEN as THINK_OPEN
from reward_server.response_format import chain_of_thought as chain_of_thought
from reward_server.response_format import completion_for_reward as completion_for_reward
from reward_server.response_format import readable_response as readable_response
from reward_server.response_format import split_readable as split_readable


class Tokenizer(Protocol):
    """What the templates and the data loader ask of a Hugging Face tokenizer."""

    def __call__(self, text: list[str], /) -> Mapping[str, Sequence[Sequence[int]]]:
        """Token ids of each text under `"input_ids"`, with the default special tokens (as vLLM encodes)."""
        ...

    def apply_chat_template(self, conversation: list[dict[str, str]], /, *, tokenize: bool,
                            add_generation_prompt: bool) -> object:
        """The conversation rendered with the model's chat template (text, with `tokenize=False`)."""
        ...


R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)


def r1_zero(question: str) -> str:
    """The R1-Zero prompt for a base model."""
    return f"{R1_ZERO_INSTRUCTION} User: {question} Assistant: {THINK_OPEN}"


def r1_chat(question: str, tokenizer: Tokenizer) -> str:
    """The R1 instruction as a system message, rendered with the model's chat template."""
    messages = [
        {"role": "system", "content": R1_ZERO_INSTRUCTION},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text) + THINK_OPEN


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


PYTHON_TOOL_INSTRUCTION = (
    " While reasoning, the Assistant may run Python to compute or check a step: it writes a program between "
    "<code> and </code> (printing what it needs), and the program's output is returned between <interpreter> "
    "and </interpreter>. The final answer is enclosed within <answer> </answer> tags."
)
"""The ReTool layout (arXiv:2504.11536) of the `python` tool's markers (`reward_server.tools.PythonTool`)."""


def python_tool_chat(question: str, tokenizer: Tokenizer) -> str:
    """`r1_chat` with the `python` tool described in the system message (for `rollout.tools=SOURCE:python`)."""
    messages = [
        {"role": "system", "content": R1_ZERO_INSTRUCTION + PYTHON_TOOL_INSTRUCTION},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text) + THINK_OPEN


TEMPLATES: dict[str, Callable[..., str]] = {"r1_zero": r1_zero, "r1_chat": r1_chat,
                                            "r1_cold_start": r1_cold_start, "r1_zero_readable": r1_zero_readable,
                                            "python_tool_chat": python_tool_chat}
"""Template name -> renderer. `r1_chat` and `python_tool_chat` also need the tokenizer."""

NEEDS_TOKENIZER = ("r1_chat", "python_tool_chat")
"""The templates that render with the model's own chat template."""


def render(template: str, question: str, tokenizer: Tokenizer | None = None) -> str:
    """Apply the named template to one question."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    if template in NEEDS_TOKENIZER:
        if tokenizer is None:
            raise ValueError(f"template {template!r} needs the tokenizer (its chat template renders the prompt)")
        return TEMPLATES[template](question, tokenizer)
    return TEMPLATES[template](question)


