"""Spreading prompt groups over N rollout engines, and versioned weight sync to all of them.

    EngineGroup.generate(B prompts) --assign_groups--> engine e gets a sub-list (whole groups of G)
        --ray.get([...]) once--> B groups back in the original prompt order, one policy_version
    EngineGroup.sync_weights(sender_call, version): receivers on every engine + the sender together,
        fail fast on the first error, bounded by timeout_s; then every engine must report `version`.

A group of G samples stays on one engine, so its prompt is prefilled once (prefix caching). Engines
are balanced by estimated work (prompt characters + max_tokens per prompt), greedily, largest first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from actors.rollout import StaleEngineError
from actors.weight_sync import WeightSyncError
from trainer.types import Prompt, RolloutBatch, WeightVersion


def assign_groups(costs: Sequence[int], num_engines: int, loads: Sequence[int] | None = None) -> list[int]:
    """Engine index for each prompt: longest-processing-time-first onto the least loaded engine.

    costs: [B] estimated work per prompt; loads: [num_engines] work already outstanding (default 0).
    """
    load = list(loads) if loads is not None else [0] * num_engines
    engine_of = [0] * len(costs)
    for b in sorted(range(len(costs)), key=lambda i: -costs[i]):
        e = min(range(num_engines), key=lambda k: load[k])
        engine_of[b] = e
        load[e] += costs[b]
    return engine_of


def merge_batches(prompts: Sequence[Prompt], engine_of: Sequence[int], parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """One RolloutBatch in the original order from the per-engine parts (each in its own sub-order)."""
    versions = {p.policy_version for p in parts}
    if len(versions) != 1:
        raise StaleEngineError(f"engines sampled with different weight versions {sorted(versions)}")
    cursor = [0] * len(parts)
    prompt_ids, groups = [], []
    for e in engine_of:
        part, i = parts[e], cursor[e]
        prompt_ids.append(part.prompt_token_ids[i])
        groups.append(part.completions[i])
        cursor[e] += 1
    return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple(prompt_ids), completions=tuple(groups),
                        policy_version=versions.pop(), engine_seconds=max(p.engine_seconds for p in parts))


def wait_all(refs: list[Any], timeout_s: float, describe: Callable[[int], str]) -> list[Any]:
    """ray.get of every ref, but raise on the first failure, and WeightSyncError past timeout_s."""
    deadline = time.monotonic() + timeout_s
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        remaining = deadline - time.monotonic()
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, remaining))
        if not ready:
            late = ", ".join(describe(index[r]) for r in pending)
            raise WeightSyncError(f"weight sync did not finish within {timeout_s}s; still waiting for: {late}")
        i = index[ready[0]]
        try:
            results[i] = ray.get(ready[0])
        except Exception as e:  # RayActorError (engine died), RayTaskError (transfer failed)
            raise WeightSyncError(f"weight sync failed at {describe(i)}: {type(e).__name__}: {e}") from e
    return results


class EngineGroup:
    """N rollout engine actors used as one: generate, weight sync, versions. Lives in the controller."""

    def __init__(self, engine_actors: Sequence[Any], tp_sizes: Sequence[int] | None = None):
        self.engine_actors = list(engine_actors)
        self.tp_sizes = list(tp_sizes) if tp_sizes is not None else [1] * len(self.engine_actors)
        self.expected_version = 0
        """The version every engine must hold before we sample (0: weights from disk)."""

    @property
    def world_size(self) -> int:
        """Transfer group size: the sender plus every vLLM worker of every engine."""
        return 1 + sum(self.tp_sizes)

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 stop: Sequence[str], seed: int | None, timeout_s: float | None = None) -> RolloutBatch:
        """B prompts -> one RolloutBatch with B groups of n, in prompt order; refuses stale engines."""
        engine_of = assign_groups([len(p.text) + max_tokens for p in prompts], len(self.engine_actors))
        used = sorted(set(engine_of))
        refs = []
        for e in used:
            mine = [p for p, k in zip(prompts, engine_of) if k == e]
            refs.append(self.engine_actors[e].generate.remote(
                mine, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop),
                seed=seed, expected_version=self.expected_version))
        parts = ray.get(refs, timeout=timeout_s)
        slot = {e: i for i, e in enumerate(used)}
        return merge_batches(prompts, [slot[e] for e in engine_of], parts)

    def init_weight_sync(self, sender_connect: Callable[[], Any], *, host: str, port: int, timeout_s: float) -> None:
        """Form the transfer group: `sender_connect()` (builds the WeightSender, returns its ObjectRef)
        runs together with every engine's `init_weight_sync`."""
        self.versions()  # the engines must be up before the group's timeout starts ticking
        offsets = [1 + sum(self.tp_sizes[:e]) for e in range(len(self.engine_actors))]
        refs = [sender_connect()] + [
            actor.init_weight_sync.remote(host, port, self.world_size, offset, timeout_s)
            for actor, offset in zip(self.engine_actors, offsets)]
        wait_all(refs, timeout_s + 30.0, self._describe)

    def sync_weights(self, sender_call: Callable[[], Any], version: int, timeout_s: float) -> dict:
        """Push `version` to every engine: receivers and `sender_call()` (the sender's send, an ObjectRef)
        run together; then check that every engine holds `version`. Returns the sender's stats."""
        if version <= self.expected_version:
            raise ValueError(f"weight versions must increase: {version} after {self.expected_version}")
        refs = [sender_call()] + [actor.receive_weights.remote(version) for actor in self.engine_actors]
        stats = wait_all(refs, timeout_s, self._describe)[0]
        self.expected_version = version
        self.check_versions()
        return stats

    def versions(self, with_checksums: bool = False) -> list[WeightVersion]:
        return ray.get([actor.weight_version.remote(with_checksums) for actor in self.engine_actors])

    def check_versions(self) -> None:
        """Raise StaleEngineError unless every engine holds `expected_version`."""
        stale = [v for v in self.versions() if v.policy_version != self.expected_version]
        if stale:
            held = ", ".join(f"engine {v.engine} holds {v.policy_version}" for v in stale)
            raise StaleEngineError(f"expected weight version {self.expected_version}: {held}")

    def shutdown(self) -> None:
        ray.get([actor.shutdown.remote() for actor in self.engine_actors])

    def _describe(self, i: int) -> str:
        return "the sender" if i == 0 else f"engine {i - 1}"
