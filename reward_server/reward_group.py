"""The stateless reward actors and their group: K Ray actors score the B x G completions of a rollout batch.

    RolloutBatch --flatten--> N (prompt, completion) pairs --chunks--> K RewardActors
         ▲                                                                │  (each: the scorers of
         └──── ScoredBatch [B][G] ◄── reassemble by position ◄── ray.wait ┘   each data source)

In a training step `score` gets one engine's groups at a time, while the other engines still generate
(`trainer.steps.score` calls it from a scoring thread of the driver as each engine finishes).

A reward actor scores each sample with the scorer its data source is routed to (`reward_server.scorers`):
the rule-based reward (with its verifier subprocess), a generative judge served on judge engines that the
group was handed, or reward models held in the actor.

Chunks are handed out on demand (each actor holds at most `IN_FLIGHT_PER_ACTOR` at a time), so an
actor stuck on a timing-out sample does not hold up the others' share. Every sample comes back at
its own [b][g] position: a verifier that raises or times out scores 0 with the reason in
`RewardResult.error`, and a chunk whose actor died is filled with error results and the actor
replaced, so a step never loses a sample and G never changes.

Every call has a deadline, so no sample can stall a step: a chunk gets `timeout_s` plus
`SAMPLE_ALLOWANCE_S` per sample (a verifier restart re-imports sympy), and an actor's first chunk also
`STARTUP_ALLOWANCE_S` (the actor and its verifier worker start). A chunk past its deadline scores 0
with the reason recorded, its actor is killed and replaced, and the chunks queued behind it are
handed out again.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from cluster.calls import tracking
from cluster.untyped import ActorHandle, RemoteActorClass
from reward_server.config import RewardConfig
from reward_server.samples import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch
from reward_server.sandbox import STARTUP_TIMEOUT_S

CHUNKS_PER_ACTOR = 4
"""Chunks per actor and batch: small enough to rebalance around a slow chunk, large enough that the
per-call Ray overhead (~1 ms) stays far below the scoring time."""

IN_FLIGHT_PER_ACTOR = 2
"""Chunks queued on one actor at a time, so it starts the next one without waiting for the driver."""

SAMPLE_ALLOWANCE_S = 10.0
"""Per-sample time on top of the verifier's limit: scoring the text (linear, well under a second for
5 MB) and, after a timeout, the verifier worker's restart (its sympy import takes seconds when busy)."""

STARTUP_ALLOWANCE_S = STARTUP_TIMEOUT_S + 60.0
"""Extra time for an actor's first chunk: the actor process starts, then its verifier worker imports."""

Item = tuple[Prompt, Completion]


@dataclass
class _Call:
    chunk: int
    """Index of the chunk being scored."""
    actor_index: int
    actor: ActorHandle
    """The handle the call went to (the slot may hold a replacement by the time it returns)."""
    budget_s: float
    deadline: float
    """time.monotonic() past which the call has failed."""


class RewardActor:
    """Holds the scorers of `cfg.routes` (`reward_server.scorers`): the rule-based reward and its verifier
    worker subprocess, a handle to a judge engine, reward models in this process. Run as a Ray actor."""

    def __init__(self, cfg: RewardConfig, max_response_tokens: int, judge_engines: Sequence[ActorHandle] = (),
                 actor_index: int = 0) -> None:
        from reward_server.scorers import build_routed_scorer, judge_generate_for

        self._scorer = build_routed_scorer(cfg, max_response_tokens=max_response_tokens,
                                           judge_generate=judge_generate_for(cfg, judge_engines, actor_index))

    def score(self, items: list[Item]) -> list[RewardResult]:
        """Score each (prompt, completion), in order; never raises for a bad sample."""
        return self._scorer.score(items)

    def close(self) -> None:
        self._scorer.close()


