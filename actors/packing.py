"""Sequence packing for the learner: micro-batches filled to a token budget, with no padding computed.

    this rank's TrainBatch rows (right-padded [N, L])
        -> plan_packs: longest first, each sequence to the first micro-batch with room (first-fit decreasing)
        -> pack_rows: a micro-batch's b sequences end to end, one row of T = sum of their lengths, with
           cu_seqlens [b + 1] (the THD layout of Megatron's `PackedSeqParams`)
        -> GPTModel: RoPE positions restart at each sequence, attention stays inside it (actors.sdpa_attention)
        -> per-token logprobs [1, T] -> unpack: [b, s] laid out exactly as the padded path lays them out

The loss functions, the response mask and every other per-token tensor stay in the padded [b, s] layout of
the micro-batch's rows: only the model reads the packed row. So a response mask with zeros inside a
response (tool output in a multi-turn rollout) counts exactly as in the padded path: every real token is
packed and attended to, and the mask decides which ones the loss counts. Positions past a sequence's end
get logprob 0 here (the padded path computes a value there that every loss masks out).

Pure torch: nothing here imports Megatron.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def plan_packs(lengths: list[int], tokens_per_microbatch: int, sequences_per_microbatch: int) -> list[list[int]]:
    """Split sequence indices into micro-batches of at most `tokens_per_microbatch` real tokens and at most
    `sequences_per_microbatch` sequences, first-fit decreasing (longest first, each into the first
    micro-batch it fits). A sequence longer than the budget goes alone in a micro-batch of its own: it is
    never cut, since its attention spans all of it. Every index appears exactly once; each micro-batch's
    indices are sorted. Deterministic: ties in length keep index order."""
    if tokens_per_microbatch <= 0:
        raise ValueError(f"packing needs a token budget > 0, not tokens_per_microbatch = {tokens_per_microbatch}")
    if sequences_per_microbatch < 1:
        raise ValueError(f"sequences_per_microbatch must be >= 1, not {sequences_per_microbatch}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plan: list[list[int]] = []
    tokens: list[int] = []
    for i in order:
        fits = (b for b in range(len(plan)) if len(plan[b]) < sequences_per_microbatch
                and tokens[b] + lengths[i] <= tokens_per_microbatch)
        b = next(fits, None)
        if b is None:
            plan.append([i])
            tokens.append(lengths[i])
        else:
            plan[b].append(i)
            tokens[b] += lengths[i]
    return [sorted(mb) for mb in plan]


@dataclass(frozen=True)
class PackedRows:
    """One micro-batch's sequences end to end (the THD layout), with the map back to its padded rows."""

    input_ids: Tensor
    """[1, T] int64 the sequences' real tokens, one after another."""
    position_ids: Tensor
    """[1, T] int64 each token's position in its own sequence (restarts at 0 per sequence)."""
    targets: Tensor
    """[1, T] int64 the next token of the same sequence (0 after a sequence's last token: never read)."""
    cu_seqlens: Tensor
    """[b + 1] int32 where each sequence starts in the packed row, then T."""
    max_seqlen: int
    """The longest sequence's length."""
    rows: Tensor
    """[T] int64 the padded row each packed token came from."""
    cols: Tensor
    """[T] int64 its column there."""
    padded_shape: tuple[int, int]
    """(b, s) of the padded micro-batch."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def unpack(self, per_token: Tensor) -> Tensor:
        """Per-token predictions of the packed row, [1, T] (at t: the score of token t + 1 of the same
        sequence), as [b, s] aligned with input_ids: column c > 0 holds the prediction for token c from
        position c - 1, column 0 and padding hold 0. Differentiable."""
        flat = per_token.reshape(-1)  # [T]
        shifted = torch.nn.functional.pad(flat[:-1], (1, 0))  # [T] token t's score, made at t - 1
        shifted = torch.where(self.cols.to(flat.device) == 0, torch.zeros_like(shifted), shifted)  # [T]
        out = torch.zeros(self.padded_shape, dtype=flat.dtype, device=flat.device)  # [b, s]
        return out.index_put((self.rows.to(flat.device), self.cols.to(flat.device)), shifted)  # [b, s]


def pack_rows(input_ids: Tensor, attention_mask: Tensor) -> PackedRows:
    """Pack right-padded rows: input_ids [b, s] int64, attention_mask [b, s] bool with each row's real
    tokens a prefix (what `trainer.batch.build_train_batch` writes). Rows with no real token are refused."""
    lengths = attention_mask.sum(1)  # [b]
    b, s = input_ids.shape
    prefix = torch.arange(s)[None] < lengths[:, None]  # [b, s]
    if not torch.equal(prefix, attention_mask.bool().cpu()):
        raise ValueError("packing needs right-padded rows: each row's attention mask must be a prefix of True")
    if int(lengths.min()) < 1:
        raise ValueError("packing needs at least one real token in every row")
    rows, cols = prefix.nonzero(as_tuple=True)  # [T] each; row-major, so sequence after sequence
    ids = input_ids[rows, cols]  # [T]
    last = cols == lengths[rows] - 1  # [T] a sequence's last token predicts nothing of its own sequence
    targets = torch.where(last, torch.zeros_like(ids), torch.nn.functional.pad(ids[1:], (0, 1)))  # [T]
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # [b + 1]
    return PackedRows(input_ids=ids[None], position_ids=cols[None], targets=targets[None], cu_seqlens=cu_seqlens,
                      max_seqlen=int(lengths.max()), rows=rows, cols=cols, padded_shape=(b, s))
