"""GRPO math: advantages, KL estimators, the clipped surrogate and loss aggregation, as pure torch.

Nothing here imports Ray, vLLM or Megatron; every function takes tensors and plain keyword-only
hyper-parameters and returns tensors. Shapes use the project's vocabulary: B prompts, G samples per
prompt, N = B x G sequences, L positions per sequence. Token-level tensors are [N, L] and aligned with
`TrainBatch.input_ids`; `response_mask` [N, L] bool marks the tokens that count in the loss.

Papers:
    GRPO        Shao et al. 2024, DeepSeekMath, arXiv:2402.03300
    DeepSeek-R1 DeepSeek-AI 2025, arXiv:2501.12948
    DAPO        Yu et al. 2025, arXiv:2503.14476 (clip-higher, token-level loss)
    Dr. GRPO    Liu et al. 2025, Understanding R1-Zero-Like Training, arXiv:2503.20783
    RLOO        Ahmadian et al. 2024, arXiv:2402.14740 (after Kool et al. 2019)
    Dual-clip   Ye et al. 2020, Mastering Complex Control in MOBA Games, arXiv:1912.09729
    KL k1/k2/k3 J. Schulman, "Approximating KL Divergence", 2020 (blog post)
    TIS         Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
                Training" (blog post): truncated importance sampling between trainer and sampler

How the learner uses this module (the loss contract):
    For every micro-batch it calls `LOSSES[name](logprobs, old_logprobs=..., ref_logprobs=...,
    rollout_logprobs=..., advantages=..., response_mask=..., num_tokens=..., num_sequences=...,
    **grpo_loss_kwargs(cfg.algorithm, max_response_tokens=...))`, where `num_tokens` and
    `num_sequences` count the valid tokens and the sequences of the WHOLE update (all micro-batches
    and all data-parallel ranks). Every loss is a sum over its micro-batch divided by those global
    counts, so summing the micro-batch losses (and gradients) gives exactly the loss (and gradient)
    of the whole update; no micro-batch is averaged on its own.

Metric contract:
    Each loss returns `metrics: dict[str, Tensor]` of detached 0-d tensors, already normalised by
    the global counts. To get the step value, SUM a metric over micro-batches and data-parallel
    ranks, except names ending in `_max` (reduce by max) and `_min` (reduce by min).
    `metric_reduction(name)` says which; `reduce_metrics(list_of_dicts)` applies it. A micro-batch
    with no valid token reports -inf for `_max` and +inf for `_min` (the identities of max and min).

Where this code departs from the papers:
    1. Loss aggregation. GRPO's objective averages over each sequence's tokens, then over the G
       sequences (`seq_mean_token_mean`). The default here is DAPO's token-level mean
       (`token_mean`); Dr. GRPO's `seq_mean_token_sum_norm` divides each sequence's sum by the
       constant `max_response_tokens` (Dr. GRPO uses a constant generation budget). All three
       normalise by counts over the whole update, not per micro-batch.
    2. GRPO advantages use the unbiased (G - 1) group std, and `eps` is added to the std (the papers
       do not specify either). A group whose rewards are equal up to rounding gets advantage exactly 0
       under every estimator: group statistics are computed in float64 and such groups are zeroed
       explicitly (in float32 a group of 0.1s has a mean one rounding step off each reward and a std
       of the same size, so (r - mean) / (std + eps) would be of order one, all of one sign).
       Dr. GRPO's estimator is r - mean without the std, as in its paper.
    3. KL. GRPO puts the k3 estimator of KL(pi_theta || pi_ref) in the loss; here k1, k2 or k3 can
       be chosen, each per-token estimate is clamped to [-kl_clamp, kl_clamp], and the default
       `kl_coef` is 0 (as in DAPO and Dr. GRPO). Like GRPO, the KL term is evaluated on samples of
       the old policy without an importance correction. Optionally the KL goes into the reward
       instead (`sequence_kl`, `subtract_kl_from_rewards`; PPO-RLHF style, not GRPO's choice).
    4. Log-ratios are clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before `exp`, so that
       garbage at masked positions or a huge policy drift cannot produce inf (and NaN gradients).
    5. The ratio is clipped at [1 - clip_eps_low, 1 + clip_eps_high] (DAPO clip-higher; GRPO and
       R1 use one epsilon), and an optional dual clip (not in any of the GRPO papers) bounds the
       loss of negative-advantage tokens at -A * dual_clip_c.
    6. The policy-gradient term of each token is multiplied by a detached truncated
       importance-sampling weight min(pi_old / pi_rollout, tis_cap) that corrects for the gap
       between the sampler's (vLLM's) and the learner's probabilities (TIS; not in the papers).
       The KL term is not reweighted.
    7. `seq_mean_token_mean` counts a sequence with no valid token (e.g. masked by DAPO's overlong
       filter) as contributing 0, while it still counts in `num_sequences` as the caller gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from trainer.config import AlgorithmConfig

LOG_RATIO_CLAMP = 20.0
"""exp(20) ~ 5e8: far past any clip bound, yet far from float32 overflow (exp(89) = inf)."""

# --- advantages ------------------------------------------------------------------------------


def grpo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """GRPO outcome advantage (arXiv:2402.03300, Sec. 4.1.2): (r - group mean) / (group std + eps).

    rewards: [B, G] -> [B, G]. The std is the unbiased (G - 1) one.
    """
    mean = rewards.mean(dim=1, keepdim=True)  # [B, 1]
    std = rewards.std(dim=1, keepdim=True, unbiased=True)  # [B, 1]
    return (rewards - mean) / (std + eps)  # [B, G]


def dr_grpo_advantages(rewards: Tensor, *, eps: float = 0.0) -> Tensor:
    """Dr. GRPO advantage (arXiv:2503.20783): r - group mean, no std (it biases towards easy groups).

    rewards: [B, G] -> [B, G]. `eps` is unused (same signature as the other estimators).
    """
    return rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]


def rloo_advantages(rewards: Tensor, *, eps: float = 0.0) -> Tensor:
    """REINFORCE leave-one-out (arXiv:2402.14740): r_i - mean of the other G - 1 rewards.

    rewards: [B, G] -> [B, G]. `eps` is unused. Equals G / (G - 1) * (r_i - group mean).
    """
    group_size = rewards.shape[1]
    others_sum = rewards.sum(dim=1, keepdim=True) - rewards  # [B, G]
    return rewards - others_sum / (group_size - 1)  # [B, G]


def shuffle_within_groups(rewards: Tensor, *, generator: torch.Generator) -> Tensor:
    """A control experiment's rewards: each group's G rewards permuted at random, [B, G] -> [B, G].

    The group's statistics (mean, std, how many were right) stay as they were, so the advantages have the
    same sizes, but which response earns which reward is chance: whatever the policy then learns is what
    the update does without the reward's information (docs/self_evolution.md's control).
    """
    keys = torch.rand(rewards.shape, generator=generator)  # [B, G]
    return rewards.gather(1, keys.argsort(dim=1))  # [B, G]


FLAT_GROUP_RTOL = 1e-6
"""A group whose reward spread (max - min) is at most this times its largest |reward| carries no signal:
about 8 float32 rounding steps, far below any real reward difference (0.1 format, 1 accuracy)."""


def flat_groups(rewards: Tensor) -> Tensor:
    """[B, G] -> [B] bool: groups whose rewards are all equal up to rounding (zero variance).

    The spread is compared in float64 against FLAT_GROUP_RTOL times the group's largest magnitude, so
    12.84 stored as float32 eight times is flat, and 0.0 against 1e-30 is not.
    """
    r = rewards.double()  # [B, G]
    spread = r.max(dim=1).values - r.min(dim=1).values  # [B]
    scale = r.abs().max(dim=1).values  # [B]
    return spread <= FLAT_GROUP_RTOL * scale  # [B]


AdvantageFn = Callable[..., Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: Tensor, *, estimator: str, eps: float) -> Tensor:
    """Group-relative advantages of rewards [B, G] -> [B, G] with the named estimator.

    Flatten with `.reshape(-1)` to get the [N] per-sequence advantages of a `TrainBatch`. Statistics
    are computed in float64; groups that are flat up to rounding (`flat_groups`) get exactly 0. The
    result has the rewards' dtype (float32 for integer rewards).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [B, G] with G >= 2 (advantages are relative to the group), "
                         f"got shape {tuple(rewards.shape)}")
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    # float64 statistics, and flat groups zeroed exactly (departure 2).
    adv = ADVANTAGE_ESTIMATORS[estimator](rewards.double(), eps=eps)  # [B, G]
    adv = adv.masked_fill(flat_groups(rewards).unsqueeze(1), 0.0)  # [B, G]
    return adv.to(out_dtype)


