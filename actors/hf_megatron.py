"""Hugging Face <-> Megatron-core weights for dense Llama-family models (Llama 3, Qwen2/2.5, Qwen3).

Everything here is a pure function of tensors and a `ModelShape`: no process groups, so the conversion is
tested by converting shards directly. The learner calls the same functions rank by rank.

Name mapping (HF `model.layers.{i}.` <-> Megatron `decoder.layers.{i - offset}.`, offset = first layer
of the pipeline stage; "col" = split over TP along dim 0, "row" = along dim 1, "rep" = replicated):

| Hugging Face                                   | Megatron                              | TP     |
|------------------------------------------------|---------------------------------------|--------|
| model.embed_tokens.weight                      | embedding.word_embeddings.weight      | vocab  |
| lm_head.weight (untied only)                   | output_layer.weight                   | vocab  |
| model.norm.weight                              | decoder.final_layernorm.weight        | rep    |
| input_layernorm.weight                         | input_layernorm.weight                | rep    |
| self_attn.{q,k,v}_proj.weight                  | self_attention.linear_qkv.weight      | qkv    |
| self_attn.{q,k,v}_proj.bias (Qwen2)            | self_attention.linear_qkv.bias        | qkv    |
| self_attn.o_proj.weight                        | self_attention.linear_proj.weight     | row    |
| self_attn.q_norm.weight / k_norm (Qwen3)       | self_attention.q_layernorm / k_layer. | rep    |
| post_attention_layernorm.weight                | pre_mlp_layernorm.weight              | rep    |
| mlp.gate_proj.weight + mlp.up_proj.weight      | mlp.linear_fc1.weight                 | gate/up|
| mlp.down_proj.weight                           | mlp.linear_fc2.weight                 | row    |

Layouts:
- qkv: Megatron fuses Q, K and V per query group: for each of the `kv_heads` groups, its
  `heads // kv_heads` query heads, then its key head, then its value head (each `head_dim` rows). TP
  splits whole groups, so a rank's shard is a contiguous slice of that fused tensor.
- gate/up: each TP rank holds `cat(gate_shard, up_shard)`, so the full fc1 is NOT `cat(gate, up)`.
- vocab: rows are padded to `padded_vocab` (a multiple of 128 x TP, like Megatron) and split over TP;
  padding rows are zero and are cut off on the way back. The learner masks padded logits.
- tied embeddings: with one pipeline stage the output layer reuses the embedding; with several, the
  last stage holds a copy (`output_layer.weight`) that is loaded from the same HF tensor and never exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PretrainedConfig

VOCAB_DIVISIBLE_BY = 128
"""Megatron pads the vocabulary to a multiple of this times TP, for efficient GEMMs."""

_REPLICATED_LAYER = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
}
"""Per-layer Megatron suffix -> HF suffix of tensors every TP rank holds whole."""

_ROW_LAYER = {
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
"""Per-layer Megatron suffix -> HF suffix of row-parallel weights (split along the input dim)."""


@dataclass(frozen=True)
class ModelShape:
    """What the conversion needs to know about the model and its parallel layout."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    """HF vocabulary rows (embedding rows in the checkpoint)."""
    tied_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    norm_eps: float
    rope_theta: float
    max_positions: int
    tp: int = 1
    pp: int = 1

    @property
    def padded_vocab(self) -> int:
        multiple = VOCAB_DIVISIBLE_BY * self.tp
        return -(-self.vocab_size // multiple) * multiple

    @property
    def layers_per_stage(self) -> int:
        return self.num_layers // self.pp

    def layer_offset(self, pp_rank: int) -> int:
        """Global index of the first layer on pipeline stage `pp_rank` (layers split evenly)."""
        return pp_rank * self.layers_per_stage


def shape_from_hf(hf_config: PretrainedConfig, *, tp: int = 1, pp: int = 1) -> ModelShape:
    """Read a transformers config (LlamaConfig, Qwen2Config, Qwen3Config) into a `ModelShape`."""
    model_type = hf_config.model_type
    if model_type not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"unsupported model_type {model_type!r}: dense llama, qwen2 and qwen3 only")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope.get('rope_type')!r} is not supported yet (default RoPE only)")
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    shape = ModelShape(
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_hidden_size=hf_config.intermediate_size,
        vocab_size=hf_config.vocab_size,
        tied_embeddings=bool(hf_config.tie_word_embeddings),
        # Qwen2 always has q/k/v biases; Llama and Qwen3 say so in `attention_bias`.
        qkv_bias=model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False)),
        qk_norm=model_type == "qwen3",
        norm_eps=hf_config.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        max_positions=hf_config.max_position_embeddings,
        tp=tp,
        pp=pp,
    )
    if getattr(hf_config, "mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported")
    if kv_heads % tp:
        raise ValueError(f"num_key_value_heads={kv_heads} must be divisible by TP={tp}: TP splits whole groups")
    if shape.num_layers % pp:
        raise ValueError(f"num_hidden_layers={shape.num_layers} must be divisible by PP={pp}")
    return shape


# --- Megatron model construction -------------------------------------------------------------------


class _RecomputeFields(TypedDict, total=False):
    """The TransformerConfig fields that choose activation recomputation."""

    recompute_granularity: str
    recompute_method: str
    recompute_num_layers: int


_RECOMPUTE: dict[str, _RecomputeFields] = {
    "none": {},
    # Recompute only the attention core (softmax and dropout over [b, heads, s, s]) in backward.
    "selective": _RecomputeFields(recompute_granularity="selective"),
    # Keep each layer's input only; recompute the whole layer in backward.
    "full": _RecomputeFields(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
}
"""Activation recomputation modes -> TransformerConfig fields."""


def transformer_config(shape: ModelShape, *, dtype: torch.dtype, use_cpu: bool, recompute: str = "none"):
    """The Megatron `TransformerConfig` of a HF Llama-family model (local spec, no dropout).

    `recompute`: activation recomputation, one of `_RECOMPUTE` ("none", "selective", "full").
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        **_RECOMPUTE[recompute],
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.ffn_hidden_size,
        tensor_model_parallel_size=shape.tp,
        pipeline_model_parallel_size=shape.pp,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        qk_layernorm=shape.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # Weights come from the checkpoint: skip Megatron's random init (and its CUDA RNG use).
        perform_initialization=False,
        use_cpu_initialization=use_cpu,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # Our losses are already normalised by the global token count: the schedule must not rescale.
        calculate_per_token_loss=True,
        # Micro-batches are cut to their longest sequence, so pipeline stages exchange shapes.
        variable_seq_lengths=True,
        # Dense model: no MoE runs, but the config check rejects variable lengths with the default.
        moe_token_dispatcher_type="alltoall",
    )


