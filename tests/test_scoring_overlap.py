"""Scoring while the engines generate (trainer.steps.score): each engine's groups go to the reward actors the
moment that engine finishes. The real EngineGroup and RewardGroup run against stand-in actors and a stand-in
for Ray's wait/get/kill (no Ray started): a finished part is scored before a slower engine finishes, the
ScoredBatch is the one scoring after generation gives, and faults (a dead or hung engine, a hung reward
call, too many reward errors) are handled as before."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import ray

from actors.engine_group import EngineGroup
from actors.engine_processes import EngineProcesses
from reward_server.reward_group import RewardGroup
from trainer import steps
from trainer.config import AlgorithmConfig, RewardConfig, TrainConfig
from trainer.data import PromptSampler
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, WeightVersion

WAIT_S = 10.0
"""Longest a stand-in engine waits for an event before it answers anyway (the test then fails, not hangs)."""

PROMPTS = [Prompt(index=i, text="x" * (10 + i), ground_truth="1") for i in range(6)]
G = 2


class Ref:
    """A call's result: ready once `ready()` says so; `get` returns `value` or raises `error`."""

    def __init__(self, ready=lambda: True, value=None, error=None):
        self.ready, self.value, self.error = ready, value, error


class FakeRay:
    """Ray's wait / get / kill / remote for the groups under test, polled every millisecond."""

    def __init__(self):
        self.killed = []

    def wait(self, refs, num_returns=1, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = [r for r in refs if r.ready()][:num_returns]
            if ready or (end is not None and time.monotonic() >= end):
                return ready, [r for r in refs if not any(r is x for x in ready)]
            time.sleep(0.001)

    def get(self, ref, timeout=None):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, handle, no_restart=True):
        self.killed.append(handle)

    def remote(self, **_):
        return lambda cls: SimpleNamespace(remote=lambda *args: cls(*args))


def method(fn):
    return SimpleNamespace(remote=fn)


class Engine:
    """A stand-in engine: answers `p{index}s{g}` for sample g of each prompt once `until()` holds;
    `fault` "die" (the call fails as a dead actor) or "hang" (never answers)."""

    def __init__(self, engine, version=3, fault="", until=lambda: True):
        self.engine, self.version, self.fault, self.until = engine, version, fault, until
        self.finished_at = None
        self.generate = method(self._generate)
        self.weight_version = method(lambda with_checksums=False: Ref(value=WeightVersion(self.engine, self.version)))
        self.set_version = method(self._set_version)
        # a stand-in starts no vLLM processes: nothing to remove when it is replaced
        self.processes = method(lambda: Ref(value=EngineProcesses("stand-in", (), ())))

    def _generate(self, prompts, *, n, temperature, top_p, max_tokens, stop, seed, expected_version):
        if self.fault == "die":
            return Ref(error=ray.exceptions.RayActorError(error_msg="the engine process was killed"))
        groups = tuple(tuple(Completion((p.index, g), f"p{p.index}s{g}", (-0.1, -0.1), "stop") for g in range(n))
                       for p in prompts)
        batch = RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((p.index,) for p in prompts),
                             completions=groups, policy_version=self.version)
        start = time.monotonic()

        def ready():
            done = self.fault != "hang" and (self.until() or time.monotonic() - start > WAIT_S)
            if done and self.finished_at is None:
                self.finished_at = time.monotonic()
            return done

        return Ref(ready=ready, value=batch)

    def _set_version(self, version):
        self.version = version
        return Ref()


class RewardLog:
    """What the stand-in reward actors saw: each call's (time, prompt indexes), and an event set by the first."""

    def __init__(self):
        self.calls: list[tuple[float, list[int]]] = []
        self.first_call = threading.Event()


def reward_actor_class(log: RewardLog):
    """A stand-in RewardActor: reward 10 x prompt index, plus sample g for an even index (an odd prompt's group
    scores alike), read from the text and answered at once; after a call on a completion "HANG" it answers
    nothing more (as a real actor stuck in that call)."""

    class RewardActor:
        def __init__(self, cfg, max_response_tokens):
            self.stuck = False
            self.score = method(self._score)
            self.close = method(lambda: Ref())

        def _score(self, items):
            log.calls.append((time.monotonic(), [p.index for p, _ in items]))
            log.first_call.set()
            self.stuck = self.stuck or any(c.text == "HANG" for _, c in items)
            if self.stuck:
                return Ref(ready=lambda: False)
            return Ref(value=[RewardResult(reward_of(p.index)[int(c.text.split("s")[1])], {}, True) for p, c in items])

    return RewardActor