# --- KL estimators ---------------------------------------------------------------------------


def _log_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """log(p / q) from log-probs, clamped so that exp() of it stays finite (departure 4)."""
    return (numerator - denominator).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log(pi / pi_ref): unbiased for KL(pi || pi_ref), high variance, can be negative. [N, L]."""
    return _log_ratio(logprobs, ref_logprobs)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log(pi / pi_ref))^2 / 2: biased, low variance, >= 0. [N, L]."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs).square()


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = pi_ref / pi - log(pi_ref / pi) - 1: unbiased, >= 0; GRPO's estimator (its Eq. 4). [N, L]."""
    log_r = _log_ratio(ref_logprobs, logprobs)  # [N, L] log(pi_ref / pi)
    return torch.exp(log_r) - log_r - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, *, estimator: str, clamp: float) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate [N, L], clamped to [-clamp, clamp] (clamp > 0).

    The clamp bounds the damage of a few tokens the reference finds very unlikely.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs).clamp(-clamp, clamp)  # [N, L]


def sequence_kl(
    logprobs: Tensor,  # [N, L] policy that sampled
    ref_logprobs: Tensor,  # [N, L]
    response_mask: Tensor,  # [N, L] bool
    *, estimator: str, clamp: float,
) -> Tensor:
    """Per-sequence KL [N]: the clamped per-token estimates summed over the response, detached.

    For KL in the reward (`AlgorithmConfig.kl_in_reward`): see `subtract_kl_from_rewards`.
    """
    kl = kl_penalty(logprobs.detach(), ref_logprobs.detach(), estimator=estimator, clamp=clamp)  # [N, L]
    return torch.where(response_mask, kl, 0.0).sum(dim=1)  # [N]


