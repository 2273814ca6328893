"""Rollout engines that die or hang are replaced and their groups generated again (actors.engine_group),
with stand-in engine actors on a local Ray; a weight sync broken by an engine's death names the engine
(actors.weight_sync). A real engine process killed mid-run is in test_end_to_end."""

from __future__ import annotations

import os
import time

import pytest

from actors.engine_group import EngineFailure, EngineGroup
from actors.engine_processes import EngineProcesses
from actors.weight_sync import WeightSync, WeightSyncError
from cluster.calls import CallFailure
from trainer.types import Completion, Prompt, RolloutBatch, WeightVersion

PROMPTS = [Prompt(index=i, text="x" * (10 + i), ground_truth="1") for i in range(6)]


class StandInEngine:
    """Answers each prompt with n completions naming the prompt; `fault` = "die" or "hang" in generate."""

    def __init__(self, engine: int, fault: str = "", version: int = 0):
        self.engine, self.fault, self.version = engine, fault, version

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, stop, seed, expected_version):
        if self.fault == "die":
            os._exit(1)
        if self.fault == "hang":
            time.sleep(3600)
        groups = tuple(tuple(Completion((1,), f"p{p.index}s{g}", (-0.1,), "stop") for g in range(n)) for p in prompts)
        return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((p.index,) for p in prompts),
                            completions=groups, policy_version=self.version)

    def weight_version(self, with_checksums=False):
        return WeightVersion(engine=self.engine, policy_version=self.version)

    def set_version(self, version):
        self.version = version

    def processes(self):  # a stand-in starts no vLLM processes: nothing to remove when it is replaced
        import ray

        return EngineProcesses(ray.get_runtime_context().get_node_id(), (), ())


@pytest.fixture(scope="module")
def ray_local(shared_ray):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    yield
    for actor in _started:  # the shared Ray outlives this module (a hung stand-in would sleep on in it)
        ray.kill(actor)


_started: list = []
"""Every stand-in engine actor started here, replacements included."""


def group(faults: list[str], *, replacement_fault: str = "", max_restarts: int = 2, timeout_s: float = 30.0,
          defer_reload: bool = False):
    import ray

    remote = ray.remote(num_cpus=0)(StandInEngine)

    def start(engine: int, fault: str, version: int):
        _started.append(remote.remote(engine, fault, version))
        return _started[-1]

    engines = EngineGroup([start(e, f, 3) for e, f in enumerate(faults)], generate_timeout_s=timeout_s,
                          start_engine=lambda e: start(e, replacement_fault, 0), max_restarts=max_restarts,
                          defer_reload=defer_reload)
    engines.expected_version = 3
    reloads = []

    def reload_weights():  # what WeightSync.reload does: the current version into every engine
        reloads.append(engines.expected_version)
        ray.get([a.set_version.remote(engines.expected_version) for a in engines.engine_actors])

    engines.reload_weights = reload_weights
    engines.wait_until_up()  # as System.build does: the generate deadline then counts generation only
    return engines, reloads


def generate(engines):
    return engines.generate(PROMPTS, n=2, temperature=1.0, top_p=1.0, max_tokens=8, stop=(), seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_dead_or_hung_engine_is_replaced_and_its_groups_generated_again(ray_local, fault):
    engines, reloads = group(["", fault], timeout_s=5.0 if fault == "hang" else 30.0)
    old = engines.engine_actors[1]
    batch = generate(engines)
    assert [p.index for p in batch.prompts] == list(range(6))
    assert [[c.text for c in g] for g in batch.completions] == [[f"p{i}s0", f"p{i}s1"] for i in range(6)]
    assert batch.policy_version == 3
    assert engines.engine_actors[1] is not old and reloads == [3]
    cause = "died" if fault == "die" else "no answer to generate"
    assert len(engines.failures) == 1 and engines.failures[0].startswith("engine 1") and cause in engines.failures[0]


@pytest.mark.slow
def test_async_rollouts_defer_a_replacements_weights_to_the_next_push(ray_local):
    """With async rollouts the learner may be training while an engine dies, so its weights are not those of
    expected_version: the survivor generates the dead engine's groups, the replacement samples nothing and
    waits (`awaiting_weights`) for the next push, which rejoins it."""
    engines, reloads = group(["", "die"], defer_reload=True)
    batch = generate(engines)
    assert [[c.text for c in g] for g in batch.completions] == [[f"p{i}s0", f"p{i}s1"] for i in range(6)]
    assert batch.policy_version == 3 and reloads == [] and engines.awaiting_weights == {1}
    assert len(engines.failures) == 1 and engines.failures[0].startswith("engine 1")
    assert generate(engines).completions == batch.completions  # engine 0 alone, the same groups


def test_a_push_rejoins_engines_replaced_during_an_asynchronous_generate():
    parts = SyncParts(can_restart=True)
    parts.awaiting_weights = {1}
    sync = WeightSync(parts, None, backend="gloo", timeout_s=5.0, bucket_bytes=1)
    sync.spec = object()  # connected
    calls = []
    sync.connect = lambda: calls.append("connect")  # type: ignore[method-assign]
    sync._send = lambda version: calls.append(version) or {}  # type: ignore[method-assign]
    sync.push(5)
    assert calls == ["connect", 5] and parts.awaiting_weights == set()
    sync.push(6)
    assert calls == ["connect", 5, 6]  # no one waits: the group stands


@pytest.mark.slow
def test_repeated_failures_stop_the_run_with_a_summary(ray_local):
    engines, _ = group(["die", ""], replacement_fault="die", max_restarts=1)
    with pytest.raises(EngineFailure) as err:
        generate(engines)
    text = str(err.value)
    assert "failed 2 time(s), more than rollout.max_engine_restarts = 1" in text
    assert text.count("engine 0: failed in generate") == 2 and "the actor died" in text


class SyncParts:
    """Stand-ins for WeightSync's engine group, where engine 1 died during the sync."""

    def __init__(self, can_restart: bool):
        self.expected_version, self.tp_sizes = 4, [1, 1]
        self.start_engine = (lambda e: None) if can_restart else None
        self.replaced: list = []
        self.awaiting_weights: set[int] = set()

    def dead_engines(self):
        return {1: CallFailure("engine 1", "failed in weight sync: the actor died (SIGKILL)", died=True)}

    def replace(self, failed, *, with_others=False):
        self.replaced.append((sorted(failed), with_others))


def test_a_weight_sync_broken_by_an_engine_death_names_the_engine_then_retries():
    parts = SyncParts(can_restart=False)
    sync = WeightSync(parts, None, backend="gloo", timeout_s=5.0, bucket_bytes=1)
    sync.spec = object()  # connected
    sent = []

    def send(version):
        sent.append(version)
        if len(sent) == 1:
            raise WeightSyncError("learner rank 0: sending version 5 failed: Connection reset by peer")
        return {"weight_sync_s": 0.1}

    sync._send = send  # type: ignore[method-assign]
    with pytest.raises(WeightSyncError, match=r"failed because engine 1: .*the actor died.*Connection reset"):
        sync.push(5)
    parts.start_engine, sent[:] = (lambda e: None), []
    assert sync.push(5) == {"weight_sync_s": 0.1}
    assert sent == [5, 5] and parts.replaced == [([1], True)]
