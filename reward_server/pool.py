"""The stateless reward actor pool: K Ray actors score the B x G completions of a rollout batch.

    RolloutBatch --flatten--> N (prompt, completion) pairs --chunks--> K RewardActors
         ▲                                                                │  (each: RewardFn + its
         └──── ScoredBatch [B][G] ◄── reassemble by position ◄── ray.wait ┘   verifier subprocess)

Chunks are handed out on demand (each actor holds at most `IN_FLIGHT_PER_ACTOR` at a time), so an
actor stuck on a timing-out sample does not hold up the others' share. Every sample comes back at
its own [b][g] position: a verifier that raises or times out scores 0 with the reason in
`RewardResult.error`, and a chunk whose actor died is filled with error results and the actor
replaced, so a step never loses a sample and G never changes.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import ray

from reward_server.rewards import build_reward_fn
from trainer.config import RewardConfig
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch

CHUNKS_PER_ACTOR = 4
"""Chunks per actor and batch: small enough to rebalance around a slow chunk, large enough that the
per-call Ray overhead (~1 ms) stays far below the scoring time."""

IN_FLIGHT_PER_ACTOR = 2
"""Chunks queued on one actor at a time, so it starts the next one without waiting for the driver."""

Item = tuple[Prompt, Completion]


class RewardActor:
    """Holds one scoring function and its verifier worker subprocess. The pool runs it as a Ray actor."""

    def __init__(self, cfg: RewardConfig, max_response_tokens: int) -> None:
        self._score = build_reward_fn(cfg, max_response_tokens=max_response_tokens)

    def score(self, items: list[Item]) -> list[RewardResult]:
        """Score each (prompt, completion), in order; never raises for a bad sample."""
        return [self._score(prompt, completion) for prompt, completion in items]

    def close(self) -> None:
        self._score.close()


class RewardPool:
    """K reward actors behind one `score(rollout) -> ScoredBatch` call. Needs `ray.init` done."""

    def __init__(
        self, cfg: RewardConfig, max_response_tokens: int, num_actors: int, cpus_per_actor: float
    ) -> None:
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        # Any: Ray's stubs do not type `.remote` on actor classes and methods.
        self._remote_cls: Any = ray.remote(num_cpus=cpus_per_actor)(RewardActor)
        self._args = (cfg, max_response_tokens)
        self._actors: list[Any] = [self._remote_cls.remote(*self._args) for _ in range(num_actors)]
        self.failures_total = 0
        """Samples scored with an error (timeout, exception, dead actor) since the pool started."""

    def score(self, rollout: RolloutBatch) -> ScoredBatch:
        """Rewards for every completion of `rollout`, [B][G] in the same order."""
        items = [(p, c) for p, group in zip(rollout.prompts, rollout.completions) for c in group]
        chunks = _split(items, len(self._actors) * CHUNKS_PER_ACTOR)
        flat = self._run(chunks)
        results = _regroup(flat, [len(group) for group in rollout.completions])
        self.failures_total += sum(1 for r in flat if r.error is not None)
        return ScoredBatch(rollout=rollout, results=results)

    def shutdown(self) -> None:
        """Stop every actor's verifier worker, then the actors."""
        try:
            ray.get([actor.close.remote() for actor in self._actors], timeout=30)
        except ray.exceptions.RayError:
            pass  # an actor already gone has no worker left to stop
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def _run(self, chunks: list[list[Item]]) -> list[RewardResult]:
        """Score `chunks` over the actors as they free up; results in chunk order, flattened."""
        done: list[list[RewardResult] | None] = [None] * len(chunks)
        pending: dict[ray.ObjectRef, tuple[int, int, Any]] = {}  # ref -> (chunk, actor index, actor)
        next_chunk = 0

        def submit(actor_index: int) -> None:
            nonlocal next_chunk
            if next_chunk < len(chunks):
                ref = self._actors[actor_index].score.remote(chunks[next_chunk])
                pending[ref] = (next_chunk, actor_index, self._actors[actor_index])
                next_chunk += 1

        for _ in range(IN_FLIGHT_PER_ACTOR):
            for actor_index in range(len(self._actors)):
                submit(actor_index)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            chunk_index, actor_index, actor = pending.pop(ready[0])
            try:
                done[chunk_index] = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                done[chunk_index] = [_failed(f"reward actor died: {exc}")] * len(chunks[chunk_index])
                if self._actors[actor_index] is actor:  # its other queued chunk fails too: replace once
                    self._replace(actor_index)
            except ray.exceptions.RayTaskError as exc:
                done[chunk_index] = [_failed(f"reward actor raised: {exc}")] * len(chunks[chunk_index])
            submit(actor_index)
        return [r for chunk in done if chunk is not None for r in chunk]

    def _replace(self, actor_index: int) -> None:
        ray.kill(self._actors[actor_index])
        self._actors[actor_index] = self._remote_cls.remote(*self._args)


def _failed(reason: str) -> RewardResult:
    return RewardResult(reward=0.0, components={}, correct=False, error=reason[:500])


def _split(items: list[Item], num_chunks: int) -> list[list[Item]]:
    """Consecutive chunks of near-equal size (at most `num_chunks`, none empty)."""
    size = max(1, math.ceil(len(items) / max(1, num_chunks)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _regroup(flat: list[RewardResult], group_sizes: list[int]) -> tuple[tuple[RewardResult, ...], ...]:
    """[N] -> [B][G_b], the inverse of flattening the groups in order."""
    if len(flat) != sum(group_sizes):
        raise RuntimeError(f"scored {len(flat)} samples for {sum(group_sizes)} completions")
    out, start = [], 0
    for size in group_sizes:
        out.append(tuple(flat[start : start + size]))
        start += size
    return tuple(out)


def failure_counts(scored: ScoredBatch) -> Counter[str]:
    """How many samples failed, by reason ('timeout', an exception's text, a dead actor)."""
    return Counter(r.error for group in scored.results for r in group if r.error is not None)
