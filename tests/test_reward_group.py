"""The reward group on a local Ray: order, group size and failure reasons survive."""

from __future__ import annotations

import time

import pytest

from reward_server.reward_group import RewardActor, RewardGroup, _regroup, _split, failure_counts
from reward_server.verifiers import extract_answer
from trainer.config import RewardConfig
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch

TIMEOUT_S = 1.0
STUCK_SAMPLE_ALLOWANCE_S = 6.0
"""Per-sample allowance in the stuck-chunk test (the default is 10 s), which waits for the stuck chunk's
deadline: a chunk of 2 samples gets 2 x (TIMEOUT_S + this) = 14 s, and the stuck chunk, the first on its
actor, 14 s after the call. The chunk with the hanging math sample (its 1 s timeout, then the verifier's
restart, a sympy import: seconds on a busy machine) has 14 s, first on the other actor."""


def _completion(text: str) -> Completion:
    return Completion((1, 2, 3), text, (0.0, 0.0, 0.0), "stop")


def _rollout() -> RolloutBatch:
    """B = 4 prompts, G = 3: arithmetic answers that encode their position, plus one hanging math
    sample (b=1, g=1) and one raising sample (b=2: its ground truth is not an integer)."""
    prompts, groups = [], []
    for b in range(4):
        ground_truth = "not-an-int" if b == 2 else str(10 * b)
        prompts.append(Prompt(b, f"Q{b} Assistant: <think>", ground_truth, "arithmetic"))
        # g=0 correct, g=1 wrong, g=2 correct: order mistakes show up as a wrong pattern.
        answers = [str(10 * b), str(10 * b + 1), str(10 * b)]
        groups.append([_completion(f"r</think><answer>{a}</answer>") for a in answers])
    hanging = Prompt(1, "Q1 Assistant: <think>", "5", "math")
    prompts[1] = hanging
    groups[1][1] = _completion("r</think><answer>2^{10^{10}}</answer>")
    groups[1][0] = _completion("r</think><answer>5</answer>")
    groups[1][2] = _completion("r</think><answer>5.0</answer>")
    return RolloutBatch(
        prompts=tuple(prompts),
        prompt_token_ids=tuple((b,) for b in range(4)),
        completions=tuple(tuple(g) for g in groups),
        policy_version=7,
    )


@pytest.fixture(scope="module")
def ray_local(shared_ray):
    return pytest.importorskip("ray")


@pytest.mark.slow
def test_pool_keeps_order_groups_and_reasons(ray_local) -> None:
    cfg = RewardConfig(verifier="arithmetic", format_weight=0.5, timeout_s=TIMEOUT_S)
    group = RewardGroup(cfg, max_response_tokens=64, num_actors=2, cpus_per_actor=0.5)
    try:
        rollout = _rollout()
        group.score(_rollout())  # warm-up: actors and their verifier workers start
        start = time.monotonic()
        scored = group.score(rollout)
        elapsed = time.monotonic() - start

        assert scored.rollout is rollout
        assert [len(g) for g in scored.results] == [3, 3, 3, 3]
        correct = [[r.correct for r in g] for g in scored.results]
        assert correct == [[True, False, True], [True, False, True], [False] * 3, [True, False, True]]
        assert scored.rewards().shape == (4, 3)
        assert scored.rewards()[0].tolist() == [1.5, 0.5, 1.5]  # accuracy + 0.5 x format

        hung = scored.results[1][1]
        assert hung.error == "timeout" and hung.reward == 0.5 and hung.components["accuracy"] == 0.0
        for r in scored.results[2]:
            assert r.error is not None and r.error.startswith("ValueError") and "not-an-int" in r.error
        counts = failure_counts(scored)
        assert counts["timeout"] == 1 and sum(counts.values()) == 4
        assert group.failures_total == 8  # both calls
        # One timeout on one actor: the batch costs about one timeout, not one per sample.
        assert elapsed < TIMEOUT_S + 5.0, elapsed
    finally:
        group.shutdown()


