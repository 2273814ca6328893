"""Per-token log-probabilities and entropy from vocab-parallel logits, without full fp32 copies.

The learner's last pipeline stage holds logits [b, s, V/tp] in the model dtype (bf16 on GPUs). Taking
`log_softmax(logits.float())` would materialise several fp32 tensors of that size (the cast, the shifted
logits, their exp, the probabilities for the entropy) and autograd would keep some of them for backward:
at V = 152k, s = 4k and b = 8 one fp32 copy is 20 GB. Here a `torch.autograd.Function` walks the flattened
tokens in chunks of `chunk_tokens` rows:

    forward:  per chunk, in fp32: row max -> all-reduce MAX over TP -> sum exp, sum exp * x, target logit
              -> all-reduce SUM over TP -> logprob = x_t - m - log Z, entropy = log Z - E_p[x - m]
    backward: per chunk, recompute p = exp(x - m - log Z); grad_x = grad_logprob * (onehot(t) - p)

Only per-token statistics ([b*s] floats) are saved for backward, plus a reference to the logits that the
model's output layer keeps anyway. The gradient is written chunk by chunk into one tensor of the logits'
dtype, the one buffer autograd needs regardless. With a sampling temperature T the logits are read as x / T
chunk by chunk (`inv_temperature` = 1 / T), so the logprobs are those of the distribution vLLM sampled
from, without a scaled copy of the logits. Padded vocabulary rows (ids >= vocab_size, a suffix of
the padded vocabulary, so a suffix of the last ranks' slices) are cut off: they get probability 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

LOGPROB_CHUNK_TOKENS = 1024
"""Rows of logits turned into fp32 at a time: 1024 x 152k vocab x 4 bytes = 0.6 GB at TP=1."""


def _all_reduce(t: Tensor, op, group) -> Tensor:
    """All-reduce over the TP group; a no-op without one (a single process, or TP = 1)."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, vocab_start: int, vocab_size: int, group,
                chunk_tokens: int, inv_temperature: float) -> tuple[Tensor, Tensor]:
        shape = targets.shape  # [B, S]
        local_vocab = logits.shape[-1]
        valid = max(0, min(local_vocab, vocab_size - vocab_start))  # real (unpadded) columns here
        flat = logits.reshape(-1, local_vocab)[:, :valid]  # [T, valid] (a view when logits are contiguous)
        local = targets.reshape(-1) - vocab_start  # [T]
        here = (local >= 0) & (local < valid)  # [T] the target's logit lives on this rank
        local = local.clamp(0, max(valid - 1, 0))  # [T]
        n = flat.shape[0]
        peak = torch.full((n,), float("-inf"), dtype=torch.float32, device=logits.device)  # [T]
        for lo in range(0, n if valid else 0, chunk_tokens):
            peak[lo : lo + chunk_tokens] = flat[lo : lo + chunk_tokens].float().amax(-1) * inv_temperature
        _all_reduce(peak, dist.ReduceOp.MAX, group)
        sums = torch.zeros(3, n, dtype=torch.float32, device=logits.device)  # [3, T]: Z, sum e*x, x_t
        for lo in range(0, n if valid else 0, chunk_tokens):
            rows = slice(lo, lo + chunk_tokens)
            shifted = flat[rows].float() * inv_temperature - peak[rows, None]  # [t, valid]
            e = shifted.exp()  # [t, valid]
            sums[0, rows] = e.sum(-1)
            sums[1, rows] = (e * shifted).sum(-1)
            picked = shifted.gather(-1, local[rows, None]).squeeze(-1)  # [t]
            sums[2, rows] = torch.where(here[rows], picked, torch.zeros_like(picked))
        _all_reduce(sums, dist.ReduceOp.SUM, group)
        log_norm = sums[0].log()  # [T] log Z relative to the peak
        logprobs = (sums[2] - log_norm).view(shape)  # [B, S]
        entropy = (log_norm - sums[1] / sums[0]).view(shape)  # [B, S]
        ctx.save_for_backward(logits, local, here, peak, log_norm)
        ctx.valid, ctx.chunk_tokens, ctx.inv_temperature = valid, chunk_tokens, inv_temperature
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        logits, local, here, peak, log_norm = ctx.saved_tensors
        valid, chunk, inv_t = ctx.valid, ctx.chunk_tokens, ctx.inv_temperature
        local_vocab = logits.shape[-1]
        grad = torch.zeros_like(logits).view(-1, local_vocab)  # [T, V/tp] in the logits' dtype
        flat = logits.reshape(-1, local_vocab)[:, :valid]  # [T, valid]
        g = grad_logprobs.reshape(-1).float()  # [T]
        for lo in range(0, flat.shape[0] if valid else 0, chunk):
            rows = slice(lo, lo + chunk)
            probs = (flat[rows].float() * inv_t - (peak[rows] + log_norm[rows])[:, None]).exp()  # [t, valid]
            # d logprob / d x = (onehot(t) - p) / T: the chain rule through x / T.
            step = -probs * (g[rows, None] * inv_t)  # [t, valid]
            hit = torch.where(here[rows], g[rows] * inv_t, torch.zeros_like(g[rows]))  # [t]
            step.scatter_add_(-1, local[rows, None], hit[:, None])
            grad[rows, :valid] = step.to(grad.dtype)
        return grad.view_as(logits), None, None, None, None, None, None


def vocab_parallel_logprobs(logits: Tensor, targets: Tensor, *, vocab_start: int, vocab_size: int, group,
                            chunk_tokens: int = LOGPROB_CHUNK_TOKENS, temperature: float = 1.0
                            ) -> tuple[Tensor, Tensor]:
    """Log p(target) and entropy from this TP rank's vocab slice of the logits, at sampling `temperature`
    (p = softmax(logits / T): the distribution vLLM samples from and reports as processed logprobs).

    logits [B, S, V/tp] (columns whose global id is >= vocab_size are padding and get probability 0),
    targets [B, S] int64, `group` the TP process group (None: a single rank holds the whole vocabulary).
    Returns logprobs [B, S] float32 (differentiable) and entropy [B, S] float32 (detached).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    logprobs, entropy = _VocabParallelLogprobs.apply(logits, targets, vocab_start, vocab_size, group, chunk_tokens,
                                                     1.0 / temperature)
    return logprobs, entropy
