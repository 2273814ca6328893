"""An exactly on-policy step takes its old logprobs from the update's own forward (no second pass):
the loss, its gradient and the logprob-gap metric must be what the two-pass path gives on the same batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from actors.learner import old_logprobs_or_own
from cluster.network import free_port
from trainer import grpo, steps
from trainer.config import AlgorithmConfig, TrainConfig
from trainer.data import PromptSampler
from trainer.grpo import reduce_metrics

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=2.0)


class TinyLM(torch.nn.Module):
    """Embedding -> one causal mixing layer -> vocabulary: enough for logprobs with a real gradient."""

    def __init__(self, vocab: int = 11, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.mix = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, vocab)

    def logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, L] log p(ids[:, t] | ids[:, <t]), position 0 = 0 (the learner's alignment)."""
        h = self.embed(ids)  # [N, L, H]
        h = torch.tanh(self.mix(h.cumsum(1)))  # [N, L, H], causal
        lp = torch.log_softmax(self.out(h)[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, L-1]
        return torch.nn.functional.pad(lp, (1, 0))  # [N, L]


def _batch(n: int = 6, length: int = 9, vocab: int = 11):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n, length), generator=gen)  # [N, L]
    lengths = torch.randint(4, length + 1, (n,), generator=gen)
    pos = torch.arange(length)
    mask = (pos[None] >= 2) & (pos[None] < lengths[:, None])  # [N, L] response tokens
    advantages = torch.randn(n, generator=gen)  # [N]
    return ids, mask, advantages


def _loss_and_grad(model: TinyLM, ids, mask, advantages, old, rollout, ref, micro: int, **overrides):
    """Sum of micro-batch losses with the learner's choice of old logprobs; (loss, grads, metrics)."""
    model.zero_grad()
    kwargs = LOSS_KWARGS | overrides
    num_tokens, per_mb = int(mask.sum()), []
    total = torch.zeros(())
    for rows in torch.arange(ids.shape[0]).chunk(micro):
        lp = model.logprobs(ids[rows])  # [b, L]
        mb_old, gap = old_logprobs_or_own(old[rows], lp, rollout[rows], mask[rows], num_tokens)
        loss, metrics = grpo.grpo_loss(lp, old_logprobs=mb_old, ref_logprobs=ref[rows], rollout_logprobs=rollout[rows],
                                       advantages=advantages[rows], response_mask=mask[rows], num_tokens=num_tokens,
                                       num_sequences=ids.shape[0], **kwargs)
        loss.backward()
        total = total + loss.detach()
        per_mb.append(metrics | gap)
    return total, [p.grad.clone() for p in model.parameters()], reduce_metrics(per_mb)


@pytest.mark.parametrize("overrides", [{}, {"kl_coef": 0.05}, {"tis_cap": 0.0},
                                       {"loss_aggregation": "seq_mean_token_mean"}])