ATTENTION = ("sdpa", "local")
"""Core attention: PyTorch SDPA (FlashAttention on GPUs; actors.sdpa_attention) or Megatron's local one."""


def build_gpt_model(shape: ModelShape, config, *, pre_process: bool, post_process: bool,
                    attention: str = "sdpa"):  # -> GPTModel
    """Megatron's GPTModel with the local (non-Transformer-Engine) layer spec and the chosen core attention."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, not {attention!r}")
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=shape.qk_norm)
    if attention == "sdpa":
        from actors.sdpa_attention import sdpa_attention_class

        spec.submodules.self_attention.submodules.core_attention = sdpa_attention_class()
    return GPTModel(
        config,
        spec,
        vocab_size=shape.padded_vocab,
        max_sequence_length=shape.max_positions,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type="rope",
        rotary_base=int(shape.rope_theta),
    )


# --- the names a pipeline stage holds ---------------------------------------------------------------


def stage_param_names(shape: ModelShape, pp_rank: int) -> list[str]:
    """Megatron (stage-local) names of the parameters on stage `pp_rank`, in a fixed order."""
    names = []
    if pp_rank == 0:
        names.append("embedding.word_embeddings.weight")
    layer = ["input_layernorm.weight", "self_attention.linear_qkv.weight"]
    layer += ["self_attention.linear_qkv.bias"] if shape.qkv_bias else []
    layer += ["self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"] if shape.qk_norm else []
    layer += ["self_attention.linear_proj.weight", "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight",
              "mlp.linear_fc2.weight"]
    for i in range(shape.layers_per_stage):
        names += [f"decoder.layers.{i}.{s}" for s in layer]
    if pp_rank == shape.pp - 1:
        names.append("decoder.final_layernorm.weight")
        if not shape.tied_embeddings or shape.pp > 1:
            names.append("output_layer.weight")
    return names


def exported_names(shape: ModelShape, pp_rank: int) -> list[str]:
    """`stage_param_names` without the last stage's copy of tied embeddings (not a HF tensor)."""
    names = stage_param_names(shape, pp_rank)
    if shape.tied_embeddings:
        names = [n for n in names if n != "output_layer.weight"]
    return names


