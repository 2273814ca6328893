"""The controller's steps against stand-in actor groups (the real ones are covered in test_end_to_end):
dynamic sampling, KL in the reward, mini-batching, and the per-step statistics."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from trainer import steps
from trainer.config import AlgorithmConfig, TrainConfig
from trainer.data import PromptSampler
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch


class FakeEngines:
    """Answers prompt i correctly in sample g when `pattern(i, g)`; one token per character."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.calls = 0

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, stop, seed, on_part=None):
        """Passes no parts to `on_part`: the batch is scored after generation (test_scoring_overlap streams)."""
        self.calls += 1
        groups = tuple(
            tuple(Completion(token_ids=(5, 6, 7), text="ok" if self.pattern(p.index, g) else "no",
                             rollout_logprobs=(-0.5, -0.5, -0.5), finish_reason="stop") for g in range(n))
            for p in prompts)
        return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((1, 2) for _ in prompts),
                            completions=groups, policy_version=0)


class FakeRewards:
    def score(self, rollout):
        results = tuple(tuple(RewardResult(reward=float(c.text == "ok"), components={"accuracy": float(c.text == "ok")},
                                           correct=c.text == "ok") for c in group) for group in rollout.completions)
        return ScoredBatch(rollout=rollout, results=results)


class FakeLearner:
    def __init__(self):
        self.minibatches = []

    def compute_logprobs(self, batch):
        return torch.where(batch.response_mask, torch.tensor(-0.4), torch.tensor(0.0))

    def forward_backward(self, batch, loss_name, num_tokens, num_sequences, loss_kwargs):
        self.minibatches.append((batch.num_sequences, num_tokens, loss_name, loss_kwargs["kl_coef"]))
        return {"loss": 1.0}

    def optim_step(self):
        return {"grad_norm": 0.5}


class FakeSystem:
    def __init__(self, pattern):
        self.engines, self.rewards, self.learner = FakeEngines(pattern), FakeRewards(), FakeLearner()
        self.pad_token_id = 0

    def compute_ref_logprobs(self, batch):
        return torch.where(batch.response_mask, torch.tensor(-0.6), torch.tensor(0.0))


def _prompts(n):
    return [Prompt(index=i, text=f"q{i}", ground_truth="1") for i in range(n)]


def _cfg(**algorithm) -> TrainConfig:
    return replace(TrainConfig(), algorithm=AlgorithmConfig(prompts_per_step=4, group_size=4, **algorithm))


def test_dynamic_sampling_keeps_only_useful_groups():
    # Even prompts: all samples right (zero variance); odd prompts: half right.
    system = FakeSystem(lambda i, g: i % 2 == 0 or g % 2 == 0)
    scored, stats = steps.sample_groups(system, PromptSampler(_prompts(40), seed=0), _cfg(dynamic_sampling=True),
                                        seed=0)
    assert system.engines.calls == 2                    # 2 useful groups per round of 4
    assert [p.index % 2 for p in scored.rollout.prompts] == [1, 1, 1, 1]
    assert stats["dynamic_sampling_shortfall"] == 0 and stats["sampling_rounds"] == 2


def test_dynamic_sampling_tops_up_after_max_rounds():
    system = FakeSystem(lambda i, g: i == 3 and g == 0)  # one useful group in the whole data set
    cfg = _cfg(dynamic_sampling=True, max_sampling_rounds=2)
    scored, stats = steps.sample_groups(system, PromptSampler(_prompts(8), seed=0, shuffle=False), cfg, seed=0)
    assert len(scored.rollout.prompts) == 4 and scored.rollout.prompts[0].index == 3
    assert stats["dynamic_sampling_shortfall"] == 3


def test_prepare_batch_kl_in_reward_and_update_split():
    system = FakeSystem(lambda i, g: g == 0)
    cfg = _cfg(kl_coef=0.1, kl_in_reward=True, kl_estimator="k1", updates_per_step=2)
    scored, _ = steps.sample_groups(system, PromptSampler(_prompts(4), seed=0), cfg, seed=0)
    batch, metrics = steps.prepare_batch(system, scored, cfg)
    # k1 = old - ref = -0.4 - (-0.6) = 0.2 per token, 3 tokens -> 0.6 per sequence, the same for all:
    # subtracting it leaves the group-normalised advantages unchanged.
    assert metrics["kl_in_reward"] == pytest.approx(0.6)
    assert metrics["logprob_gap_max"] == pytest.approx(0.1)
    group = batch.advantages.view(4, 4)[0]
    assert group[0] == pytest.approx(1.5, rel=1e-4) and group[1:].tolist() == pytest.approx([-0.5] * 3, rel=1e-4)
    assert batch.old_logprobs[batch.response_mask].unique().tolist() == pytest.approx([-0.4])
    metrics = steps.update_policy(system.learner, batch, cfg, seed=0)
    # Two mini-batches of 8 sequences, 24 tokens each; the KL is already in the reward, not the loss.
    assert system.learner.minibatches == [(8, 24, "grpo", 0.0), (8, 24, "grpo", 0.0)]
    assert metrics == {"loss": 1.0, "grad_norm": 0.5}


def test_evaluate_reports_pass_at_1_and_cons_at_k():
    from examples.configs import tiny_cpu

    system = FakeSystem(lambda i, g: g < 3)   # 3 of 4 samples right, but all say "ok"
    result = steps.evaluate(system, _prompts(5), tiny_cpu(), seed=0)
    assert result["pass@1"] == pytest.approx(0.75)
    assert result["cons@k"] == 0.0           # no <answer> tags: nothing to vote on


class FailingRewards(FakeRewards):
    """Scores like FakeRewards, but the first `failed` samples of every batch fail with a timeout."""

    def __init__(self, failed: int):
        self.failed = failed

    def score(self, rollout):
        scored = super().score(rollout)
        flat = [r for group in scored.results for r in group]
        flat[:self.failed] = [RewardResult(reward=0.0, components={}, correct=False, error="timeout")] * self.failed
        size = len(scored.results[0])
        results = tuple(tuple(flat[i:i + size]) for i in range(0, len(flat), size))
        return ScoredBatch(rollout=scored.rollout, results=results)


@pytest.mark.parametrize("failed, stops", [(0, False), (8, False), (9, True), (16, True)])
def test_a_step_stops_only_above_the_reward_error_fraction(failed, stops):
    """16 samples, reward.max_error_fraction = 0.5: 8 failures are recorded and the step goes on, 9 stop it
    with the count per error."""
    system = FakeSystem(lambda i, g: g % 2 == 0)
    system.rewards = FailingRewards(failed)
    cfg = _cfg()
    assert cfg.reward.max_error_fraction == 0.5
    if stops:
        with pytest.raises(steps.RewardErrors, match=rf"{failed} of 16 samples failed to score.*{failed} x timeout"):
            steps.score(system, _prompts(4), n=4, cfg=cfg, seed=0)
    else:
        scored = steps.score(system, _prompts(4), n=4, cfg=cfg, seed=0)
        assert sum(r.error is not None for group in scored.results for r in group) == failed


def test_max_error_fraction_one_never_stops():
    system = FakeSystem(lambda i, g: True)
    system.rewards = FailingRewards(16)
    cfg = replace(_cfg(), reward=replace(TrainConfig().reward, max_error_fraction=1.0))
    scored = steps.score(system, _prompts(4), n=4, cfg=cfg, seed=0)
    assert all(r.error == "timeout" for group in scored.results for r in group)
