"""The reward actor pool on a local Ray: order, group size and failure reasons survive."""

from __future__ import annotations

import time

import pytest

from reward_server.pool import RewardPool, _regroup, _split, failure_counts
from trainer.config import RewardConfig
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch

TIMEOUT_S = 1.0


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
def ray_local():
    ray = pytest.importorskip("ray")
    from cluster.ray_init import init_ray

    init_ray("local", num_cpus=2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_pool_keeps_order_groups_and_reasons(ray_local) -> None:
    cfg = RewardConfig(verifier="arithmetic", format_weight=0.5, timeout_s=TIMEOUT_S)
    pool = RewardPool(cfg, max_response_tokens=64, num_actors=2, cpus_per_actor=0.5)
    try:
        rollout = _rollout()
        pool.score(_rollout())  # warm-up: actors and their verifier workers start
        start = time.monotonic()
        scored = pool.score(rollout)
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
        assert pool.failures_total == 8  # both calls
        # One timeout on one actor: the batch costs about one timeout, not one per sample.
        assert elapsed < TIMEOUT_S + 5.0, elapsed
    finally:
        pool.shutdown()


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
