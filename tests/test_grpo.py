"""GRPO math: hand-computed golden values, invariants and property-based checks.

Every expected number below was worked out on paper (the arithmetic is in the comments), not by
calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import grpo
from trainer.batch import useful_groups
from trainer.config import AlgorithmConfig

LN2, LN3 = math.log(2.0), math.log(3.0)
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=tol)


# --- advantages: golden values ---------------------------------------------------------------

# group 0: [1, 0, 0, 0]  mean 0.25, deviations (0.75, -0.25, -0.25, -0.25),
#          unbiased var = (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
# group 1: [0, 2, 4, 6]  mean 3, deviations (-3, -1, 1, 3), var = 20 / 3, std = sqrt(20 / 3)
REWARDS = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 4.0, 6.0]]


def test_grpo_advantages_golden():
    adv = grpo.grpo_advantages(t(REWARDS), eps=0.0)
    s = math.sqrt(3.0 / 20.0)  # 1 / std of group 1
    close(adv, [[1.5, -0.5, -0.5, -0.5], [-3 * s, -s, s, 3 * s]])
    close(adv[1, 0], -1.161895, tol=1e-6)


def test_grpo_advantages_eps_is_added_to_std():
    # std 0.5, eps 0.5: 0.75 / 1.0 = 0.75 and -0.25 / 1.0
    adv = grpo.grpo_advantages(t([REWARDS[0]]), eps=0.5)
    close(adv, [[0.75, -0.25, -0.25, -0.25]])


def test_dr_grpo_advantages_golden():
    close(grpo.dr_grpo_advantages(t(REWARDS)), [[0.75, -0.25, -0.25, -0.25], [-3.0, -1.0, 1.0, 3.0]])


def test_rloo_advantages_golden():
    # group 0: 1 - 0 = 1; 0 - 1/3.  group 1: 0 - 12/3 = -4; 2 - 10/3 = -4/3; 4 - 8/3 = 4/3; 6 - 6/3 = 4
    close(grpo.rloo_advantages(t(REWARDS)), [[1.0, -1 / 3, -1 / 3, -1 / 3], [-4.0, -4 / 3, 4 / 3, 4.0]])


def test_compute_advantages_dispatches_by_name():
    close(grpo.compute_advantages(t(REWARDS), estimator="dr_grpo", eps=1e-6)[0], [0.75, -0.25, -0.25, -0.25])
    close(grpo.compute_advantages(t(REWARDS), estimator="rloo", eps=1e-6)[0, 0], 1.0)
    close(grpo.compute_advantages(t(REWARDS), estimator="grpo", eps=0.0)[0, 0], 1.5)
    assert set(grpo.ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo"}


def test_compute_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        grpo.compute_advantages(t(REWARDS), estimator="ppo", eps=1e-6)
    with pytest.raises(ValueError, match="G >= 2"):
        grpo.compute_advantages(t([[1.0], [0.0]]), estimator="grpo", eps=1e-6)


# --- advantages: invariants ------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_identical_rewards_give_zero_not_nan(estimator):
    adv = grpo.compute_advantages(t([[1.0] * 4, [0.0] * 4, [0.3] * 4]), estimator=estimator, eps=1e-6)
    assert torch.isfinite(adv).all()
    assert (adv.abs() < 1e-9).all()


rewards_strategy = st.integers(1, 5).flatmap(
    lambda b: st.integers(2, 9).flatmap(
        lambda g: st.lists(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=g, max_size=g),
                           min_size=b, max_size=b)))


@settings(max_examples=60, deadline=None)
@given(rewards_strategy)
def test_advantage_invariants_over_random_rewards(rows):
    r = t(rows)
    g = r.shape[1]
    for estimator in ESTIMATORS:
        adv = grpo.compute_advantages(r, estimator=estimator, eps=1e-6)
        assert adv.shape == r.shape and torch.isfinite(adv).all()
        close(adv.sum(dim=1), torch.zeros(r.shape[0]), tol=1e-6)  # zero-sum per group
    # rloo by its definition, one element at a time
    rloo = grpo.compute_advantages(r, estimator="rloo", eps=1e-6)
    for b in range(r.shape[0]):
        for i in range(g):
            others = [rows[b][j] for j in range(g) if j != i]
            close(rloo[b, i], rows[b][i] - sum(others) / (g - 1), tol=1e-6)
    # grpo = dr_grpo / (std + eps) on groups with signal; rloo = G / (G - 1) * dr_grpo
    dr = grpo.compute_advantages(r, estimator="dr_grpo", eps=1e-6)
    expected = (dr / (r.std(dim=1, keepdim=True) + 1e-6)).masked_fill(grpo.flat_groups(r).unsqueeze(1), 0.0)
    close(grpo.compute_advantages(r, estimator="grpo", eps=1e-6), expected, tol=1e-4)
    close(rloo, dr * g / (g - 1), tol=1e-6)


def test_flat_group_repro_from_issue_is_exactly_zero():
    # float32 12.84 x 8: mean and std one rounding step off; the old code gave +0.6276 to every sample.
    r = torch.full((1, 8), 12.84, dtype=torch.float32)
    adv = grpo.compute_advantages(r, estimator="grpo", eps=1e-6)
    assert adv.dtype == torch.float32
    assert torch.equal(adv, torch.zeros_like(r))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_flat_group_gets_exactly_zero(estimator, dtype):
    # k x 0.01 for k = 1..2000 (839 of them were non-zero in float32), negatives, large and tiny values.
    values = [k * 0.01 for k in range(1, 2001)] + [-7.3, -0.1, 5e4 + 0.1, 3e-8, 12.84, 0.0]  # 5e4: float16 still finite
    for g in (2, 8, 16):
        r = torch.tensor(values, dtype=dtype).unsqueeze(1).expand(-1, g).contiguous()  # [B, G] flat rows
        adv = grpo.compute_advantages(r, estimator=estimator, eps=1e-6)
        assert adv.dtype == dtype
        assert torch.equal(adv, torch.zeros_like(adv)), f"{estimator} {dtype} G={g}"
        assert not useful_groups(r).any()


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e4, 1e4, allow_nan=False, width=32), st.integers(2, 16),
       st.sampled_from([torch.float32, torch.float64]))
def test_flat_group_property(value, g, dtype):
    r = torch.full((3, g), value, dtype=dtype)
    r[1] = 1.0  # one group with no signal at an exact value, one with signal
    r[2, 0] = value + 1.0
    for estimator in ESTIMATORS:
        adv = grpo.compute_advantages(r, estimator=estimator, eps=1e-6)
        assert torch.equal(adv[:2], torch.zeros_like(adv[:2]))
        assert adv[2, 0] > 0 and (adv[2, 1:] < 0).all()
    assert useful_groups(r).tolist() == [False, False, True]


# --- KL --------------------------------------------------------------------------------------

# log(pi / pi_ref) = d in (ln 2, 0, -ln 2):
#   k1 = d                       -> 0.693147, 0, -0.693147
#   k2 = d^2 / 2                 -> 0.240227, 0,  0.240227
#   k3 = exp(-d) + d - 1         -> 0.5 + 0.693147 - 1 = 0.193147, 0, 2 - 0.693147 - 1 = 0.306853
KL_LP = [[-1.0, -2.0, -3.0]]
KL_REF = [[-1.0 - LN2, -2.0, -3.0 + LN2]]


def test_kl_estimators_golden():
    lp, ref = t(KL_LP), t(KL_REF)
    close(grpo.kl_k1(lp, ref), [[0.693147, 0.0, -0.693147]])
    close(grpo.kl_k2(lp, ref), [[0.240227, 0.0, 0.240227]])
    close(grpo.kl_k3(lp, ref), [[0.193147, 0.0, 0.306853]])
    close(grpo.kl_penalty(lp, ref, estimator="k3", clamp=10.0), [[0.193147, 0.0, 0.306853]])
    assert set(grpo.KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_kl_penalty_clamps():
    # d = +30: k1 = 30, k2 = 450, k3 = 29 + e^-30 -> 10; d = -30: k1 = -30 -> -10, k3 = e^30 - 31 -> 10
    lp, ref = t([[0.0, 0.0]]), t([[-30.0, 30.0]])
    close(grpo.kl_penalty(lp, ref, estimator="k1", clamp=10.0), [[10.0, -10.0]])
    close(grpo.kl_penalty(lp, ref, estimator="k2", clamp=10.0), [[10.0, 10.0]])
    close(grpo.kl_penalty(lp, ref, estimator="k3", clamp=10.0), [[10.0, 10.0]])
    close(grpo.kl_penalty(lp, ref, estimator="k1", clamp=0.5), [[0.5, -0.5]])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        grpo.kl_penalty(lp, ref, estimator="k4", clamp=10.0)


def test_kl_huge_log_ratio_has_finite_gradient():
    # exp(200) overflows float32; the log-ratio clamp keeps value and gradient finite.
    lp = t([[0.0]], torch.float32).requires_grad_()
    kl = grpo.kl_penalty(lp, t([[200.0]], torch.float32), estimator="k3", clamp=10.0)
    kl.sum().backward()
    assert float(kl.detach()) == 10.0 and torch.isfinite(lp.grad).all()


def test_sequence_kl_and_kl_in_reward():
    # k3 per token (0.193147, 0, 0.306853); row 0 masks the last token out: 0.193147;
    # row 1 sums all three: 0.193147 + 0.306853 = 0.5
    lp, ref = t(KL_LP * 2), t(KL_REF * 2)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    seq = grpo.sequence_kl(lp, ref, mask, estimator="k3", clamp=10.0)
    close(seq, [0.193147, 0.5])
    # rewards [B=1, G=2] = [1, 0]; minus 0.1 * (0.193147, 0.5) = (0.9806853, -0.05)
    close(grpo.subtract_kl_from_rewards(t([[1.0, 0.0]]), seq, kl_coef=0.1), [[0.9806853, -0.05]])


# --- surrogate and TIS -----------------------------------------------------------------------

def test_clipped_surrogate_golden():
    # ratios 1.5, 0.5, 1.5, 0.5, 4 with advantages +1, -1, -1, +1, -1 (eps 0.2 / 0.2, dual c = 3):
    #   r=1.5 A=+1: max(-1.5, -1.2) = -1.2   clipped high
    #   r=0.5 A=-1: max( 0.5,  0.8) =  0.8   clipped low
    #   r=1.5 A=-1: max( 1.5,  1.2) =  1.5   unclipped
    #   r=0.5 A=+1: max(-0.5, -0.8) = -0.5   unclipped
    #   r=4   A=-1: max( 4,    1.2) =  4 -> min(4, 3) = 3, dual-clipped
    lp = t([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5), math.log(4.0)]])
    adv = t([[1.0, -1.0, -1.0, 1.0, -1.0]])
    s = grpo.clipped_surrogate(lp, torch.zeros_like(lp), adv, clip_eps_low=0.2, clip_eps_high=0.2,
                               dual_clip_c=3.0)
    close(s.loss, [[-1.2, 0.8, 1.5, -0.5, 3.0]])
    close(s.ratio, [[1.5, 0.5, 1.5, 0.5, 4.0]])
    assert s.clipped_high.tolist() == [[True, False, False, False, False]]
    assert s.clipped_low.tolist() == [[False, True, False, False, False]]
    assert s.dual_clipped.tolist() == [[False, False, False, False, True]]
    # without dual clip the last token keeps 4
    s0 = grpo.clipped_surrogate(lp, torch.zeros_like(lp), adv, clip_eps_low=0.2, clip_eps_high=0.2,
                                dual_clip_c=0.0)
    close(s0.loss[0, 4], 4.0)
    assert not s0.dual_clipped.any()


def test_clip_higher_uses_separate_bounds():
    # eps_low 0.2, eps_high 0.28: r = 1.25, A=+1 is inside (1.25 < 1.28): loss -1.25, not clipped;
    # r = 1.5 is clipped at 1.28: loss -1.28. r = 0.7, A=-1 is clipped at 0.8: loss 0.8.
    lp = t([[math.log(1.25), math.log(1.5), math.log(0.7)]])
    s = grpo.clipped_surrogate(lp, torch.zeros_like(lp), t([[1.0, 1.0, -1.0]]), clip_eps_low=0.2,
                               clip_eps_high=0.28, dual_clip_c=0.0)
    close(s.loss, [[-1.25, -1.28, 0.8]])
    assert s.clipped_high.tolist() == [[False, True, False]]
    assert s.clipped_low.tolist() == [[False, False, True]]


def test_clip_fractions_at_the_boundaries():
    # ratio exactly 1 with eps 0 on both sides sits on both bounds: not clipped (strict inequalities).
    lp = torch.zeros(1, 4, dtype=torch.float64)
    s = grpo.clipped_surrogate(lp, lp, t([[1.0, -1.0, 0.0, 2.0]]), clip_eps_low=0.0, clip_eps_high=0.0,
                               dual_clip_c=0.0)
    assert not s.clipped_high.any() and not s.clipped_low.any()
    # a hair past each bound is clipped; advantage 0 is never counted as clipped
    eps = 1e-9
    lp = t([[eps, -eps, eps, -eps]])
    s = grpo.clipped_surrogate(lp, torch.zeros_like(lp), t([[1.0, -1.0, 0.0, 0.0]]), clip_eps_low=0.0,
                               clip_eps_high=0.0, dual_clip_c=0.0)
    assert s.clipped_high.tolist() == [[True, False, False, False]]
    assert s.clipped_low.tolist() == [[False, True, False, False]]
    # dual clip at ratio == c exactly is not counted, just past it is
    lp = t([[math.log(2.0), math.log(2.0) + 1e-9]])
    s = grpo.clipped_surrogate(lp, torch.zeros_like(lp), t([[-1.0, -1.0]]), clip_eps_low=0.2,
                               clip_eps_high=0.2, dual_clip_c=2.0)
    assert s.dual_clipped.tolist() == [[False, True]]
    close(s.loss, [[2.0, 2.0]])


def test_truncated_is_weights_golden():
    # old - rollout = (ln 3, ln 0.5, 0): exp = (3, 0.5, 1), capped at 2 -> (2, 0.5, 1); cap 0 -> ones
    old = t([[0.0, 0.0, -1.0]])
    rollout = t([[-LN3, LN2, -1.0]])
    close(grpo.truncated_is_weights(old, rollout, tis_cap=2.0), [[2.0, 0.5, 1.0]])
    close(grpo.truncated_is_weights(old, rollout, tis_cap=0.0), [[1.0, 1.0, 1.0]])
    old = old.clone().requires_grad_()
    assert not grpo.truncated_is_weights(old, rollout, tis_cap=2.0).requires_grad


# --- aggregation -----------------------------------------------------------------------------

PER_TOKEN = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[True, True, False], [True, False, False]]


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("token_mean", 7.0 / 3.0),  # (1 + 2 + 4) / 3
    ("seq_mean_token_mean", 2.75),  # (1.5 + 4) / 2
    ("seq_mean_token_sum_norm", 0.875),  # (3 / 4 + 4 / 4) / 2
])
def test_aggregate_loss_golden(aggregation, expected):
    loss = grpo.aggregate_loss(t(PER_TOKEN), torch.tensor(MASK), aggregation=aggregation, num_tokens=3,
                               num_sequences=2, max_response_tokens=4)
    close(loss, expected)


def test_aggregate_loss_uses_the_global_counts():
    # the same micro-batch as a part of an update of 6 tokens / 4 sequences: 7 / 6 and 5.5 / 4
    kw = dict(num_tokens=6, num_sequences=4, max_response_tokens=4)
    close(grpo.aggregate_loss(t(PER_TOKEN), torch.tensor(MASK), aggregation="token_mean", **kw), 7 / 6)
    close(grpo.aggregate_loss(t(PER_TOKEN), torch.tensor(MASK), aggregation="seq_mean_token_mean", **kw),
          5.5 / 4)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        grpo.aggregate_loss(t(PER_TOKEN), torch.tensor(MASK), aggregation="mean", **kw)


def test_aggregate_loss_ignores_nan_at_masked_positions():
    per_token = t([[1.0, math.nan], [math.inf, 2.0]])
    mask = torch.tensor([[True, False], [False, True]])
    for aggregation in AGGREGATIONS:
        assert torch.isfinite(grpo.aggregate_loss(per_token, mask, aggregation=aggregation, num_tokens=2,
                                                  num_sequences=2, max_response_tokens=2))


# --- grpo_loss: one fully hand-computed case -------------------------------------------------

def _golden_batch():
    """2 sequences x 2 tokens, the last token masked and full of garbage.

    token (0,0): ratio 1.5, A=+1 -> pg -1.2 (clipped high), w = 1, log(pi/ref) = ln2  -> k3 0.193147
    token (0,1): ratio 1,   A=+1 -> pg -1,                  w = min(3, 2) = 2, d = 0 -> k3 0
    token (1,0): ratio 0.5, A=-1 -> pg 0.8 (clipped low),   w = 1, d = -ln2 -> k3 0.306853
    """
    old = t([[-1.0, -2.0], [-1.5, -0.5]])
    lp = old + t([[math.log(1.5), 0.0], [math.log(0.5), 7.0]])
    ref = lp - t([[LN2, 0.0], [-LN2, -50.0]])
    rollout = old - t([[0.0, LN3], [0.0, 40.0]])
    return dict(logprobs=lp, old_logprobs=old, ref_logprobs=ref, rollout_logprobs=rollout,
                advantages=t([1.0, -1.0]), response_mask=torch.tensor([[True, True], [True, False]]))


GOLDEN_KW = dict(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=0.0, kl_coef=0.1, kl_estimator="k3",
                 kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=2, tis_cap=2.0)


def test_grpo_loss_golden_value_and_metrics():
    b = _golden_batch()
    lp = b.pop("logprobs").requires_grad_()
    loss, m = grpo.grpo_loss(lp, **b, num_tokens=3, num_sequences=2, **GOLDEN_KW)
    # per token pg * w + 0.1 * k3: -1.2 + 0.0193147, -2 + 0, 0.8 + 0.0306853; sum = -2.35; / 3
    close(loss, -2.35 / 3)
    close(m["loss"], -2.35 / 3)
    close(m["pg_loss"], -2.4 / 3)  # (-1.2 - 2 + 0.8) / 3
    close(m["kl"], 0.5 / 3)  # (0.193147 + 0 + 0.306853) / 3
    close(m["clip_frac_high"], 1 / 3)
    close(m["clip_frac_low"], 1 / 3)
    close(m["dual_clip_frac"], 0.0)
    close(m["ratio_mean"], 1.0)  # (1.5 + 1 + 0.5) / 3; the masked exp(7) is left out
    close(m["ratio_max"], 1.5)
    close(m["ratio_min"], 0.5)
    close(m["tis_weight_mean"], 4 / 3)  # (1 + 2 + 1) / 3
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    # gradient wrt logprobs, / 3 tokens:
    #   (0,0): pg clipped -> 0; k3' = 1 - exp(-d) = 1 - 0.5 -> 0.1 * 0.5 / 3
    #   (0,1): pg = -A * ratio * w -> -2; k3' = 0 -> -2 / 3
    #   (1,0): pg clipped -> 0; k3' = 1 - 2 = -1 -> 0.1 * -1 / 3
    #   (1,1): masked -> exactly 0
    loss.backward()
    close(lp.grad, [[0.05 / 3, -2 / 3], [-0.1 / 3, 0.0]])
    assert lp.grad[1, 1].item() == 0.0


def test_grpo_loss_seq_aggregations_golden():
    b = _golden_batch()
    kw = {**GOLDEN_KW, "kl_coef": 0.0}
    # per token pg * w: seq 0 (-1.2, -2), seq 1 (0.8)
    # seq_mean_token_mean: (-3.2 / 2 + 0.8) / 2 = -0.4
    loss, _ = grpo.grpo_loss(**b, num_tokens=3, num_sequences=2,
                             **{**kw, "loss_aggregation": "seq_mean_token_mean"})
    close(loss, -0.4)
    # seq_mean_token_sum_norm with max 4: (-3.2 / 4 + 0.8 / 4) / 2 = -0.3
    loss, _ = grpo.grpo_loss(**b, num_tokens=3, num_sequences=2,
                             **{**kw, "loss_aggregation": "seq_mean_token_sum_norm",
                                "max_response_tokens": 4})
    close(loss, -0.3)


def test_grpo_loss_kl_coef_zero_never_reads_ref_logprobs():
    b = _golden_batch()
    b["ref_logprobs"] = torch.full_like(b["ref_logprobs"], math.nan)
    loss, m = grpo.grpo_loss(**b, num_tokens=3, num_sequences=2, **{**GOLDEN_KW, "kl_coef": 0.0})
    close(loss, -2.4 / 3)
    close(m["kl"], 0.0)
    assert torch.isfinite(torch.stack(list(m.values()))).all()


def test_grpo_loss_dual_clip_metric_and_tis_off():
    # one token, ratio 4, A = -1, c = 3: loss 3, dual-clipped; tis_cap 0 -> weight 1 despite rollout gap
    lp = t([[math.log(4.0)]])
    loss, m = grpo.grpo_loss(lp, old_logprobs=t([[0.0]]), ref_logprobs=t([[0.0]]),
                             rollout_logprobs=t([[-5.0]]), advantages=t([-1.0]),
                             response_mask=torch.tensor([[True]]), num_tokens=1, num_sequences=1,
                             **{**GOLDEN_KW, "kl_coef": 0.0, "dual_clip_c": 3.0, "tis_cap": 0.0})
    close(loss, 3.0)
    close(m["dual_clip_frac"], 1.0)
    close(m["tis_weight_mean"], 1.0)


def test_grpo_loss_accepts_per_token_advantages():
    b = _golden_batch()
    kw = dict(num_tokens=3, num_sequences=2, **GOLDEN_KW)
    per_seq, _ = grpo.grpo_loss(**b, **kw)
    b["advantages"] = b["advantages"].unsqueeze(1).expand(2, 2)
    per_token, _ = grpo.grpo_loss(**b, **kw)
    close(per_token, per_seq)


def test_on_policy_zero_advantage_gives_zero_pg_loss():
    lp = torch.randn(3, 5, dtype=torch.float64).requires_grad_()
    mask = torch.rand(3, 5) > 0.3
    loss, m = grpo.grpo_loss(lp, old_logprobs=lp.detach(), ref_logprobs=lp.detach(),
                             rollout_logprobs=lp.detach(), advantages=torch.zeros(3, dtype=torch.float64),
                             response_mask=mask, num_tokens=int(mask.sum()), num_sequences=3, **GOLDEN_KW)
    assert float(loss.detach()) == 0.0 and float(m["pg_loss"]) == 0.0
    assert float(m["clip_frac_low"]) == 0.0 and float(m["clip_frac_high"]) == 0.0
    loss.backward()
    assert (lp.grad == 0).all()


def test_sft_loss_golden():
    # NLL of (1, 2, 3) over 3 tokens = 2; per sequence: (1.5 + 3) / 2 = 2.25; grad -1/3 on valid tokens
    lp = t([[-1.0, -2.0], [-3.0, -4.0]]).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    loss, m = grpo.sft_loss(lp, response_mask=mask, num_tokens=3, num_sequences=2, clip_eps_low=0.2)
    close(loss, 2.0)
    close(m["nll"], 2.0)
    loss.backward()
    close(lp.grad, [[-1 / 3, -1 / 3], [-1 / 3, 0.0]])
    loss, _ = grpo.sft_loss(lp, response_mask=mask, num_tokens=3, num_sequences=2,
                            loss_aggregation="seq_mean_token_mean")
    close(loss, 2.25)


def test_losses_registry_calls_every_loss_the_same_way():
    b = _golden_batch()
    kwargs = grpo.grpo_loss_kwargs(AlgorithmConfig(), max_response_tokens=2)
    for name, fn in grpo.LOSSES.items():
        loss, metrics = fn(b["logprobs"], **{k: v for k, v in b.items() if k != "logprobs"},
                           num_tokens=3, num_sequences=2, **kwargs)
        assert loss.dim() == 0 and torch.isfinite(loss), name
        assert "loss" in metrics
    assert set(grpo.LOSSES) == {"grpo", "sft"}


def test_grpo_loss_kwargs_golden():
    algo = AlgorithmConfig(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.05,
                           kl_estimator="k2", kl_clamp=5.0, loss_aggregation="seq_mean_token_sum_norm",
                           tis_cap=2.5)
    assert grpo.grpo_loss_kwargs(algo, max_response_tokens=64) == {
        "clip_eps_low": 0.2, "clip_eps_high": 0.28, "dual_clip_c": 3.0, "kl_coef": 0.05,
        "kl_estimator": "k2", "kl_clamp": 5.0, "loss_aggregation": "seq_mean_token_sum_norm",
        "max_response_tokens": 64, "tis_cap": 2.5,
    }
    # KL in the reward: the loss must not add it a second time
    in_reward = AlgorithmConfig(kl_coef=0.05, kl_in_reward=True)
    assert grpo.grpo_loss_kwargs(in_reward, max_response_tokens=64)["kl_coef"] == 0.0


# --- masking and micro-batch splitting -------------------------------------------------------

def _random_batch(n, length, seed, masked_garbage=True):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    lp = old + 0.4 * torch.randn(n, length, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(n, length, generator=g, dtype=torch.float64)
    rollout = old + 0.5 * torch.randn(n, length, generator=g, dtype=torch.float64)
    mask = torch.rand(n, length, generator=g) > 0.35
    mask[:, 0] = True  # every sequence has a response token
    if masked_garbage:  # masked positions hold values that would dominate if they leaked
        lp = torch.where(mask, lp, 60.0)
        ref = torch.where(mask, ref, -60.0)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return dict(logprobs=lp, old_logprobs=old, ref_logprobs=ref, rollout_logprobs=rollout, advantages=adv,
                response_mask=mask)


def _loss_and_grad(batch, rows, num_tokens, num_sequences, kwargs):
    lp = batch["logprobs"].clone().requires_grad_()
    sub = {k: v[rows] for k, v in batch.items() if k != "logprobs"}
    loss, metrics = grpo.grpo_loss(lp[rows], **sub, num_tokens=num_tokens, num_sequences=num_sequences,
                                   **kwargs)
    loss.backward()
    return loss.detach(), lp.grad, metrics


def test_masked_tokens_get_exactly_zero_gradient():
    batch = _random_batch(6, 7, seed=3)
    kw = {**GOLDEN_KW, "dual_clip_c": 3.0, "kl_estimator": "k2"}
    for aggregation in AGGREGATIONS:
        _, grad, _ = _loss_and_grad(batch, slice(None), int(batch["response_mask"].sum()), 6,
                                    {**kw, "loss_aggregation": aggregation, "max_response_tokens": 7})
        assert torch.isfinite(grad).all()
        assert (grad[~batch["response_mask"]] == 0).all()
        assert (grad[batch["response_mask"]] != 0).any()


def test_non_finite_padding_does_not_leak_into_loss_metrics_or_gradient():
    batch = _random_batch(4, 5, seed=11)
    pad = ~batch["response_mask"]
    for name, value in [("old_logprobs", math.nan), ("ref_logprobs", math.inf),
                        ("rollout_logprobs", -math.inf), ("logprobs", math.nan)]:
        batch[name] = batch[name].masked_fill(pad, value)
    loss, grad, metrics = _loss_and_grad(batch, slice(None), int((~pad).sum()), 4,
                                         {**GOLDEN_KW, "dual_clip_c": 3.0})
    assert torch.isfinite(loss) and torch.isfinite(torch.stack(list(metrics.values()))).all()
    assert torch.isfinite(grad).all() and (grad[pad] == 0).all()


def _check_split_invariance(batch, cuts, kwargs):
    n = batch["advantages"].shape[0]
    num_tokens = int(batch["response_mask"].sum())
    full_loss, full_grad, full_metrics = _loss_and_grad(batch, slice(None), num_tokens, n, kwargs)
    bounds = [0, *cuts, n]
    parts = [_loss_and_grad(batch, slice(a, b), num_tokens, n, kwargs) for a, b in zip(bounds, bounds[1:])]
    close(sum(p[0] for p in parts), full_loss, tol=1e-9)
    close(sum(p[1] for p in parts), full_grad, tol=1e-9)
    reduced = grpo.reduce_metrics([p[2] for p in parts])
    for name, value in grpo.reduce_metrics([full_metrics]).items():
        close(reduced[name], value, tol=1e-9)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batch_split_leaves_loss_and_gradient_unchanged(aggregation):
    batch = _random_batch(8, 6, seed=1)
    kwargs = {**GOLDEN_KW, "dual_clip_c": 3.0, "loss_aggregation": aggregation, "max_response_tokens": 6}
    _check_split_invariance(batch, [3, 5], kwargs)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), length=st.integers(1, 8), seed=st.integers(0, 10_000),
       aggregation=st.sampled_from(AGGREGATIONS), data=st.data())
def test_micro_batch_split_property(n, length, seed, aggregation, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=1, max_size=n - 1)))
    kwargs = {**GOLDEN_KW, "loss_aggregation": aggregation, "max_response_tokens": length}
    _check_split_invariance(_random_batch(n, length, seed), cuts, kwargs)


# --- metric reduction ------------------------------------------------------------------------

def test_reduce_metrics_golden():
    parts = [
        {"loss": torch.tensor(1.0), "ratio_max": torch.tensor(2.0), "ratio_min": torch.tensor(0.5)},
        {"loss": torch.tensor(2.5), "ratio_max": torch.tensor(3.0), "ratio_min": torch.tensor(0.7),
         "entropy": torch.tensor(0.25)},
    ]
    assert grpo.reduce_metrics(parts) == {"loss": 3.5, "ratio_max": 3.0, "ratio_min": 0.5, "entropy": 0.25}
    assert grpo.reduce_metrics([]) == {}


def test_metric_reduction_golden():
    assert grpo.metric_reduction("ratio_max") == "max"
    assert grpo.metric_reduction("ratio_min") == "min"
    assert grpo.metric_reduction("clip_frac_low") == "sum"
    assert grpo.metric_reduction("maximum") == "sum"


def test_empty_micro_batch_metrics_are_identities():
    b = _golden_batch()
    b["response_mask"] = torch.zeros(2, 2, dtype=torch.bool)
    loss, m = grpo.grpo_loss(**b, num_tokens=3, num_sequences=2, **GOLDEN_KW)
    assert float(loss) == 0.0
    assert float(m["ratio_max"]) == -math.inf and float(m["ratio_min"]) == math.inf
    _, full = grpo.grpo_loss(**_golden_batch(), num_tokens=3, num_sequences=2, **GOLDEN_KW)
    reduced = grpo.reduce_metrics([m, full])
    assert reduced["ratio_max"] == pytest.approx(1.5) and reduced["ratio_min"] == pytest.approx(0.5)


# --- the shuffled-reward control ---------------------------------------------------------------


def test_shuffle_within_groups_keeps_each_groups_rewards_and_moves_them():
    rewards = t([[1.0, 0.0, 0.0, 0.0, 1.1, 0.1, 0.0, 0.0]] * 64)  # [B=64, G=8], every row the same
    shuffled = grpo.shuffle_within_groups(rewards, generator=torch.Generator().manual_seed(0))
    close(shuffled.sort(dim=1).values, rewards.sort(dim=1).values)  # the same multiset per group
    close(grpo.compute_advantages(shuffled, estimator="grpo", eps=1e-6).sort(dim=1).values,
          grpo.compute_advantages(rewards, estimator="grpo", eps=1e-6).sort(dim=1).values)
    moved = (shuffled[:, 0] != rewards[:, 0]).double().mean()  # the first response keeps 1.0 with chance 1/8
    assert 0.6 < moved < 1.0
    again = grpo.shuffle_within_groups(rewards, generator=torch.Generator().manual_seed(0))
    close(again, shuffled)  # seeded: the same permutation again