def subtract_kl_from_rewards(rewards: Tensor, seq_kl: Tensor, *, kl_coef: float) -> Tensor:
    """rewards [B, G] - kl_coef * seq_kl [N = B x G] -> [B, G], before the advantages are computed."""
    return rewards - kl_coef * seq_kl.reshape(rewards.shape)


# --- policy-gradient terms -------------------------------------------------------------------


@dataclass(frozen=True)
class Surrogate:
    """Per-token result of the clipped surrogate; every field is [N, L]."""

    loss: Tensor
    """Per-token policy-gradient loss (to be minimised)."""
    ratio: Tensor
    """pi_theta / pi_old."""
    clipped_low: Tensor
    """bool: A < 0 and ratio < 1 - clip_eps_low (the clip is active, no gradient)."""
    clipped_high: Tensor
    """bool: A > 0 and ratio > 1 + clip_eps_high (the clip is active, no gradient)."""
    dual_clipped: Tensor
    """bool: A < 0 and the dual clip bound -A * dual_clip_c is active."""


def clipped_surrogate(
    logprobs: Tensor,  # [N, L] log pi_theta(y_t | y_<t)
    old_logprobs: Tensor,  # [N, L] policy the update starts from
    advantages: Tensor,  # [N, L] (or [N, 1], broadcast over tokens)
    *, clip_eps_low: float, clip_eps_high: float, dual_clip_c: float,
) -> Surrogate:
    """PPO-clip objective as GRPO uses it (arXiv:2402.03300), clip-higher from DAPO (arXiv:2503.14476),
    optional dual-clip (arXiv:1912.09729; dual_clip_c > 1, 0 disables). Boundaries are not clipped.
    """
    ratio = torch.exp(_log_ratio(logprobs, old_logprobs.detach()))  # [N, L]
    unclipped = -advantages * ratio  # [N, L]
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [N, L]
    loss = torch.maximum(unclipped, clipped)  # [N, L] pessimistic bound
    ratio_d = ratio.detach()
    clipped_low = (advantages < 0) & (ratio_d < 1.0 - clip_eps_low)  # [N, L]
    clipped_high = (advantages > 0) & (ratio_d > 1.0 + clip_eps_high)  # [N, L]
    if dual_clip_c > 0:
        # For A < 0 the max above grows without bound in the ratio; dual-clip caps it at -A * c.
        dual_clipped = (advantages < 0) & (ratio_d > dual_clip_c)  # [N, L]
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip_c), loss)
    else:
        dual_clipped = torch.zeros_like(clipped_low)
    return Surrogate(loss=loss, ratio=ratio, clipped_low=clipped_low, clipped_high=clipped_high,
                     dual_clipped=dual_clipped)


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, *, tis_cap: float) -> Tensor:
    """TIS weight min(pi_old / pi_rollout, tis_cap) [N, L], detached; tis_cap = 0 gives ones.

    vLLM's sampling probabilities differ from the learner's (kernels, precision), so the samples are
    slightly off-policy for the learner; the weight corrects that, truncated to bound its variance.
    """
    if tis_cap == 0:
        return torch.ones_like(old_logprobs)
    ratio = torch.exp(_log_ratio(old_logprobs.detach(), rollout_logprobs.detach()))  # [N, L]
    return ratio.clamp(max=tis_cap)