@pytest.mark.parametrize("micro", [1, 3])
def test_own_logprobs_give_the_same_loss_and_gradient_as_a_second_pass(overrides, micro):
    model = TinyLM()
    ids, mask, advantages = _batch()
    with torch.no_grad():
        old = model.logprobs(ids) * mask  # [N, L] the second forward pass the skip saves
    rollout = old + 0.01 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2)) * mask  # vLLM's
    ref = old - 0.1 * mask
    two_pass = _loss_and_grad(model, ids, mask, advantages, old, rollout, ref, micro, **overrides)
    one_pass = _loss_and_grad(model, ids, mask, advantages, steps.no_old_logprobs(ids.shape[0]), rollout, ref,
                              micro, **overrides)
    torch.testing.assert_close(one_pass[0], two_pass[0], rtol=0, atol=0)
    for g1, g2 in zip(one_pass[1], two_pass[1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert one_pass[2]["ratio_max"] == one_pass[2]["ratio_min"] == 1.0
    # The gap is reported by the learner now, with the values the controller computed before.
    gap = (old - rollout).abs()[mask]
    assert one_pass[2]["logprob_gap_mean"] == pytest.approx(float(gap.mean()), rel=1e-5)
    assert one_pass[2]["logprob_gap_max"] == pytest.approx(float(gap.max()), rel=1e-6)
    assert "logprob_gap_mean" not in two_pass[2]


def test_a_batch_with_old_logprobs_keeps_them():
    old = torch.full((2, 3), -1.0)
    lp = torch.zeros(2, 3, requires_grad=True)
    out, gap = old_logprobs_or_own(old, lp, old, torch.ones(2, 3, dtype=torch.bool), 6)
    assert out is old and gap == {}


# --- the controller's side: which steps skip the second pass -------------------------------------


class CountingLearner:
    def __init__(self):
        self.logprob_calls = 0

    def compute_logprobs(self, batch):
        self.logprob_calls += 1
        return torch.where(batch.response_mask, torch.tensor(-0.4), torch.tensor(0.0))


def _system():
    from tests.test_controller_steps import FakeSystem

    system = FakeSystem(lambda i, g: g == 0)
    system.learner = CountingLearner()
    return system


def _cfg(**algorithm) -> TrainConfig:
    return replace(TrainConfig(), algorithm=AlgorithmConfig(prompts_per_step=4, group_size=4, **algorithm))


@pytest.mark.parametrize("algorithm, skips", [
    ({}, True),
    ({"kl_coef": 0.01}, True),                                  # the reference pass stays, the policy's goes
    ({"old_logprobs_from_update": False}, False),
    ({"updates_per_step": 2}, False),
    ({"epochs_per_step": 2}, False),
    ({"kl_coef": 0.01, "kl_in_reward": True}, False),           # the KL needs them before the advantages
    ({"old_logprobs_source": "rollout"}, False),                # no pass to save; vLLM's are the old ones
])
def test_prepare_batch_skips_the_second_pass_only_when_exactly_on_policy(algorithm, skips):
    system, cfg = _system(), _cfg(**algorithm)
    assert steps.old_logprobs_from_update(cfg) is skips
    scored, _ = steps.sample_groups(system, PromptSampler([_prompt(i) for i in range(4)], seed=0), cfg, seed=0)
    batch, metrics = steps.prepare_batch(system, scored, cfg)
    if skips:
        assert system.learner.logprob_calls == 0 and batch.old_logprobs.shape == (16, 0)
        assert "logprob_gap_mean" not in metrics  # the learner reports it from the update's forward
        assert batch.select(torch.arange(8)).old_logprobs.shape == (8, 0)
    else:
        assert batch.old_logprobs.shape == batch.input_ids.shape and "logprob_gap_max" in metrics
        assert system.learner.logprob_calls == (algorithm.get("old_logprobs_source", "learner") == "learner")


def _prompt(i):
    from trainer.types import Prompt

    return Prompt(index=i, text=f"q{i}", ground_truth="1")


# --- the real learner (Megatron over gloo, one rank in this process) ------------------------------


@pytest.mark.slow
def test_learner_update_is_the_same_with_and_without_the_second_pass(tmp_path):
    from transformers import AutoConfig

    from actors.learner import LearnerWorker, OptimizerSettings
    from examples.gpu_check import make_batch
    from examples.tiny_model import write_test_model

    model_dir = write_test_model(tmp_path / "tiny", seed=5, num_layers=2)
    batch = make_batch(6, 24, AutoConfig.from_pretrained(model_dir).vocab_size, seed=0)
    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), num_threads=2, sequences_per_microbatch=3,
                           optimizer=OptimizerSettings(lr=0.0, grad_clip=0.0))
    try:
        old = worker.compute_logprobs(batch)  # [N, L] what the controller fetched before
        batch = batch.replace(rollout_logprobs=old + 0.01 * batch.response_mask)
        results = []
        for carried in (old, steps.no_old_logprobs(batch.num_sequences)):
            metrics = worker.forward_backward(batch.replace(old_logprobs=carried), "grpo", batch.num_tokens,
                                              batch.num_sequences, LOSS_KWARGS)
            grads = [p.main_grad.clone() for p in worker.model.parameters()]
            worker.optim_step()
            results.append((metrics, grads))
    finally:
        worker.shutdown()
    (two, two_grads), (one, one_grads) = results
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6, abs=1e-8)
    for g1, g2 in zip(one_grads, two_grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    assert one["logprob_gap_max"] == pytest.approx(0.01, rel=1e-3)
    assert one["logprob_gap_mean"] == pytest.approx(0.01, rel=1e-3)