def _split_layer(name: str) -> tuple[int, str]:
    """'decoder.layers.3.mlp.linear_fc1.weight' -> (3, 'mlp.linear_fc1.weight')."""
    _, _, index, suffix = name.split(".", 3)
    return int(index), suffix


# --- HF -> Megatron ---------------------------------------------------------------------------------


def hf_to_megatron(name: str, hf: Callable[[str], Tensor], shape: ModelShape, *, tp_rank: int,
                   pp_rank: int) -> Tensor:
    """The TP shard `tp_rank` of Megatron parameter `name` (stage-local) built from HF tensors `hf(name)`."""
    tp = shape.tp
    if name == "embedding.word_embeddings.weight":
        return _vocab_shard(hf("model.embed_tokens.weight"), shape, tp_rank)
    if name == "output_layer.weight":
        source = "model.embed_tokens.weight" if shape.tied_embeddings else "lm_head.weight"
        return _vocab_shard(hf(source), shape, tp_rank)
    if name == "decoder.final_layernorm.weight":
        return hf("model.norm.weight")
    local, suffix = _split_layer(name)
    prefix = f"model.layers.{local + shape.layer_offset(pp_rank)}."
    if suffix in _REPLICATED_LAYER:
        return hf(prefix + _REPLICATED_LAYER[suffix])
    if suffix in _ROW_LAYER:
        return hf(prefix + _ROW_LAYER[suffix]).chunk(tp, dim=1)[tp_rank]
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        q, k, v = (hf(f"{prefix}self_attn.{p}_proj.{kind}") for p in "qkv")
        return fuse_qkv(q, k, v, shape).chunk(tp, dim=0)[tp_rank]
    if suffix == "mlp.linear_fc1.weight":
        gate = hf(prefix + "mlp.gate_proj.weight").chunk(tp, dim=0)[tp_rank]  # [F/tp, H]
        up = hf(prefix + "mlp.up_proj.weight").chunk(tp, dim=0)[tp_rank]  # [F/tp, H]
        return torch.cat([gate, up], dim=0)  # [2F/tp, H]
    raise KeyError(f"no HF mapping for Megatron parameter {name!r}")