# --- aggregation -----------------------------------------------------------------------------

LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def _masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of values [N, L] where mask [N, L] is True, as a 0-d tensor (masked NaN/inf do not leak)."""
    return torch.where(mask, values, 0.0).sum()


def aggregate_loss(
    per_token: Tensor,  # [N, L] per-token loss
    response_mask: Tensor,  # [N, L] bool
    *, aggregation: str, num_tokens: int, num_sequences: int, max_response_tokens: int,
) -> Tensor:
    """One 0-d loss from per-token losses, normalised by the counts of the whole update.

    token_mean:              sum of masked losses / num_tokens (DAPO).
    seq_mean_token_mean:     sum over sequences of (mean over its tokens) / num_sequences (GRPO).
    seq_mean_token_sum_norm: sum over sequences of (sum over its tokens / max_response_tokens)
                             / num_sequences (Dr. GRPO).
    num_tokens / num_sequences count valid tokens / sequences over all micro-batches and ranks, so
    the losses of micro-batches add up to the loss of the whole update. Counts of 0 are read as 1.
    """
    masked = torch.where(response_mask, per_token, 0.0)  # [N, L]
    if aggregation == "token_mean":
        return masked.sum() / max(num_tokens, 1)
    if aggregation == "seq_mean_token_mean":
        seq_tokens = response_mask.sum(dim=1).clamp(min=1)  # [N]
        return (masked.sum(dim=1) / seq_tokens).sum() / max(num_sequences, 1)
    if aggregation == "seq_mean_token_sum_norm":
        return masked.sum() / (max(max_response_tokens, 1) * max(num_sequences, 1))
    raise ValueError(f"unknown loss aggregation {aggregation!r}; known: token_mean, "
                     f"seq_mean_token_mean, seq_mean_token_sum_norm")


# --- the losses the learner calls by name ----------------------------------------------------

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def _per_token(advantages: Tensor) -> Tensor:
    """Advantages [N] (per sequence) or [N, L] (per token) -> broadcastable against [N, L]."""
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages


def grpo_loss(
    logprobs: Tensor,  # [N, L] log pi_theta, with grad
    *,
    old_logprobs: Tensor,  # [N, L] policy that the update starts from
    ref_logprobs: Tensor,  # [N, L] reference model (never read when kl_coef = 0)
    rollout_logprobs: Tensor,  # [N, L] as vLLM reported them
    advantages: Tensor,  # [N] or [N, L]
    response_mask: Tensor,  # [N, L] bool
    num_tokens: int, num_sequences: int,
    clip_eps_low: float, clip_eps_high: float, dual_clip_c: float,
    kl_coef: float, kl_estimator: str, kl_clamp: float,
    loss_aggregation: str, max_response_tokens: int, tis_cap: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss of one micro-batch (arXiv:2402.03300 Eq. 3, with the departures in the module doc).

    per token: tis_weight * clipped_surrogate + kl_coef * KL(pi || pi_ref), aggregated with the
    global counts. Metrics follow the module's metric contract.
    """
    mask = response_mask.bool()
    adv = _per_token(advantages).to(logprobs.dtype)  # [N, 1] or [N, L]
    surrogate = clipped_surrogate(logprobs, old_logprobs, adv, clip_eps_low=clip_eps_low,
                                  clip_eps_high=clip_eps_high, dual_clip_c=dual_clip_c)
    tis_weight = truncated_is_weights(old_logprobs, rollout_logprobs, tis_cap=tis_cap)  # [N, L]
    pg = tis_weight * surrogate.loss  # [N, L]
    agg = dict(aggregation=loss_aggregation, num_tokens=num_tokens, num_sequences=num_sequences,
               max_response_tokens=max_response_tokens)
    pg_loss = aggregate_loss(pg, mask, **agg)  # type: ignore[arg-type]
    denom = max(num_tokens, 1)
    if kl_coef > 0:
        kl = kl_penalty(logprobs, ref_logprobs, estimator=kl_estimator, clamp=kl_clamp)  # [N, L]
        loss = aggregate_loss(pg + kl_coef * kl, mask, **agg)  # type: ignore[arg-type]
        kl_metric = _masked_sum(kl.detach(), mask) / denom
    else:
        loss = pg_loss  # the reference logprobs may be zeros here: do not touch them
        kl_metric = logprobs.new_zeros(())
    metrics = {
        "loss": loss.detach(),
        "pg_loss": pg_loss.detach(),
        "kl": kl_metric,
        **_ratio_metrics(surrogate, tis_weight, mask, denom),
    }
    return loss, metrics


