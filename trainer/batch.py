"""From scored groups to the learner's padded `TrainBatch`, and the per-step rollout statistics.

Pure functions (torch only). Sequences are laid out group by group: row n = b * G + g.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer import analytics, grpo
from trainer.templates import chain_of_thought, completion_for_reward
from trainer.types import RolloutBatch, ScoredBatch, TrainBatch


def build_train_batch(scored: ScoredBatch, advantages: Tensor, *, pad_token_id: int,
                      overlong_filter: bool = False) -> TrainBatch:
    """Right-padded prompt + completion rows; `advantages` is [B, G]. Old/ref logprobs start at 0.

    With `overlong_filter` (DAPO), completions cut at the length limit are masked out of the loss
    but keep their place (G stays G for every group). Tokens the policy did not sample (the tool outputs of a
    multi-turn rollout, `Completion.loss_mask`) are False in `response_mask`, so the logprobs, the importance
    ratio, TIS and the KL term of the loss are taken on the policy's own tokens only.
    """
    rollout = scored.rollout
    rows: list[list[int]] = []
    starts: list[int] = []
    rollout_lps: list[tuple[float, ...]] = []
    keep: list[bool] = []
    policy: list[tuple[bool, ...]] = []
    for prompt_ids, group in zip(rollout.prompt_token_ids, rollout.completions, strict=True):
        for completion in group:
            rows.append(list(prompt_ids) + list(completion.token_ids))
            starts.append(len(prompt_ids))
            rollout_lps.append(completion.rollout_logprobs)
            keep.append(not (overlong_filter and completion.finish_reason == "length"))
            policy.append(completion.policy_mask())
    n, length = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)        # [N, L]
    attention_mask = torch.zeros(n, length, dtype=torch.bool)                   # [N, L]
    response_mask = torch.zeros(n, length, dtype=torch.bool)                    # [N, L]
    rollout_logprobs = torch.zeros(n, length, dtype=torch.float32)              # [N, L]
    for i, (row, start, lps) in enumerate(zip(rows, starts, rollout_lps, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = True
        response_mask[i, start : len(row)] = torch.tensor(policy[i], dtype=torch.bool) & keep[i]
        rollout_logprobs[i, start : len(row)] = torch.tensor(lps, dtype=torch.float32)
    zeros = torch.zeros(n, length, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        advantages=advantages.reshape(-1).to(torch.float32),                    # [N]
        old_logprobs=zeros,
        ref_logprobs=zeros.clone(),
        rollout_logprobs=rollout_logprobs,
        policy_version=rollout.policy_version,
        extras={"rewards": scored.rewards().reshape(-1)},
    )


def useful_groups(rewards: Tensor) -> Tensor:
    """[B] bool: groups whose rewards are not all equal up to rounding (DAPO dynamic sampling keeps only
    these); the complement of `grpo.flat_groups`, so the zero-variance share matches the zero advantages."""
    return ~grpo.flat_groups(rewards)                                           # [B]


def rollout_stats(scored: ScoredBatch) -> dict[str, float]:
    """Reward per component, accuracy, lengths, truncation and zero-variance share of one step."""
    results = [r for group in scored.results for r in group]
    completions = [c for group in scored.rollout.completions for c in group]
    # The policy's own tokens: a multi-turn response's tool outputs are not its length.
    lengths = torch.tensor([c.policy_tokens() for c in completions], dtype=torch.float32)
    rewards = scored.rewards()                                                  # [B, G]
    stats = {
        "reward": float(rewards.mean()),
        "accuracy": sum(r.correct for r in results) / len(results),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "zero_variance_group_frac": float((~useful_groups(rewards)).float().mean()),
        "reward_errors": float(sum(r.error is not None for r in results)),
        # The slowest engine's own seconds in vLLM; time/rollout/generate minus this is the dispatch
        # (Ray's calls, the transfer of the results, the wait on the engine's lock).
        "rollout_engine_s": scored.rollout.engine_seconds,
    }
    for name in sorted({k for r in results for k in r.components}):
        stats[f"reward/{name}"] = sum(r.components.get(name, 0.0) for r in results) / len(results)
    return stats | source_stats(scored) | r1_zero_analytics(scored) | tool_stats(scored)


def tool_stats(scored: ScoredBatch) -> dict[str, float]:
    """Multi-turn rollouts' tool use: calls and failed calls per response, turns, the share of response tokens
    masked out of the loss (tool outputs), and accuracy with and without a tool call (-1 when no response
    falls in that class). Empty when no completion was generated turn by turn."""
    pairs = [(c, r) for cs, rs in zip(scored.rollout.completions, scored.results, strict=True)
             for c, r in zip(cs, rs, strict=True)]
    if not any(c.turns for c, _ in pairs):
        return {}
    n = len(pairs)
    with_call = [r.correct for c, r in pairs if c.tool_calls]
    without = [r.correct for c, r in pairs if not c.tool_calls]
    tokens = sum(len(c.token_ids) for c, _ in pairs)
    masked = sum(c.policy_mask().count(False) for c, _ in pairs)
    return {
        "tools/calls_per_response": sum(c.tool_calls for c, _ in pairs) / n,
        "tools/call_rate": len(with_call) / n,
        "tools/errors": float(sum(len(c.tool_errors) for c, _ in pairs)),
        "tools/errors_per_call": sum(len(c.tool_errors) for c, _ in pairs) / max(1, sum(c.tool_calls for c, _ in pairs)),
        "tools/turns_mean": sum(c.turns for c, _ in pairs) / n,
        "tools/masked_token_frac": masked / max(1, tokens),
        "tools/accuracy_with_call": sum(with_call) / len(with_call) if with_call else -1.0,
        "tools/accuracy_without_call": sum(without) / len(without) if without else -1.0,
    }


def source_stats(scored: ScoredBatch) -> dict[str, float]:
    """Per data source (`Prompt.task`), when a batch mixes several: its samples, mean reward and accuracy."""
    by_source: dict[str, list] = {}
    for prompt, group in zip(scored.rollout.prompts, scored.results, strict=True):
        by_source.setdefault(prompt.task, []).extend(group)
    if len(by_source) < 2:
        return {}
    out: dict[str, float] = {}
    for source, results in sorted(by_source.items()):
        out[f"source/{source}/samples"] = float(len(results))
        out[f"source/{source}/reward"] = sum(r.reward for r in results) / len(results)
        out[f"source/{source}/accuracy"] = sum(r.correct for r in results) / len(results)
    return out


def r1_zero_analytics(scored: ScoredBatch) -> dict[str, float]:
    """Reflection words per response, the accuracy with and without them, and the chain of thought's language
    mix (`trainer.analytics`), on what the policy wrote (tool outputs left out)."""
    texts = [completion_for_reward(p.text, c.policy_text())
             for p, group in zip(scored.rollout.prompts, scored.rollout.completions, strict=True) for c in group]
    correct = [r.correct for group in scored.results for r in group]
    return (analytics.reflection_stats(texts) | analytics.reflection_accuracy(texts, correct)
            | analytics.language_mix([chain_of_thought(t) for t in texts]))


def select_groups(scored: ScoredBatch, keep: list[int]) -> ScoredBatch:
    """The groups `keep` of a scored batch, in that order."""
    return ScoredBatch(rollout=scored.rollout.select(keep), results=tuple(scored.results[i] for i in keep))


def concat_scored(parts: list[ScoredBatch]) -> ScoredBatch:
    """Groups of several scored batches sampled with the same weights, as one batch."""
    versions = {p.rollout.policy_version for p in parts}
    if len(versions) != 1:
        raise ValueError(f"cannot merge rollouts of different policy versions {sorted(versions)}")
    return ScoredBatch(
        rollout=RolloutBatch(
            prompts=tuple(p for part in parts for p in part.rollout.prompts),
            prompt_token_ids=tuple(t for part in parts for t in part.rollout.prompt_token_ids),
            completions=tuple(c for part in parts for c in part.rollout.completions),
            policy_version=versions.pop(),
            engine_seconds=sum(part.rollout.engine_seconds for part in parts),
        ),
        results=tuple(r for part in parts for r in part.results),
    )
