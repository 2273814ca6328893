"""The engine group: N rollout engines used as one (generate, versions, sleep / wake, weight-sync endpoints).

    EngineGroup.generate(B prompts) --assign_groups--> engine e gets a sub-list (whole groups of G)
        --one wait on all engines, with a deadline--> B groups back in the original prompt order
    EngineGroup.init_weight_sync_async / receive_weights_async: the receiving half of a weight sync,
        driven by actors.weight_sync.WeightSync, which owns it end to end.

A group of G samples stays on one engine, so its prompt is prefilled once (prefix caching). Engines
are balanced by estimated work (prompt characters + max_tokens per prompt), greedily, largest first.
Every call has a deadline; a failure names the engine and the root cause (an engine that died is
reported as its death).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.rollout import StaleEngineError
from cluster.calls import get_all
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


class EngineGroup:
    """N rollout engine actors used as one. Lives in the controller."""

    def __init__(self, engine_actors: Sequence[Any], tp_sizes: Sequence[int] | None = None, *,
                 generate_timeout_s: float | None = 600.0, control_timeout_s: float = 120.0,
                 start_timeout_s: float = 1800.0):
        self.engine_actors = list(engine_actors)
        self.tp_sizes = list(tp_sizes) if tp_sizes is not None else [1] * len(self.engine_actors)
        self.generate_timeout_s, self.control_timeout_s = generate_timeout_s, control_timeout_s
        self.start_timeout_s = start_timeout_s
        self.expected_version = 0
        """The version every engine must hold before we sample (0: weights from disk)."""

    @property
    def names(self) -> list[str]:
        return [f"engine {e}" for e in range(len(self.engine_actors))]

    @property
    def world_size(self) -> int:
        """Transfer group size: the sender plus every vLLM worker of every engine."""
        return 1 + sum(self.tp_sizes)

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 stop: Sequence[str], seed: int | None) -> RolloutBatch:
        """B prompts -> one RolloutBatch with B groups of n, in prompt order; refuses stale engines."""
        engine_of = assign_groups([len(p.text) + max_tokens for p in prompts], len(self.engine_actors))
        used = sorted(set(engine_of))
        refs = []
        for e in used:
            mine = [p for p, k in zip(prompts, engine_of) if k == e]
            refs.append(self.engine_actors[e].generate.remote(
                mine, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop),
                seed=seed, expected_version=self.expected_version))
        parts = get_all(refs, what=f"generate ({len(prompts)} prompts x {n})", names=[f"engine {e}" for e in used],
                        timeout_s=self.generate_timeout_s, keep=(StaleEngineError,))
        slot = {e: i for i, e in enumerate(used)}
        return merge_batches(prompts, [slot[e] for e in engine_of], parts)

    def init_weight_sync_async(self, spec: Any) -> list[Any]:
        """Refs of every engine joining the transfer group `spec` (actors.weight_sync.TransferSpec)."""
        offsets = [1 + sum(self.tp_sizes[:e]) for e in range(len(self.engine_actors))]
        return [actor.init_weight_sync.remote(spec, offset) for actor, offset in zip(self.engine_actors, offsets)]

    def receive_weights_async(self, version: int) -> list[Any]:
        """Refs of every engine receiving `version` (the sender must run concurrently)."""
        return [actor.receive_weights.remote(version) for actor in self.engine_actors]

    def wait_until_up(self) -> list[WeightVersion]:
        """Wait for every engine to have loaded its model (at most start_timeout_s); their versions."""
        return get_all([a.weight_version.remote(False) for a in self.engine_actors], what="engine start-up",
                       names=self.names, timeout_s=self.start_timeout_s)

    def versions(self, with_checksums: bool = False) -> list[WeightVersion]:
        return self._all("weight version" + (" and checksums" if with_checksums else ""),
                         lambda a: a.weight_version.remote(with_checksums))

    def check_versions(self) -> None:
        """Raise StaleEngineError unless every engine holds `expected_version`."""
        stale = [v for v in self.versions() if v.policy_version != self.expected_version]
        if stale:
            held = ", ".join(f"engine {v.engine} holds {v.policy_version}" for v in stale)
            raise StaleEngineError(f"expected weight version {self.expected_version}: {held}")

    def sleep(self, level: int = 1) -> None:
        """Free the engines' device memory while the learner trains (a no-op without GPU sleep mode)."""
        self._all("sleep", lambda a: a.sleep.remote(level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate in stages: ["weights"] before a weight sync, ["kv_cache"] after it; None: both."""
        self._all(f"wake up {tags or 'all'}", lambda a: a.wake_up.remote(tags))

    def memory(self) -> list[dict[str, float]]:
        """Per engine: GiB in use (`device_used_gib` on GPU, `host_rss_gib` on CPU)."""
        return self._all("memory", lambda a: a.memory.remote())

    def shutdown(self) -> None:
        self._all("shutdown", lambda a: a.shutdown.remote())

    def _all(self, what: str, call: Any) -> list[Any]:
        return get_all([call(a) for a in self.engine_actors], what=what, names=self.names,
                       timeout_s=self.control_timeout_s)