def _ratio_metrics(s: Surrogate, tis_weight: Tensor, mask: Tensor, denom: int) -> dict[str, Tensor]:
    """Clip fractions and ratio statistics over valid tokens, normalised by the global token count."""
    ratio = s.ratio.detach()  # [N, L]
    frac = lambda flags: (flags & mask).sum().to(ratio.dtype) / denom  # noqa: E731
    return {
        "clip_frac_low": frac(s.clipped_low),
        "clip_frac_high": frac(s.clipped_high),
        "dual_clip_frac": frac(s.dual_clipped),
        "ratio_mean": _masked_sum(ratio, mask) / denom,
        "ratio_max": torch.where(mask, ratio, -torch.inf).amax(),
        "ratio_min": torch.where(mask, ratio, torch.inf).amin(),
        "tis_weight_mean": _masked_sum(tis_weight, mask) / denom,
    }


def sft_loss(
    logprobs: Tensor,  # [N, L] log pi_theta, with grad
    *,
    response_mask: Tensor,  # [N, L] bool
    num_tokens: int, num_sequences: int,
    loss_aggregation: str = "token_mean", max_response_tokens: int = 1,
    **unused: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the response tokens (cold-start and rejection-sampling SFT in R1).

    Takes and ignores the GRPO keyword arguments, so the learner calls every loss the same way.
    """
    mask = response_mask.bool()
    loss = aggregate_loss(-logprobs, mask, aggregation=loss_aggregation, num_tokens=num_tokens,
                          num_sequences=num_sequences, max_response_tokens=max_response_tokens)
    nll = _masked_sum(-logprobs.detach(), mask) / max(num_tokens, 1)
    return loss, {"loss": loss.detach(), "nll": nll}


LOSSES: dict[str, LossFn] = {"grpo": grpo_loss, "sft": sft_loss}


def grpo_loss_kwargs(algorithm: AlgorithmConfig, *, max_response_tokens: int) -> dict[str, float | str]:
    """Unpack the config into the plain keyword arguments of `grpo_loss` (and `sft_loss`).

    With `kl_in_reward` the KL is already in the rewards, so the loss gets kl_coef = 0.
    """
    return {
        "clip_eps_low": algorithm.clip_eps_low,
        "clip_eps_high": algorithm.clip_eps_high,
        "dual_clip_c": algorithm.dual_clip_c,
        "kl_coef": 0.0 if algorithm.kl_in_reward else algorithm.kl_coef,
        "kl_estimator": algorithm.kl_estimator,
        "kl_clamp": algorithm.kl_clamp,
        "loss_aggregation": algorithm.loss_aggregation,
        "max_response_tokens": max_response_tokens,
        "tis_cap": algorithm.tis_cap,
    }


# --- metric reduction ------------------------------------------------------------------------

MetricReduction = Literal["sum", "max", "min"]


def metric_reduction(name: str) -> MetricReduction:
    """How a metric combines over micro-batches and ranks: `_max` -> max, `_min` -> min, else sum."""
    if name.endswith("_max"):
        return "max"
    if name.endswith("_min"):
        return "min"
    return "sum"


def reduce_metrics(metrics: Sequence[Mapping[str, Tensor | float]]) -> dict[str, float]:
    """Combine per-micro-batch (or per-rank) metric dicts into step values, by `metric_reduction`.

    A name missing from some dicts is reduced over the dicts that have it.
    """
    names: dict[str, None] = {}
    for m in metrics:
        names.update(dict.fromkeys(m))
    out: dict[str, float] = {}
    for name in names:
        values = torch.stack([torch.as_tensor(m[name], dtype=torch.float64) for m in metrics if name in m])
        how = metric_reduction(name)
        reduced = values.amax() if how == "max" else values.amin() if how == "min" else values.sum()
        out[name] = float(reduced)
    return out
