"""A discriminative reward model as a reward, and the per-source choice of reward (DeepSeek-R1,
arXiv:2501.12948, section 2.3.4: rule-based rewards for reasoning prompts, reward models for general ones).

`RewardModelScorer` loads a Hugging Face sequence-classification model with one output (a Bradley-Terry
reward model) and scores `prompt + response` in batches: the reward is `weight x sigmoid(logit)`, in
(0, 1), so it mixes with the 0/1 rule-based rewards on the same scale. R1 judges helpfulness on the
summary only and harmlessness on the whole response: `part="summary"` scores the prompt plus the
summary (after the readable markers or `</think>`), `part="response"` the prompt plus everything.

`route_by_source` is the mixing: every sample goes to the scorer named for its prompt's data source
(`Prompt.task`), with one fallback for sources not named, and comes back at its own position, so
one RL batch can hold rule-checked arithmetic prompts and reward-model-scored general prompts.

Departures: the sigmoid squashing and the `correct` flag (sigmoid > 0.5, i.e. the model prefers the
response to a neutral one) are this project's choices; R1 does not describe its reward scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from reward_server.response_format import completion_for_reward, split_readable
from reward_server.samples import Completion, Prompt, RewardResult

Item = tuple[Prompt, Completion]
Scorer = Callable[[Sequence[Item]], list[RewardResult]]
"""A batch of (prompt, completion) -> one RewardResult each, in order."""

Part = Literal["summary", "response"]


def summary_of(prompt_text: str, completion_text: str) -> str:
    """The summary of a completion: after the readable format's second marker, else after `</think>`,
    else the whole completion."""
    text = completion_for_reward(prompt_text, completion_text)
    readable = split_readable(text)
    if readable is not None:
        return readable[1]
    end = text.rfind("</think>")
    return text[end + len("</think>"):] if end != -1 else text


class RewardModelScorer:
    """Scores with a sequence-classification reward model (one logit) held in this process."""

    def __init__(self, model_dir: str, *, part: Part = "response", weight: float = 1.0, batch_size: int = 16,
                 max_tokens: int = 1024, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_dir}: a reward model has one output, this one has {self.model.config.num_labels}")
        if self.model.config.pad_token_id is None:
            # The classifier reads the logit at the last non-pad token; it must know which id pads.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.part, self.weight, self.batch_size = part, weight, batch_size
        self.max_tokens, self.device = max_tokens, device

    def logits(self, texts: Sequence[str]) -> list[float]:
        """The reward model's raw score of each text."""
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_tokens, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out += self.model(**enc).logits[:, 0].float().tolist()          # [b]
        return out

    def text_of(self, prompt: Prompt, completion: Completion) -> str:
        body = summary_of(prompt.text, completion.text) if self.part == "summary" else completion.text
        return prompt.text + body

    def score(self, items: Sequence[Item]) -> list[RewardResult]:
        import math

        results = []
        for logit in self.logits([self.text_of(p, c) for p, c in items]):
            value = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
            results.append(RewardResult(reward=self.weight * value, components={"reward_model": value},
                                        correct=value > 0.5))
        return results

    __call__ = score


def route_by_source(items: Sequence[Item], scorers: Mapping[str, Scorer], *, default: str) -> list[RewardResult]:
    """Score each item with `scorers[item's Prompt.task]` (or `scorers[default]` for a source not named),
    one call per scorer with its items in order; results come back in the items' order."""
    if default not in scorers:
        raise ValueError(f"default scorer {default!r} is not one of {sorted(scorers)}")
    by_scorer: dict[str, list[int]] = {}
    for i, (prompt, _) in enumerate(items):
        by_scorer.setdefault(prompt.task if prompt.task in scorers else default, []).append(i)
    results: list[RewardResult | None] = [None] * len(items)
    for name, indices in by_scorer.items():
        scored = scorers[name]([items[i] for i in indices])
        if len(scored) != len(indices):
            raise RuntimeError(f"scorer {name!r} returned {len(scored)} results for {len(indices)} items")
        for i, r in zip(indices, scored, strict=True):
            results[i] = r
    return [r for r in results if r is not None]


class RewardModelActor:
    """A reward model as a stateless reward actor: `ray.remote(RewardModelActor)` in a reward group, or plain."""

    def __init__(self, model_dir: str, **options: Any) -> None:
        self._scorer = RewardModelScorer(model_dir, **options)

    def score(self, items: list[Item]) -> list[RewardResult]:
        return self._scorer.score(items)
