"""Megatron core attention through PyTorch's `scaled_dot_product_attention` (FlashAttention on GPUs).

Without Transformer Engine, Megatron-core's local layer spec uses `DotProductAttention`: it repeats the
KV heads, materialises the [b * heads, s, s] score matrix, applies the mask and a softmax, and keeps the
probabilities for backward. PyTorch's SDPA dispatches to FlashAttention-2 (or memory-efficient
attention) on CUDA, computes only the causal half, never stores the s x s matrix and shares KV heads
across query groups (GQA) natively. It is the fastest attention this stack has without Transformer
Engine; on CPU it runs PyTorch's math kernel with the same numerics as the local one.

Masking: the learner's batches are right-padded and causal (`megatron_cpu.causal_mask`), and real tokens
never attend to the pads after them, so the causal flag is the whole mask; the explicit mask Megatron
hands over is not read. Dropout is 0 (RL fine-tuning) and is refused otherwise.

Packed sequences (`learner.pack_sequences`, `actors.packing`): Megatron-core 0.16.1 hands the core attention
`PackedSeqParams(qkv_format="thd")` and query [T, heads, head_dim], key and value [T, kv_heads, head_dim]
(`Attention.forward` squeezes the batch dimension of 1, and has already applied RoPE per sequence with
positions restarting at each `cu_seqlens` boundary); it expects [T, heads * head_dim] back. Each sequence
attends causally to its own tokens only:
- CUDA, bf16 or fp16: PyTorch's variable-length FlashAttention (`torch.nn.attention.varlen.varlen_attn`),
  one kernel over the whole pack, when this torch has it;
- otherwise (the CPU path, fp32, an older torch): SDPA over sequences of similar length laid out as
  right-padded rows (`_bucketed_causal`): each row's real tokens attend to one another only, as on the
  padded path, with a few calls per layer instead of one per sequence.
Megatron's own local `DotProductAttention` refuses packed sequences (it asserts `packed_seq_params is None`).
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import Tensor


def sdpa_attention_class():  # -> type[MegatronModule]
    """The module class (built lazily so that importing this file does not import Megatron)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _build()
    return _CLASS


_CLASS = None


def _build():
    from megatron.core.transformer.module import MegatronModule

    class SdpaAttention(MegatronModule):
        """Drop-in for Megatron's `DotProductAttention` in a layer spec (same constructor and forward)."""

        def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                     attention_dropout: float | None = None, softmax_scale: float | None = None,
                     cp_comm_type: str | None = None, pg_collection=None):
            super().__init__(config=config)
            dropout = config.attention_dropout if attention_dropout is None else attention_dropout
            if dropout:
                raise ValueError("SdpaAttention supports attention_dropout = 0 only")
            if config.context_parallel_size > 1:
                raise ValueError("SdpaAttention does not support context parallelism")
            self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

        def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                    attn_mask_type=None, attention_bias: Tensor | None = None, packed_seq_params=None) -> Tensor:
            if attention_bias is not None:
                raise ValueError("SdpaAttention does not support attention_bias")
            if packed_seq_params is not None:
                return packed_attention(query, key, value, packed_seq_params, scale=self.softmax_scale)
            sq, b, heads, head_dim = query.shape  # query [sq, b, np, hn]; key, value [sk, b, ng, hn]
            q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
            k = key.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
            v = value.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.softmax_scale, enable_gqa=k.shape[1] != heads)  # [b, np, sq, hn]
            return out.permute(2, 0, 1, 3).reshape(sq, b, heads * head_dim)  # [sq, b, np * hn]

    return SdpaAttention


