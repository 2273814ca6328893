"""Asynchronous rollouts (trainer.overlap) against stand-in actor groups: the next steps' groups are sampled
while the learner trains, by the weights the engines held then (a lag of at most max_staleness), never across
a checkpoint, and the prompt ledger still sees every step in order."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from trainer.config import AlgorithmConfig, ClusterConfig, ConfigError, RolloutConfig, TrainConfig
from trainer.data import PromptSampler
from trainer.ledger import PromptLedger, fingerprint
from trainer.overlap import RolloutSource, policy_version_lag, scheduled_version
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, RolloutPart, ScoredBatch

WAIT_S = 10.0
"""Longest a stand-in waits for the other thread before the test fails (instead of hanging)."""


class FakeEngines:
    """Sample with `expected_version` (what a real engine holds after the last sync); record whether the
    learner was training while each call ran, and stall until it was when told to."""

    def __init__(self):
        self.expected_version = 0
        self.training = threading.Event()
        self.generating = threading.Event()
        self.calls: list[tuple[int, bool]] = []  # (version sampled with, learner training meanwhile)
        self.held_back: dict[int, int] = {}  # call index -> versions to report below expected_version

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, stop, seed, on_part=None):
        version = self.expected_version - self.held_back.get(len(self.calls), 0)
        self.generating.set()
        prefetch = threading.current_thread() is not threading.main_thread()
        overlapped = self.training.wait(WAIT_S) if prefetch else False
        self.calls.append((version, overlapped))
        groups = tuple(tuple(Completion(token_ids=(5, 6), text="ok" if g % 2 else "no", rollout_logprobs=(-0.5, -0.5),
                                        finish_reason="stop") for g in range(n)) for _ in prompts)
        batch = RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((1, 2) for _ in prompts),
                             completions=groups, policy_version=version)
        if on_part is not None:  # one engine: its part is the whole batch, scored on the scoring thread
            on_part(RolloutPart(positions=tuple(range(len(prompts))), batch=batch))
        return batch


class FakeRewards:
    def score(self, rollout):
        results = tuple(tuple(RewardResult(reward=float(c.text == "ok"), components={}, correct=c.text == "ok")
                              for c in group) for group in rollout.completions)
        return ScoredBatch(rollout=rollout, results=results)


class FakeSystem:
    def __init__(self):
        self.engines, self.rewards = FakeEngines(), FakeRewards()
        self.pad_token_id = 0


def _cfg(*, ahead: bool, total_steps: int = 5, checkpoint_every: int = 0, staleness: int = 0) -> TrainConfig:
    algorithm = AlgorithmConfig(prompts_per_step=2, group_size=2, one_step_off_policy=ahead and not staleness,
                                async_mode=bool(staleness), max_staleness=max(1, staleness))
    return replace(TrainConfig(), total_steps=total_steps, checkpoint_every=checkpoint_every, algorithm=algorithm)


def _run(cfg: TrainConfig, held_back: dict[int, int] | None = None, metrics: list[dict] | None = None,
         ) -> tuple[FakeSystem, list[int], RolloutSource, PromptLedger]:
    """The controller's loop with a learner that trains while the engines (maybe) sample; lag per step.
    At a checkpoint step nothing may be in flight (the ledger's text is written then, as a checkpoint does)."""
    prompts = [Prompt(index=i, text=f"q{i}", ground_truth="1") for i in range(60)]
    system, ledger = FakeSystem(), PromptLedger(fingerprint(prompts))
    system.engines.held_back = held_back or {}
    source = RolloutSource(system, PromptSampler(prompts, seed=0), cfg, lambda step: step, ledger)
    lags = []
    try:
        for step in range(1, cfg.total_steps + 1):
            system.engines.training.clear()
            system.engines.generating.clear()
            scored, step_metrics = source.next(step)
            if metrics is not None:
                metrics.append(step_metrics)
            if source._ahead and not source._ahead[-1].future.done():  # the learner's turn: the engines sample
                system.engines.training.set()
                assert system.engines.generating.wait(WAIT_S), "the prefetch never started while training"
            source.settle()
            system.engines.training.set()
            system.engines.expected_version = step  # the weight sync of this step
            ledger.trained(step, scored.rollout.prompts)
            lags.append(policy_version_lag(step, scored.rollout.policy_version))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                assert source._pending is None and not ledger.in_flight
                ledger.to_text()  # raises if a step were half-recorded
    finally:
        source.close()
    return system, lags, source, ledger


def test_next_step_is_sampled_during_training_by_the_previous_weights():
    system, lags, _, ledger = _run(_cfg(ahead=True))
    assert lags == [0, 1, 1, 1, 1]  # step 1 samples when it starts; each later one during the step before
    assert [v for v, _ in system.engines.calls] == [0, 0, 1, 2, 3]
    assert all(overlapped for _, overlapped in system.engines.calls[1:])
    assert [r.step for r in ledger.records] == [1, 2, 3, 4, 5]  # replayed in order: no LedgerError
    assert all(len(r.trained) == 2 and not r.dropped for r in ledger.records)
    assert len({i for r in ledger.records for i in r.trained}) == 10  # every step its own prompts


def test_no_prefetch_crosses_a_checkpoint_or_the_last_step():
    system, lags, _, _ = _run(_cfg(ahead=True, total_steps=5, checkpoint_every=2))
    # Steps 2 and 4 save a checkpoint: steps 3 and 5 sample when they start, with the weights of the step before.
    assert lags == [0, 1, 0, 1, 0]
    assert len(system.engines.calls) == 5  # nothing sampled for a step 6


def test_async_mode_samples_up_to_max_staleness_ahead():
    system, lags, _, ledger = _run(_cfg(ahead=True, total_steps=6, staleness=2))
    # Step 1 samples when it starts and submits steps 2 and 3 (version 0); each later step submits one more.
    assert lags == [0, 1, 2, 2, 2, 2]
    assert [v for v, _ in system.engines.calls] == [0, 0, 0, 1, 2, 3]
    assert [r.step for r in ledger.records] == [1, 2, 3, 4, 5, 6]
    assert all(len(r.trained) == 2 and not r.dropped for r in ledger.records)
    assert len({i for r in ledger.records for i in r.trained}) == 12


@pytest.mark.parametrize("staleness, every", [(1, 2), (2, 3), (3, 2), (3, 4)])
def test_the_schedule_is_the_documented_function_of_step_and_checkpoints(staleness, every):
    """Each step's sampling version is `scheduled_version` (what a resumed run repeats), within the bound,
    and a checkpoint step has nothing in flight (checked in _run)."""
    system, lags, _, _ = _run(_cfg(ahead=True, total_steps=9, checkpoint_every=every, staleness=staleness))
    expected = [scheduled_version(s, lag_bound=staleness, checkpoint_every=every) for s in range(1, 10)]
    assert [v for v, _ in system.engines.calls] == expected
    assert max(lags) <= staleness and lags == [s - 1 - v for s, v in zip(range(1, 10), expected)]


def test_a_batch_beyond_the_bound_is_dropped_counted_and_sampled_again():
    metrics: list[dict] = []
    # The third generate call (step 3's batch, submitted during step 2) reports a version 3 behind.
    system, lags, source, ledger = _run(_cfg(ahead=True, total_steps=5, staleness=1), held_back={2: 3},
                                        metrics=metrics)
    assert max(lags) <= 1 and source.dropped_groups == 2
    assert [m["async/dropped_groups"] for m in metrics] == [0, 0, 2, 0, 0]
    assert len(ledger.records[2].dropped) == 2 and len(ledger.records[2].trained) == 2
    accounted = [i for r in ledger.records for i in (*r.trained, *r.dropped)]
    assert len(accounted) == len(set(accounted)) == ledger.handed_out == 12


def test_one_step_off_policy_is_async_mode_with_staleness_one():
    assert AlgorithmConfig(one_step_off_policy=True).lag_bound == AlgorithmConfig(async_mode=True).lag_bound == 1
    assert AlgorithmConfig(async_mode=True, max_staleness=4).lag_bound == 4 and AlgorithmConfig().lag_bound == 0
    bad = replace(TrainConfig(), algorithm=AlgorithmConfig(async_mode=True, one_step_off_policy=True, max_staleness=2),
                  rollout=RolloutConfig(max_engine_restarts=0))
    with pytest.raises(ConfigError, match="max_staleness only"):
        bad.validate()
    with pytest.raises(ConfigError, match="max_staleness must be >= 1"):
        replace(bad, algorithm=AlgorithmConfig(async_mode=True, max_staleness=0)).validate()


def test_default_is_synchronous_and_on_policy():
    system, lags, source, _ = _run(_cfg(ahead=False))
    assert lags == [0] * 5
    assert source._pool is None and not any(overlapped for _, overlapped in system.engines.calls)


def test_a_failed_prefetch_raises_in_the_step_that_waits_for_it():
    prompts = [Prompt(index=i, text=f"q{i}", ground_truth="1") for i in range(10)]
    system = FakeSystem()
    source = RolloutSource(system, PromptSampler(prompts, seed=0), _cfg(ahead=True), lambda step: step, None)
    try:
        source.next(1)
        system.engines.training.set()
        source.settle()
        system.engines.generate = _raise  # type: ignore[method-assign]
        source.next(2)  # its own groups were prefetched; the prefetch of step 3 fails
        with pytest.raises(RuntimeError, match="engine 0 died"):
            source.settle()
    finally:
        source.close()


def _raise(*args, **kwargs):
    raise RuntimeError("engine 0 died")


@pytest.mark.parametrize("algorithm", [AlgorithmConfig(one_step_off_policy=True), AlgorithmConfig(async_mode=True)])
def test_config_refuses_colocated_engines_with_async_rollouts_and_takes_engine_restarts(algorithm):
    cfg = replace(TrainConfig(), algorithm=algorithm, cluster=ClusterConfig(colocate=True))
    with pytest.raises(ConfigError, match="colocate"):
        cfg.validate()
    assert replace(cfg, algorithm=AlgorithmConfig()).validate()  # fine without the overlap
    assert replace(TrainConfig(), algorithm=algorithm, rollout=RolloutConfig(max_engine_restarts=2)).validate()
