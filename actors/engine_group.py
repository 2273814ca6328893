"""The engine group: N rollout engines used as one (generate, versions, sleep / wake, weight-sync endpoints).

    EngineGroup.generate(B prompts) --assign_groups--> engine e gets a sub-list (whole groups of G)
        --one wait on all engines, with a deadline--> B groups back in the original prompt order
        (each engine's groups also go to `on_part` the moment it finishes: the controller scores them
        while the other engines still generate)
    EngineGroup.init_weight_sync_async / receive_weights_async: the receiving half of a weight sync,
        driven by actors.weight_sync.WeightSync, which owns it end to end.

A group of G samples stays on one engine, so its prompt is prefilled once (prefix caching). Engines
are balanced by estimated work (prompt characters + max_tokens per prompt), greedily, largest first.
Every call has a deadline; a failure names the engine and the root cause (an engine that died is
reported as its death).

An engine that dies or hangs in `generate` is replaced: the other engines' groups are kept, the failed
engine's actor is killed and a new one started in its placement bundle (`start_engine`), the weight-sync
owner forms the transfer group anew and sends it the current weights (`reload_weights`, i.e.
`actors.weight_sync.WeightSync.reload`), every engine must then report `expected_version`, and the
unfinished groups are generated again with the same per-prompt seeds. With `defer_reload` (async rollouts,
`trainer.overlap`: a generate may run while the learner trains, so the learner's weights are no longer those
of `expected_version`) the replacement gets no weights then: the other engines generate the unfinished groups
(they hold `expected_version`), and the next weight push forms the transfer group anew and sends the new
engine that version with the others (`awaiting_weights`). Past `max_restarts` replacements
in a run, `EngineFailure` stops it with a summary of every failure (engine, call, root cause).

An engine's vLLM processes (engine core, workers) and their /dev/shm files are recorded once it is up
(`wait_until_up`, and a replacement's start-up) and removed on the engine's node when it is replaced or
the group shuts down (actors.engine_processes): killing the actor alone leaves them running.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from actors.engine_processes import EngineProcesses, reap_on_node
from cluster.calls import CallFailure, RemoteCallError, each_as_done, get_all, wait_each
from cluster.untyped import ActorHandle
from trainer.protocols import StaleEngineError
from trainer.types import Prompt, RolloutBatch, RolloutPart, WeightVersion

if TYPE_CHECKING:
    from ray import ObjectRef

    from actors.weight_sync import TransferSpec
    from reward_server.tools import ToolSettings


def assign_groups(costs: Sequence[int], num_engines: int, loads: Sequence[int] | None = None) -> list[int]:
    """Engine index for each prompt: longest-processing-time-first onto the least loaded engine.

    costs: [B] estimated work per prompt; loads: [num_engines] work already outstanding (default 0).
    """
    heap = [(load, e) for e, load in enumerate(loads if loads is not None else [0] * num_engines)]
    heapq.heapify(heap)  # (load, engine): the least loaded engine first, the lowest index among equals
    engine_of = [0] * len(costs)
    for b in sorted(range(len(costs)), key=lambda i: -costs[i]):
        load, e = heap[0]
        engine_of[b] = e
        heapq.heapreplace(heap, (load + costs[b], e))
    return engine_of


def merge_batches(prompts: Sequence[Prompt], engine_of: Sequence[int], parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """One RolloutBatch in the original order from the per-engine parts (each in its own sub-order)."""
    cursor = [0] * len(parts)
    rows = []
    for e in engine_of:
        rows.append((parts[e], cursor[e]))
        cursor[e] += 1
    return _assemble(prompts, rows)


def _assemble(prompts: Sequence[Prompt], rows: Sequence[tuple[RolloutBatch, int]]) -> RolloutBatch:
    """One RolloutBatch in prompt order from (engine part, row in it) per prompt; all of one version."""
    versions = {part.policy_version for part, _ in rows}
    if len(versions) != 1:
        raise StaleEngineError(f"engines sampled with different weight versions {sorted(versions)}")
    return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple(p.prompt_token_ids[i] for p, i in rows),
                        completions=tuple(p.completions[i] for p, i in rows), policy_version=versions.pop(),
                        engine_seconds=max(p.engine_seconds for p, _ in rows))


class EngineFailure(RemoteCallError):
    """Rollout engines failed more often than `max_restarts` allows; the message lists every failure."""


class EngineGroup:
    """N rollout engine actors used as one. Lives in the controller."""

    def __init__(self, engine_actors: Sequence[ActorHandle], tp_sizes: Sequence[int] | None = None, *,
                 generate_timeout_s: float | None = 600.0, control_timeout_s: float = 120.0,
                 start_timeout_s: float = 1800.0, start_engine: Callable[[int], ActorHandle] | None = None,
                 max_restarts: int = 0, defer_reload: bool = False):
        self.engine_actors = list(engine_actors)
        self.tp_sizes = list(tp_sizes) if tp_sizes is not None else [1] * len(self.engine_actors)
        self.generate_timeout_s, self.control_timeout_s = generate_timeout_s, control_timeout_s
        self.start_timeout_s = start_timeout_s
        self.expected_version = 0
        """The version every engine must hold before we sample (0: weights from disk)."""
        self.start_engine, self.max_restarts = start_engine, max_restarts
        """`start_engine(e)`: a new actor for engine e in its bundle; at most `max_restarts` per run."""
        self.reload_weights: Callable[[], None] | None = None
        """The current weights into every engine, after a replacement: the builder (actors.launch) sets it to
        `actors.weight_sync.WeightSync.reload`; the group knows nothing else of the weight sync."""
        self.defer_reload = defer_reload
        """A replacement made in `generate` waits for the next weight push instead of reloading now."""
        self.awaiting_weights: set[int] = set()
        """Replaced engines that hold no weights of `expected_version` yet: they sample nothing until the next
        push (`actors.weight_sync.WeightSync.push` rejoins them and then clears this)."""
        self.failures: list[str] = []
        """Every engine failure of the run, oldest first: 'engine 1: failed in generate (...): <cause>'."""
        self.recorded: dict[int, EngineProcesses] = {}
        """Engine index -> its vLLM processes and /dev/shm files (recorded once it is up), removed when
        that engine is replaced or the group shuts down."""

    @property
    def names(self) -> list[str]:
        return [f"engine {e}" for e in range(len(self.engine_actors))]

    @property
    def world_size(self) -> int:
        """Transfer group size: the sender plus every vLLM worker of every engine."""
        return 1 + sum(self.tp_sizes)

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 stop: Sequence[str], seed: int | None,
                 on_part: Callable[[RolloutPart], None] | None = None, tools: ToolSettings | None = None
                 ) -> RolloutBatch:
        """B prompts -> one RolloutBatch with B groups of n, in prompt order; refuses stale engines. The
        sources that `tools` gives tools are generated turn by turn (`actors.rollout_tools`).

        `on_part(part)` gets each engine's groups the moment that engine has finished, while the others
        still generate. Groups of an engine that dies or misses the deadline are generated again after it
        was replaced (and go to `on_part` then); a group never goes to `on_part` twice."""
        todo, done = list(range(len(prompts))), {}  # done: prompt position -> (its engine's part, row in it)
        what = f"generate ({len(prompts)} prompts x {n})"
        with_tools = {"tools": tools} if tools is not None else {}
        while todo:
            live = [e for e in range(len(self.engine_actors)) if e not in self.awaiting_weights]
            if not live:
                raise EngineFailure(f"every engine was replaced during an asynchronous generate and waits for the "
                                    f"next weight push: none can sample version {self.expected_version} "
                                    f"(failures: {'; '.join(self.failures)})")
            engine_of = [live[i] for i in assign_groups([len(prompts[b].text) + max_tokens for b in todo], len(live))]
            used = sorted(set(engine_of))
            mine: dict[int, list[int]] = {e: [] for e in used}
            for b, e in zip(todo, engine_of, strict=True):
                mine[e].append(b)
            refs = [self.engine_actors[e].generate.remote(
                [prompts[b] for b in mine[e]], n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                stop=tuple(stop), seed=seed, expected_version=self.expected_version, **with_tools) for e in used]
            failed: dict[int, CallFailure] = {}
            for i, part in each_as_done(refs, what=what, names=[f"engine {e}" for e in used],
                                        timeout_s=self.generate_timeout_s, keep=(StaleEngineError,)):
                e = used[i]
                if isinstance(part, CallFailure):
                    failed[e] = part
                    continue
                done.update({b: (part, row) for row, b in enumerate(mine[e])})
                if on_part is not None:
                    on_part(RolloutPart(positions=tuple(mine[e]), batch=part))
            failed = {e: failed[e] for e in sorted(failed)}
            todo = [b for e in failed for b in mine[e]]
            if failed:
                self.replace(failed, defer=self.defer_reload)
        return _assemble(prompts, [done[b] for b in range(len(prompts))])

    def replace(self, failed: dict[int, CallFailure], *, with_others: bool = False, defer: bool = False) -> None:
        """Kill the failed engines (`with_others`: every engine, e.g. after a weight sync broke off half-way),
        start new ones in their bundles, load the current weights into them and check every engine's
        version (`defer`: leave them `awaiting_weights` of the next push instead); EngineFailure past
        `max_restarts` failures in the run."""
        self.failures += [str(f) for f in failed.values()]
        if self.start_engine is None or self.reload_weights is None or len(self.failures) > self.max_restarts:
            raise EngineFailure(f"rollout engines failed {len(self.failures)} time(s), more than "
                                f"rollout.max_engine_restarts = {self.max_restarts} allows: " + "; ".join(self.failures))
        import ray

        restart = list(range(len(self.engine_actors))) if with_others else sorted(failed)
        for e in restart:
            try:
                ray.kill(self.engine_actors[e], no_restart=True)  # a hung engine must not keep its bundle
            except Exception as err:  # already gone
                print(f"engine {e}: kill after its failure: {type(err).__name__}: {err}")
        # Its engine core and workers outlive the actor and hold the memory the replacement needs.
        self.reap(restart)
        for e in restart:
            self.engine_actors[e] = self.start_engine(e)
        get_all([self.engine_actors[e].weight_version.remote(False) for e in restart],
                what="start-up of a replacement engine", names=[f"engine {e}" for e in restart],
                timeout_s=self.start_timeout_s)
        self.record_processes(restart)
        if defer:
            self.awaiting_weights |= set(restart)
        else:
            self.reload_weights()
            self.check_versions()
        print(f"replaced {', '.join(f'engine {e}' for e in failed)} after: "
              + "; ".join(str(f) for f in failed.values()) + f" (replacements so far: {len(self.failures)})")

    def init_weight_sync_async(self, spec: TransferSpec) -> list[ObjectRef]:
        """Refs of every engine joining the transfer group `spec` (actors.weight_sync.TransferSpec)."""
        offsets = [1 + sum(self.tp_sizes[:e]) for e in range(len(self.engine_actors))]
        return [actor.init_weight_sync.remote(spec, offset) for actor, offset in zip(self.engine_actors, offsets)]

    def receive_weights_async(self, version: int) -> list[ObjectRef]:
        """Refs of every engine receiving `version` (the sender must run concurrently)."""
        return [actor.receive_weights.remote(version) for actor in self.engine_actors]

    def wait_until_up(self) -> list[WeightVersion]:
        """Wait for every engine to have loaded its model (at most start_timeout_s); their versions."""
        versions = get_all([a.weight_version.remote(False) for a in self.engine_actors], what="engine start-up",
                           names=self.names, timeout_s=self.start_timeout_s)
        self.record_processes(range(len(self.engine_actors)))
        return versions

    def record_processes(self, engines: Sequence[int]) -> None:
        """Record these (live) engines' vLLM processes and /dev/shm files, added to what was recorded."""
        engines = list(engines)
        found = wait_each([self.engine_actors[e].processes.remote() for e in engines], what="a process record",
                          names=[f"engine {e}" for e in engines], timeout_s=self.control_timeout_s)
        for e, rec in zip(engines, found, strict=True):
            if isinstance(rec, CallFailure):  # what start-up recorded is still reaped
                print(f"engine {e}: its processes could not be recorded: {rec}")
            elif e in self.recorded:
                self.recorded[e] = self.recorded[e].merged(rec)
            else:
                self.recorded[e] = rec

    def reap(self, engines: Sequence[int]) -> None:
        """Kill what is left of these engines' recorded processes and unlink their /dev/shm files, each on
        its engine's node; the records are dropped. The engines' actors must be gone or done."""
        records = {e: self.recorded.pop(e) for e in engines if e in self.recorded}
        records = {e: r for e, r in records.items() if r.processes or r.shm}
        if not records:
            return
        try:
            results = reap_on_node(records.values(), timeout_s=self.control_timeout_s)
        except Exception as err:  # e.g. the node itself is gone, and its processes with it
            print(f"{', '.join(f'engine {e}' for e in records)}: clean-up failed: {type(err).__name__}: {err}")
            return
        for e, result in zip(records, results, strict=True):
            if result.alive or result.kept:
                print(f"engine {e}: clean-up: {result}")

    def versions(self, with_checksums: bool = False) -> list[WeightVersion]:
        return self._all("weight version" + (" and checksums" if with_checksums else ""),
                         lambda a: a.weight_version.remote(with_checksums))

    def check_versions(self) -> None:
        """Raise StaleEngineError unless every engine holds `expected_version`."""
        stale = [v for v in self.versions() if v.policy_version != self.expected_version]
        if stale:
            held = ", ".join(f"engine {v.engine} holds {v.policy_version}" for v in stale)
            raise StaleEngineError(f"expected weight version {self.expected_version}: {held}")

    def dead_engines(self) -> dict[int, CallFailure]:
        """The engines whose actor died (or does not answer a version query within the control deadline)."""
        found = wait_each([a.weight_version.remote(False) for a in self.engine_actors], what="a liveness check",
                          names=self.names, timeout_s=self.control_timeout_s)
        return {e: f for e, f in enumerate(found) if isinstance(f, CallFailure) and (f.died or f.timed_out)}

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
        """vLLM's own shutdown of every engine, then the engines' actors killed and what their processes
        left (processes, /dev/shm files) removed on each engine's node, even when the first part failed."""
        import ray

        try:
            # Also an engine that never reached wait_until_up (a start that failed or was interrupted);
            # and a file mapped since start-up is removed too.
            self.record_processes(range(len(self.engine_actors)))
            self._all("shutdown", lambda a: a.shutdown.remote())
        finally:
            for actor in self.engine_actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as err:  # already gone
                    print(f"engine shutdown: kill: {type(err).__name__}: {err}")
            self.reap(sorted(self.recorded))

    def _all(self, what: str, call: Callable[[ActorHandle], ObjectRef]) -> list:
        return get_all([call(a) for a in self.engine_actors], what=what, names=self.names,
                       timeout_s=self.control_timeout_s)
