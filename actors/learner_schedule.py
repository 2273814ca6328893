"""Micro-batches through Megatron's pipeline schedule: the plan (by sequence count, by token budget, or
packed to a token budget), the forward step, and the loss function that turns the last stage's logits into
temperature-scaled logprobs (vocab-parallel, `actors.logprobs`) and hands them to the named loss.

    TrainBatch (this rank's DP slice) -> plan_microbatches -> each cut to its longest sequence
        -> padded: the model reads [b, s] rows under a causal mask
           packed (`pack_sequences`, actors.packing): the model reads the rows' real tokens end to end,
           [1, T] with PackedSeqParams (THD), and its logprobs come back to [b, s]
        -> get_forward_backward_func() (forward, loss, backward; forward only for logprobs)

Either way the loss function sees the same [b, s] tensors, so packing changes what the model computes on
(no padding), not what the loss reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from actors import megatron_cpu
from actors.hf_megatron import ModelShape
from actors.logprobs import vocab_parallel_logprobs
from actors.packing import PackedRows, pack_rows, plan_packs
from trainer.types import TrainBatch

if TYPE_CHECKING:
    from trainer.grpo import LossFn

Loss = tuple["LossFn", int]
"""(a loss of trainer.grpo.LOSSES with its keyword arguments bound, the update's global token count)."""
StepOutput = dict[str, Tensor]
"""What the loss function reports per micro-batch: loss metrics, or {"logprobs": [b, s]} forward-only."""


def plan_microbatches(lengths: list[int], sequences_per_microbatch: int, tokens_per_microbatch: int = 0,
                      pack: bool = False) -> list[list[int]]:
    """Split sequence indices into micro-batches; each is later cut to its longest sequence (or packed).

    tokens_per_microbatch = 0: ceil(N / spm) micro-batches of at most spm sequences with balanced token
    counts (longest first, each to the lightest micro-batch with room: greedy LPT).
    tokens_per_microbatch > 0: dynamic batch size. Longest first, a micro-batch takes sequences while
    (sequences x its longest length) stays within the budget and the count within spm; a sequence longer
    than the budget goes alone. Similar lengths end up together, so the cut wastes little either way.
    pack: the budget counts real tokens (the sum of the lengths), first-fit decreasing
    (`actors.packing.plan_packs`); a sequence longer than the budget goes alone.
    """
    if pack:
        return plan_packs(lengths, tokens_per_microbatch, sequences_per_microbatch)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if tokens_per_microbatch > 0:
        plan: list[list[int]] = []
        for i in order:
            current = plan[-1] if plan else None
            if current is not None and len(current) < sequences_per_microbatch and \
                    (len(current) + 1) * lengths[current[0]] <= tokens_per_microbatch:
                current.append(i)
            else:
                plan.append([i])
        return [sorted(b) for b in plan]
    count = max(1, -(-len(lengths) // sequences_per_microbatch))
    bins: list[list[int]] = [[] for _ in range(count)]
    tokens = [0] * count
    for i in order:
        b = min((b for b in range(count) if len(bins[b]) < sequences_per_microbatch), key=lambda b: tokens[b])
        bins[b].append(i)
        tokens[b] += lengths[i]
    return [sorted(b) for b in bins if b]


def old_logprobs_or_own(old_logprobs: Tensor, logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor,
                        num_tokens: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The micro-batch's old logprobs [b, s], or, when it carries none ([b, 0]: an exactly on-policy step,
    `trainer.steps.old_logprobs_from_update`), this forward's own, detached: the numbers a second forward
    pass would give (TRL does the same). The controller then has no old logprobs to compare with vLLM's,
    so the gap is measured here, as loss metrics (trainer.grpo's contract: normalised by `num_tokens`,
    summed over micro-batches; `_max` by max)."""
    if old_logprobs.shape[-1] != 0:
        return old_logprobs, {}
    own = logprobs.detach()  # [b, s]
    gap = (own - rollout_logprobs).abs()  # [b, s]
    return own, {"logprob_gap_mean": torch.where(response_mask, gap, 0.0).sum() / max(num_tokens, 1),
                 "logprob_gap_max": torch.where(response_mask, gap, -torch.inf).amax()}


def trim(mb: TrainBatch) -> TrainBatch:
    """Cut the padding columns beyond the micro-batch's longest sequence."""
    length = int(mb.attention_mask.sum(1).max())
    cut = slice(None, length)
    return mb.replace(input_ids=mb.input_ids[:, cut], attention_mask=mb.attention_mask[:, cut],
                      response_mask=mb.response_mask[:, cut], old_logprobs=mb.old_logprobs[:, cut],
                      ref_logprobs=mb.ref_logprobs[:, cut], rollout_logprobs=mb.rollout_logprobs[:, cut])


@dataclass(frozen=True)
class Microbatch:
    """What one forward step reads: the rows cut to their longest sequence (the loss reads these), and the
    same rows packed end to end when sequences are packed (then the model reads those)."""

    rows: TrainBatch
    """[b, s] tensors, s the longest sequence of the micro-batch."""
    packed: PackedRows | None
    """The rows' real tokens as one [1, T] row, or None on the padded path."""

    @property
    def tokens(self) -> int:
        """Tokens the model computes on: T packed, b x s padded."""
        return self.packed.num_tokens if self.packed is not None else self.rows.input_ids.numel()


class StageSchedule:
    """Runs micro-batches through this rank's pipeline stage; what the last stage's loss function needs
    (its vocab slice, the sampling temperature, the TP group of the vocab-parallel softmax) is fixed here."""

    def __init__(self, shape: ModelShape, *, tp_rank: int, pp_rank: int, device: torch.device,
                 temperature: float, tp_group: dist.ProcessGroup, pack: bool = False):
        self.shape, self.tp_rank, self.device, self.pack = shape, tp_rank, device, pack
        self.is_last_stage = pp_rank == shape.pp - 1
        # The rollouts' sampling temperature: every logprob here (policy, old policy, reference) is that of
        # softmax(logits / T), the distribution vLLM sampled from and reports (processed_logprobs).
        self.temperature, self.tp_group = temperature, tp_group

    def logprobs(self, model: torch.nn.Module, batch: TrainBatch, plan: list[list[int]]) -> Tensor | None:
        """[N, L] float32 logprobs aligned with input_ids (position 0 and padding are 0); None off the last stage."""
        with torch.no_grad():
            outputs = self.run(model, batch, plan, loss=None)
        if outputs is None:
            return None
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)  # [N, L]
        for rows, o in zip(plan, outputs):
            lp = o["logprobs"].float().cpu()  # [b, s]
            out[rows, : lp.shape[1]] = lp
        return out * batch.attention_mask

    def run(self, model: torch.nn.Module, batch: TrainBatch, plan: list[list[int]], *,
            loss: Loss | None) -> list[StepOutput] | None:
        """Megatron's schedule over the micro-batches `plan`: forward and backward of `loss`, or forward only
        (loss None); the per-micro-batch outputs on the last stage, None on the others."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        micro = [self.microbatch(batch.select(torch.tensor(rows))) for rows in plan]
        step = partial(self._forward_step, loss=loss)
        packed = self.pack
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(micro), model=[model], num_microbatches=len(micro),
            seq_length=max(m.tokens if packed else m.rows.input_ids.shape[1] for m in micro),
            micro_batch_size=1 if packed else max(len(r) for r in plan), forward_only=loss is None)
        return outputs if self.is_last_stage else None

    def microbatch(self, rows: TrainBatch) -> Microbatch:
        rows = trim(rows)
        return Microbatch(rows, pack_rows(rows.input_ids, rows.attention_mask) if self.pack else None)

    def _forward_step(self, data_iterator: Iterator[Microbatch], model: torch.nn.Module, *, loss: Loss | None):
        mb = next(data_iterator)
        if mb.packed is None:
            ids = mb.rows.input_ids.to(self.device)  # [b, s]
            b, s = ids.shape
            positions = torch.arange(s, device=self.device).expand(b, s)  # [b, s]
            output = model(ids, positions, megatron_cpu.causal_mask(s, self.device))  # last stage: [b, s, V/tp]
        else:
            from megatron.core.packed_seq_params import PackedSeqParams

            p = mb.packed
            cu = p.cu_seqlens.to(self.device)  # [b + 1] int32
            # No mask: each sequence's causal attention comes from cu_seqlens (actors.sdpa_attention).
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                     max_seqlen_q=p.max_seqlen, max_seqlen_kv=p.max_seqlen)
            output = model(p.input_ids.to(self.device), p.position_ids.to(self.device), None,
                           packed_seq_params=params)  # last stage: [1, T, V/tp]
        return output, partial(self._loss_func, mb, loss)

    def _token_logprobs(self, mb: Microbatch, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(logprobs, entropy) [b, s] of each token given the ones before it (position 0 and padding: 0 when
        packed, unread by the losses when padded), from the last stage's logits [b, s, V/tp] or [1, T, V/tp]."""
        vocab_start = self.tp_rank * logits.shape[-1]
        score = partial(vocab_parallel_logprobs, vocab_start=vocab_start, vocab_size=self.shape.vocab_size,
                        temperature=self.temperature, group=self.tp_group)
        if mb.packed is not None:
            lp, entropy = score(logits, mb.packed.targets.to(self.device))  # [1, T]
            return mb.packed.unpack(lp), mb.packed.unpack(entropy)  # [b, s]
        ids = mb.rows.input_ids.to(self.device)  # [b, s]
        # logits at t predict token t + 1: score every position against the next token (the last one
        # against a dummy 0, dropped), so the logits are read in place instead of sliced into a copy.
        targets = torch.nn.functional.pad(ids[:, 1:], (0, 1))  # [b, s]
        lp, entropy = score(logits, targets)  # [b, s]
        # position 0 has no prediction
        return torch.nn.functional.pad(lp[:, :-1], (1, 0)), torch.nn.functional.pad(entropy[:, :-1], (1, 0))

    def _loss_func(self, micro: Microbatch, loss: Loss | None, logits: Tensor) -> tuple[Tensor, Tensor, StepOutput]:
        logprobs, token_entropy = self._token_logprobs(micro, logits)  # [b, s]
        mb = micro.rows
        count = torch.tensor(1, dtype=torch.int)
        if loss is None:
            return logprobs.sum() * 0, count, {"logprobs": logprobs.detach()}
        loss_fn, num_tokens = loss
        mask = mb.response_mask.to(self.device)  # [b, s]
        rollout = mb.rollout_logprobs.to(self.device)  # [b, s]
        old, gap = old_logprobs_or_own(mb.old_logprobs.to(self.device), logprobs, rollout, mask, num_tokens)
        value, metrics = loss_fn(
            logprobs, old_logprobs=old, ref_logprobs=mb.ref_logprobs.to(self.device),
            rollout_logprobs=rollout, advantages=mb.advantages.to(self.device), response_mask=mask)
        metrics = {k: v.detach() if isinstance(v, Tensor) else v for k, v in metrics.items()} | gap
        metrics["entropy"] = (token_entropy * mask).sum() / max(num_tokens, 1)
        return value, count, metrics