@pytest.fixture
def fake_ray(monkeypatch):
    fake = FakeRay()
    for name in ("wait", "get", "kill", "remote"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    return fake


def system(engines, log, *, reward: RewardConfig | None = None, generate_timeout_s=30.0):
    group = EngineGroup(engines, generate_timeout_s=generate_timeout_s, max_restarts=2,
                        start_engine=lambda e: Engine(e, version=0))
    group.expected_version = 3
    group.reload_weights = lambda: [a.set_version.remote(group.expected_version) for a in group.engine_actors]
    rewards = RewardGroup(reward or RewardConfig(), max_response_tokens=8, num_actors=2, cpus_per_actor=0.5, sample_allowance_s=0.1,
                          startup_allowance_s=0.0, actor_cls=reward_actor_class(log))
    return SimpleNamespace(engines=group, rewards=rewards, pad_token_id=0)


def cfg(*, overlap=True, **reward) -> TrainConfig:
    return replace(TrainConfig(), algorithm=AlgorithmConfig(prompts_per_step=len(PROMPTS), group_size=G),
                   reward=RewardConfig(score_while_generating=overlap, **reward))


def score(parts, config):
    return steps.score(parts, PROMPTS, n=G, cfg=config, seed=1)


def reward_of(index: int) -> list[float]:
    """The stand-in reward actor's rewards of a prompt's group (see reward_actor_class)."""
    return [10.0 * index + (g if index % 2 == 0 else 0) for g in range(G)]


def expected_rewards():
    return [reward_of(p.index) for p in PROMPTS]


def test_a_finished_part_is_scored_while_a_slower_engine_still_generates(fake_ray):
    """Engine 0 answers only once the reward actors have started scoring: engine 1's part must get there first."""
    log = RewardLog()
    slow, fast = Engine(0, until=log.first_call.is_set), Engine(1)
    scored = score(system([slow, fast], log), cfg())
    first_at, first_prompts = log.calls[0]
    assert slow.finished_at is not None and first_at < slow.finished_at  # scoring began before engine 0 finished
    assert slow.finished_at - first_at < WAIT_S / 2, "engine 0 answered only when its wait ran out"
    assert first_prompts and not set(first_prompts) & prompts_of_engine_0()  # the first call scored engine 1's groups
    assert [[r.reward for r in g] for g in scored.results] == expected_rewards()


def prompts_of_engine_0() -> set[int]:
    from actors.engine_group import assign_groups

    engine_of = assign_groups([len(p.text) + TrainConfig().model.max_response_tokens for p in PROMPTS], 2)
    return {b for b, e in enumerate(engine_of) if e == 0}


def test_the_scored_batch_is_the_one_scoring_after_generation_gives(fake_ray):
    log = RewardLog()
    streamed = score(system([Engine(0), Engine(1)], log), cfg(overlap=True))
    calls_streamed = len(log.calls)
    whole = score(system([Engine(0), Engine(1)], log), cfg(overlap=False))
    assert streamed == whole  # the same rollout, in prompt order, and the same rewards at every [b][g]
    assert [p.index for p in streamed.rollout.prompts] == list(range(6)) and streamed.rollout.policy_version == 3
    assert [[c.text for c in g] for g in streamed.rollout.completions] == [[f"p{i}s{g}" for g in range(G)] for i in range(6)]
    assert [[r.reward for r in g] for g in streamed.results] == expected_rewards()
    scored_prompts = sorted(i for _, prompts in log.calls[:calls_streamed] for i in prompts)
    assert scored_prompts == sorted(list(range(6)) * G)  # every sample scored exactly once


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_failed_engines_groups_are_generated_again_and_scored_once(fake_ray, fault):
    log = RewardLog()
    parts = system([Engine(0), Engine(1, fault=fault)], log, generate_timeout_s=0.5 if fault == "hang" else 30.0)
    scored = score(parts, cfg())
    assert [[r.reward for r in g] for g in scored.results] == expected_rewards()
    assert scored.rollout.policy_version == 3
    assert sorted(i for _, prompts in log.calls for i in prompts) == sorted(list(range(6)) * G)
    failures = parts.engines.failures
    assert len(failures) == 1 and failures[0].startswith("engine 1")
    assert ("died" if fault == "die" else "no answer to generate") in failures[0]
    assert fake_ray.killed and parts.engines.engine_actors[1].fault == ""  # replaced by a healthy engine


def test_a_hung_reward_call_times_out_and_the_error_fraction_still_decides(fake_ray):
    """A reward call stuck on one sample fails its chunk with a reward timeout; the step goes on below
    reward.max_error_fraction and stops above it, as when the whole batch is scored at once."""

    class Hanging(Engine):
        def _generate(self, prompts, **kwargs):
            ref = super()._generate(prompts, **kwargs)
            groups = [list(g) for g in ref.value.completions]
            for row, p in enumerate(prompts):
                if p.index == 0:
                    groups[row][0] = Completion((0,), "HANG", (-0.1,), "stop")
            ref.value = replace(ref.value, completions=tuple(tuple(g) for g in groups))
            return ref

    config = cfg(timeout_s=0.1)
    scored = score(system([Hanging(0), Hanging(1)], RewardLog(), reward=config.reward), config)
    failed = [(b, g) for b, group in enumerate(scored.results) for g, r in enumerate(group) if r.error]
    assert (0, 0) in failed and all("reward timeout" in str(scored.results[b][g].error) for b, g in failed)
    assert len(failed) < 6 and scored.results[4][1].reward == 41.0  # the rest scored
    strict = cfg(timeout_s=0.1, max_error_fraction=0.01)
    with pytest.raises(steps.RewardErrors, match="failed to score"):
        score(system([Hanging(0), Hanging(1)], RewardLog(), reward=strict.reward), strict)


def test_dynamic_sampling_rounds_each_score_while_generating(fake_ray):
    """Odd prompts' groups score alike (useless): two rounds of 4 prompts give the 4 even ones."""
    config = replace(cfg(), algorithm=AlgorithmConfig(prompts_per_step=4, group_size=G, dynamic_sampling=True))
    prompts = [Prompt(index=i, text="x" * (10 + i), ground_truth="1") for i in range(12)]
    sampler = PromptSampler(prompts, seed=0, shuffle=False)
    scored, stats = steps.sample_groups(system([Engine(0), Engine(1)], RewardLog()), sampler, config, seed=0)
    assert stats["sampling_rounds"] == 2 and stats["dynamic_sampling_shortfall"] == 0
    assert len(scored.results) == 4 and all(p.index % 2 == 0 for p in scored.rollout.prompts)
    assert [[r.reward for r in g] for g in scored.results] == [reward_of(p.index) for p in scored.rollout.prompts]