class RewardGroup:
    """K reward actors behind one `score(rollout) -> ScoredBatch` call. Needs `ray.init` done."""

    def __init__(
        self, cfg: RewardConfig, max_response_tokens: int, num_actors: int, cpus_per_actor: float, *,
        sample_allowance_s: float = SAMPLE_ALLOWANCE_S, startup_allowance_s: float = STARTUP_ALLOWANCE_S,
        actor_cls: type = RewardActor, judge_engines: Sequence[ActorHandle] = (),
    ) -> None:
        """`judge_engines`: handles of the judge's engine actors (`RolloutWorker`s serving the judge model),
        needed when `cfg.routes` send a data source to the judge; reward actor i asks engine i mod their number."""
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        self._remote_cls: RemoteActorClass = ray.remote(num_cpus=cpus_per_actor)(actor_cls)
        extra: tuple[list[ActorHandle], ...] = (list(judge_engines),) if judge_engines else ()
        self._args = [(cfg, max_response_tokens, *extra, i) if extra else (cfg, max_response_tokens)
                      for i in range(num_actors)]
        self._actors: list[ActorHandle] = [self._remote_cls.remote(*args) for args in self._args]
        self._fresh = [True] * num_actors
        """Actor slots whose actor has not returned a chunk yet (its start counts against its first)."""
        self._sample_budget_s = cfg.timeout_s + sample_allowance_s
        self._chunk_allowance_s = cfg.judge.timeout_s if "judge" in cfg.scorers_used() else 0.0
        """A chunk with judged samples waits on one judge call on top of its samples' own budget."""
        self._startup_allowance_s = startup_allowance_s
        self.failures_total = 0
        """Samples scored with an error (timeout, exception, dead actor) since the group started."""

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
        queue = deque(range(len(chunks)))
        pending: dict[ray.ObjectRef, _Call] = {}
        busy_until = [0.0] * len(self._actors)  # an actor's queued calls run one after another

        def top_up() -> None:
            """Give every actor up to IN_FLIGHT_PER_ACTOR calls while chunks wait."""
            for index, actor in enumerate(self._actors):
                in_flight = sum(1 for c in pending.values() if c.actor is actor)
                for _ in range(IN_FLIGHT_PER_ACTOR - in_flight):
                    if not queue:
                        return
                    chunk = queue.popleft()
                    budget = len(chunks[chunk]) * self._sample_budget_s + self._chunk_allowance_s
                    if self._fresh[index] and in_flight == 0:
                        budget += self._startup_allowance_s
                    deadline = max(time.monotonic(), busy_until[index]) + budget
                    busy_until[index] = deadline
                    pending[actor.score.remote(chunks[chunk])] = _Call(chunk, index, actor, budget, deadline)
                    in_flight += 1

        top_up()
        with tracking(f"scoring {sum(map(len, chunks))} samples", []) as call_state:
            while pending:
                call_state.waiting = sorted({f"reward actor {c.actor_index}" for c in pending.values()})
                wait_s = min(c.deadline for c in pending.values()) - time.monotonic()
                ready, _ = ray.wait(list(pending), num_returns=1,
                                    timeout=max(0.0, wait_s) if math.isfinite(wait_s) else None)
                if not ready:
                    for index in self._time_out(pending, chunks, done, queue):
                        busy_until[index] = 0.0
                    top_up()
                    continue
                call = pending.pop(ready[0])
                n = len(chunks[call.chunk])
                try:
                    done[call.chunk] = ray.get(ready[0])
                    self._fresh[call.actor_index] = False
                except ray.exceptions.RayActorError as exc:
                    done[call.chunk] = [_failed(f"reward actor died: {exc}")] * n
                    if self._actors[call.actor_index] is call.actor:  # its other queued chunk fails too: replace once
                        self._replace(call.actor_index)
                        busy_until[call.actor_index] = 0.0
                except ray.exceptions.RayTaskError as exc:
                    done[call.chunk] = [_failed(f"reward actor raised: {exc}")] * n
                top_up()
        return [r for chunk in done if chunk is not None for r in chunk]

    def _time_out(self, pending: dict[ray.ObjectRef, _Call], chunks: list[list[Item]],
                  done: list[list[RewardResult] | None], queue: deque[int]) -> list[int]:
        """Fail every call past its deadline, replace its actor and queue again the chunks that waited
        behind it there; returns the replaced actor slots."""
        now, replaced = time.monotonic(), []
        for call in [c for c in pending.values() if c.deadline <= now]:
            if not any(c is call for c in pending.values()):
                continue  # dropped with an earlier call of the same actor
            reason = (f"reward timeout: {len(chunks[call.chunk])} samples not scored within "
                      f"{call.budget_s:.0f} s; reward actor {call.actor_index} replaced")
            done[call.chunk] = [_failed(reason)] * len(chunks[call.chunk])
            for ref, other in list(pending.items()):
                if other.actor is call.actor:
                    del pending[ref]
                    if other is not call:
                        queue.appendleft(other.chunk)
            if self._actors[call.actor_index] is call.actor:
                self._replace(call.actor_index)
                replaced.append(call.actor_index)
            else:  # its slot already holds a replacement (the actor had died): just make sure it is gone
                ray.kill(call.actor)
        return replaced

    def _replace(self, actor_index: int) -> None:
        ray.kill(self._actors[actor_index])
        self._actors[actor_index] = self._remote_cls.remote(*self._args[actor_index])
        self._fresh[actor_index] = True


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
