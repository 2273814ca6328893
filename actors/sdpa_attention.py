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
"""

from __future__ import annotations

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
            if attention_bias is not None or packed_seq_params is not None:
                raise ValueError("SdpaAttention supports neither attention_bias nor packed sequences")
            sq, b, heads, head_dim = query.shape  # query [sq, b, np, hn]; key, value [sk, b, ng, hn]
            q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
            k = key.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
            v = value.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.softmax_scale, enable_gqa=k.shape[1] != heads)  # [b, np, sq, hn]
            return out.permute(2, 0, 1, 3).reshape(sq, b, heads * head_dim)  # [sq, b, np * hn]

    return SdpaAttention