@pytest.mark.slow
def test_a_stuck_chunk_times_out_scores_zero_and_the_step_goes_on(ray_local) -> None:
    """A hang outside the verifier sandbox (here: in the actor itself) costs one chunk's deadline:
    its samples score 0 with the reason, the actor is replaced, and every other sample is scored."""

    class HangingActor(RewardActor):  # defined here, so Ray ships it by value
        def score(self, items):
            if any(c.text == "HANG" for _, c in items):
                time.sleep(3600)
            return RewardActor.score(self, items)

    cfg = RewardConfig(verifier="arithmetic", timeout_s=TIMEOUT_S)
    group = RewardGroup(cfg, max_response_tokens=64, num_actors=2, cpus_per_actor=0.5,
                      sample_allowance_s=STUCK_SAMPLE_ALLOWANCE_S, actor_cls=HangingActor)
    try:
        group.score(_rollout())  # warm-up: actors and their verifier workers start
        hostile = _rollout()
        groups = [list(g) for g in hostile.completions]
        # The first chunk (samples (0, 0) and (0, 1)), so the hang's deadline is one chunk budget after the
        # call, and the chunk queued behind it on the same actor must be handed out again.
        groups[0][1] = _completion("HANG")
        hostile = RolloutBatch(hostile.prompts, hostile.prompt_token_ids, tuple(tuple(g) for g in groups), 7)
        start = time.monotonic()
        scored = group.score(hostile)
        elapsed = time.monotonic() - start

        assert [len(g) for g in scored.results] == [3, 3, 3, 3]
        stuck = scored.results[0][1]
        assert stuck.reward == 0.0 and stuck.error is not None and stuck.error.startswith("reward timeout")
        assert "replaced" in stuck.error
        timed_out = [(b, g) for b, group in enumerate(scored.results) for g, r in enumerate(group)
                     if r.error and r.error.startswith("reward timeout")]
        assert len(timed_out) <= 2 and (0, 1) in timed_out  # only the stuck sample's chunk
        assert set(timed_out) <= {(0, 0), (0, 1)}, timed_out
        assert scored.results[0][2].correct  # queued behind the stuck chunk on its actor, scored elsewhere
        assert [r.correct for r in scored.results[1]] == [True, False, True]  # the math hang's group
        assert [r.correct for r in scored.results[3]] == [True, False, True]
        assert elapsed < 240, elapsed  # one chunk budget (14 s) plus a replacement actor's start

        again = group.score(_rollout())  # the replacement serves the next step
        assert [r.correct for r in again.results[0]] == [True, False, True]
        assert not any(r.error and r.error.startswith("reward") for g in again.results for r in g)
    finally:
        group.shutdown()


class _Ref:
    def __init__(self, value: list[RewardResult] | None) -> None:
        self.value = value
        """The call's result; None while it hangs (forever)."""


class _FakeHandle:
    """An actor handle whose calls run in order: after a call on a "HANG" completion, every later
    call hangs too, as on a real actor stuck in its first call."""

    def __init__(self) -> None:
        self.stuck = False
        self.score = type("Method", (), {"remote": staticmethod(self._score)})()

    def _score(self, items: list) -> _Ref:
        self.stuck = self.stuck or any(c.text == "HANG" for _, c in items)
        if self.stuck:
            return _Ref(None)
        return _Ref([RewardResult(float(ok), {}, ok)
                     for ok in (extract_answer(c.text) == p.ground_truth for p, c in items)])


class _FakeRay:
    """Just enough of Ray for `RewardGroup`: `wait` sleeps out its timeout when nothing is ready."""

    def __init__(self) -> None:
        import ray.exceptions

        self.exceptions = ray.exceptions
        self.killed: list[_FakeHandle] = []

    def remote(self, **_):
        return lambda cls: type("Remote", (), {"remote": staticmethod(lambda *args: _FakeHandle())})

    def wait(self, refs: list[_Ref], num_returns: int, timeout: float | None):
        ready = [r for r in refs if r.value is not None][:num_returns]
        if not ready:
            time.sleep(timeout or 0.0)
        return ready, [r for r in refs if r not in ready]

    def get(self, ref: _Ref) -> list[RewardResult] | None:
        return ref.value

    def kill(self, handle: _FakeHandle) -> None:
        self.killed.append(handle)


def test_a_stuck_call_fails_its_chunk_only_and_requeues_the_rest(monkeypatch) -> None:
    """The deadline logic without Ray: the chunk with the hang scores 0 with the reason, the chunk
    queued behind it on the same actor is scored by the replacement, and nothing is lost."""
    import reward_server.reward_group as pool_module

    fake = _FakeRay()
    monkeypatch.setattr(pool_module, "ray", fake)
    cfg = RewardConfig(verifier="arithmetic", timeout_s=0.1)
    group = RewardGroup(cfg, max_response_tokens=64, num_actors=2, cpus_per_actor=0.5,
                      sample_allowance_s=0.1, startup_allowance_s=0.0)
    rollout = _rollout()
    groups = [list(g) for g in rollout.completions]
    groups[0][0] = _completion("HANG")
    rollout = RolloutBatch(rollout.prompts, rollout.prompt_token_ids, tuple(tuple(g) for g in groups), 7)
    first_actor = group._actors[0]

    start = time.monotonic()
    scored = group.score(rollout)
    assert time.monotonic() - start < 5.0
    flat = [r for g in scored.results for r in g]
    assert len(flat) == 12
    timed_out = [i for i, r in enumerate(flat) if r.error and r.error.startswith("reward timeout")]
    assert timed_out == [0, 1]  # the first chunk (2 samples); everything else was scored
    assert "replaced" in flat[0].error and flat[0].reward == 0.0
    assert [r.correct for r in flat[2:6]] == [True, True, False, False]  # chunk 1 ran on the replacement
    assert [r.correct for r in flat[9:12]] == [True, False, True]
    assert first_actor in fake.killed and group._actors[0] is not first_actor
    assert group.failures_total == 2


def test_split_and_regroup_are_inverse() -> None:
    items = list(range(11))
    chunks = _split(items, 4)  # type: ignore[arg-type]
    assert [x for c in chunks for x in c] == items and all(chunks) and len(chunks) <= 4
    assert _split([], 4) == []
    flat = [RewardResult(float(i), {}, False) for i in range(7)]
    groups = _regroup(flat, [3, 2, 2])
    assert [[r.reward for r in g] for g in groups] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(RuntimeError, match="scored 7 samples for 8"):
        _regroup(flat, [4, 4])