def packed_attention(query: Tensor, key: Tensor, value: Tensor, params, *, scale: float) -> Tensor:
    """Causal attention of each packed sequence on its own tokens: query [T, np, hn], key and value
    [T, ng, hn], `params` a THD `PackedSeqParams` -> [T, np * hn]."""
    if params.qkv_format != "thd":
        raise ValueError(f"SdpaAttention packs the 'thd' format only, not {params.qkv_format!r}")
    padded = (params.cu_seqlens_q_padded, params.cu_seqlens_kv_padded)
    if any(p is not None and not torch.equal(p, params.cu_seqlens_q) for p in padded) or \
            not torch.equal(params.cu_seqlens_q, params.cu_seqlens_kv):
        raise ValueError("SdpaAttention packs self-attention without padding between sequences only "
                         "(cu_seqlens_q = cu_seqlens_kv, no *_padded offsets)")
    t, heads, head_dim = query.shape
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and _varlen() is not None:
        out = _varlen_causal(query, key, value, params.cu_seqlens_q, params.max_seqlen_q, scale)  # [T, np, hn]
    else:
        out = _bucketed_causal(query, key, value, params.cu_seqlens_q.tolist(), scale)  # [T, np, hn]
    return out.reshape(t, heads * head_dim)  # [T, np * hn]


BUCKET_LENGTH_RATIO = 2.0
"""Sequences whose lengths are within this ratio share one SDPA call, right-padded to the longest of them."""


def _bucketed_causal(query: Tensor, key: Tensor, value: Tensor, bounds: list[int], scale: float) -> Tensor:
    """Causal SDPA of each packed sequence on its own tokens, without a variable-length kernel: sequences of
    similar length (within BUCKET_LENGTH_RATIO) are laid out as right-padded rows of one batch, so a row's
    real tokens attend only to one another (the pads trail them, as on the padded path), at most twice the
    attention arithmetic of the sequences alone, and a few calls per layer where one call per sequence
    costs more on a CPU than the arithmetic (its backward especially).

    query [T, np, hn], key and value [T, ng, hn], bounds the cu_seqlens as a list -> [T, np, hn]."""
    starts, lengths = bounds[:-1], [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= BUCKET_LENGTH_RATIO * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    heads = query.shape[1]
    rows, outputs = [], []
    for bucket in buckets:
        width = lengths[bucket[-1]]
        col = torch.arange(width, device=query.device)  # [w]
        start = torch.tensor([starts[i] for i in bucket], device=query.device)  # [g]
        size = torch.tensor([lengths[i] for i in bucket], device=query.device)  # [g]
        real = col[None] < size[:, None]  # [g, w]
        index = torch.where(real, start[:, None] + col[None], 0)  # [g, w] packed row of each slot (pads: any)
        q, k, v = (x[index].permute(0, 2, 1, 3) for x in (query, key, value))  # [g, heads, w, hn]
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != heads)  # [g, np, w, hn]
        rows.append(index[real])  # [t_g]
        outputs.append(o.permute(0, 2, 1, 3)[real])  # [t_g, np, hn]
    out = torch.zeros_like(query)  # [T, np, hn]
    return out.index_put((torch.cat(rows),), torch.cat(outputs))  # [T, np, hn]


def _varlen():
    """PyTorch's variable-length FlashAttention, or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The argument names of this torch's `varlen_attn` (read once)."""
    return frozenset(inspect.signature(_varlen()).parameters)


def _varlen_causal(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                   scale: float) -> Tensor:
    """`varlen_attn`, causal, across the signatures torch has shipped: 2.13 takes `window_size=(-1, 0)` for
    causal, `scale` and `enable_gqa`; earlier releases took `is_causal` and neither of the others (their
    scale is 1/sqrt(head_dim), and KV heads are then repeated for GQA)."""
    varlen = _varlen()
    accepts = _varlen_parameters()
    kwargs: dict = {"window_size": (-1, 0)} if "window_size" in accepts else {"is_causal": True}
    if "scale" in accepts:
        kwargs["scale"] = scale
    elif not math.isclose(scale, 1.0 / math.sqrt(query.shape[-1])):
        raise ValueError(f"this torch's varlen_attn has no scale argument; softmax scale {scale} is not the default")
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in accepts:
            kwargs["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)  # [T, np, hn]
    cu = cu_seqlens.to(device=query.device, dtype=torch.int32)  # [b + 1]
    return varlen(query, key, value, cu, cu, max_seqlen, max_seqlen, **kwargs)  # [T, np, hn]