def _vocab_shard(weight: Tensor, shape: ModelShape, tp_rank: int) -> Tensor:
    padded = weight.new_zeros(shape.padded_vocab, weight.shape[1])  # [Vp, H]
    padded[: weight.shape[0]] = weight
    return padded.chunk(shape.tp, dim=0)[tp_rank].clone()  # [Vp/tp, H]


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, shape: ModelShape) -> Tensor:
    """HF q [heads*D, ...], k and v [groups*D, ...] -> Megatron fused [(heads + 2*groups)*D, ...]."""
    g, d = shape.num_kv_heads, shape.head_dim
    rest = q.shape[1:]
    q = q.reshape(g, (shape.num_heads // g) * d, *rest)  # [G, heads/G*D, ...]
    k = k.reshape(g, d, *rest)  # [G, D, ...]
    v = v.reshape(g, d, *rest)  # [G, D, ...]
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)  # [G*(heads/G+2)*D, ...]


def split_qkv(qkv: Tensor, shape: ModelShape) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of `fuse_qkv` on the full (TP-gathered) tensor."""
    g, d = shape.num_kv_heads, shape.head_dim
    per_group = shape.num_heads // g * d
    rest = qkv.shape[1:]
    grouped = qkv.reshape(g, per_group + 2 * d, *rest)  # [G, heads/G*D + 2D, ...]
    q, k, v = grouped.split([per_group, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


# --- Megatron -> HF ---------------------------------------------------------------------------------


def megatron_to_hf(name: str, shards: list[Tensor], shape: ModelShape, *, pp_rank: int) -> dict[str, Tensor]:
    """HF tensors of Megatron parameter `name` (stage-local), given its shards from every TP rank in order."""
    if name == "embedding.word_embeddings.weight":
        return {"model.embed_tokens.weight": torch.cat(shards, dim=0)[: shape.vocab_size]}
    if name == "output_layer.weight":
        return {"lm_head.weight": torch.cat(shards, dim=0)[: shape.vocab_size]}
    if name == "decoder.final_layernorm.weight":
        return {"model.norm.weight": shards[0]}
    local, suffix = _split_layer(name)
    prefix = f"model.layers.{local + shape.layer_offset(pp_rank)}."
    if suffix in _REPLICATED_LAYER:
        return {prefix + _REPLICATED_LAYER[suffix]: shards[0]}
    if suffix in _ROW_LAYER:
        return {prefix + _ROW_LAYER[suffix]: torch.cat(shards, dim=1)}
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        q, k, v = split_qkv(torch.cat(shards, dim=0), shape)
        return {f"{prefix}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))}
    if suffix == "mlp.linear_fc1.weight":
        halves = [s.chunk(2, dim=0) for s in shards]  # per rank (gate [F/tp, H], up [F/tp, H])
        return {
            prefix + "mlp.gate_proj.weight": torch.cat([h[0] for h in halves], dim=0),
            prefix + "mlp.up_proj.weight": torch.cat([h[1] for h in halves], dim=0),
        }
    raise KeyError(f"no HF mapping for Megatron parameter {name!r}")


def hf_state_to_megatron(hf_state: dict[str, Tensor], shape: ModelShape, *, tp_rank: int,
                         pp_rank: int) -> dict[str, Tensor]:
    """All Megatron parameters of one (tp_rank, pp_rank) shard, from a full HF state dict."""
    return {n: hf_to_megatron(n, hf_state.__getitem__, shape, tp_rank=tp_rank, pp_rank=pp_rank)
            for n in stage_param_names(shape, pp_rank)}


def megatron_states_to_hf(shards: list[list[dict[str, Tensor]]], shape: ModelShape) -> dict[str, Tensor]:
    """A full HF state dict from Megatron shards indexed [pp_rank][tp_rank]."""
    out: dict[str, Tensor] = {}
    for pp_rank, stage in enumerate(shards):
        for name in exported_names(shape, pp_rank):
            out.update(megatron_to_hf(name, [s[name] for s in stage], shape, pp_rank=pp_rank))
    return out


def hf_names_of(name: str, shape: ModelShape, *, pp_rank: int) -> list[str]:
    """The HF names `megatron_to_hf(name, ...)` returns, in the same order, without any tensor."""
    if name == "embedding.word_embeddings.weight":
        return ["model.embed_tokens.weight"]
    if name == "output_layer.weight":
        return ["lm_head.weight"]
    if name == "decoder.final_layernorm.weight":
        return ["model.norm.weight"]
    local, suffix = _split_layer(name)
    prefix = f"model.layers.{local + shape.layer_offset(pp_rank)}."
    if suffix in _REPLICATED_LAYER:
        return [prefix + _REPLICATED_LAYER[suffix]]
    if suffix in _ROW_LAYER:
        return [prefix + _ROW_LAYER[suffix]]
    if suffix.startswith("self_attention.linear_qkv."):
        kind = suffix.rsplit(".", 1)[1]
        return [f"{prefix}self_attn.{p}_proj.{kind}" for p in "qkv"]
    if suffix == "mlp.linear_fc1.weight":
        return [prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"]
    raise KeyError(f"no HF mapping for Megatron parameter {name!r}")
