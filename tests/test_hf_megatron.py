"""HF <-> Megatron conversion, checked on shards directly (no process groups)."""

from __future__ import annotations

import pytest
import torch

from actors.hf_megatron import (
    exported_names,
    fuse_qkv,
    hf_names_of,
    hf_state_to_megatron,
    megatron_states_to_hf,
    megatron_to_hf,
    shape_from_hf,
    split_qkv,
    stage_param_names,
)


def _hf_model(kind: str, tied: bool):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=tied)
    config = {"qwen2": Qwen2Config, "qwen3": lambda **kw: Qwen3Config(head_dim=32, **kw),
              "llama": LlamaConfig}[kind](**common)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # Random non-trivial norms and biases so a mix-up between them cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return config, model


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2), (1, 4)])
def test_round_trip_is_bit_exact(kind, tied, tp, pp):
    config, model = _hf_model(kind, tied)
    hf_state = {k: v.clone() for k, v in model.state_dict().items()}
    if tied:
        hf_state.pop("lm_head.weight", None)
    shape = shape_from_hf(config, tp=tp, pp=pp)
    shards = [[hf_state_to_megatron(hf_state, shape, tp_rank=t, pp_rank=p) for t in range(tp)] for p in range(pp)]
    back = megatron_states_to_hf(shards, shape)
    assert set(back) == set(hf_state)
    for name, tensor in hf_state.items():
        assert torch.equal(back[name], tensor), name
    # the names the learner announces before a pipeline stage ships its tensors
    for p in range(pp):
        for name in exported_names(shape, p):
            got = megatron_to_hf(name, [s[name] for s in shards[p]], shape, pp_rank=p)
            assert list(got) == hf_names_of(name, shape, pp_rank=p)


def test_shards_have_megatron_shapes_and_padding():
    config, model = _hf_model("qwen2", tied=False)
    shape = shape_from_hf(config, tp=2)
    shard = hf_state_to_megatron(model.state_dict(), shape, tp_rank=1, pp_rank=0)
    assert shape.padded_vocab == 512  # 300 rounded up to 128 x TP
    assert shard["embedding.word_embeddings.weight"].shape == (256, 64)
    # rows 300..511 are padding; rank 1 holds rows 256..511, so rows 44.. are zero
    assert torch.count_nonzero(shard["embedding.word_embeddings.weight"][44:]) == 0
    # one KV group per rank: 2 query heads + K + V, head_dim 16
    assert shard["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (4 * 16, 64)
    assert shard["decoder.layers.0.mlp.linear_fc1.weight"].shape == (96, 64)
    assert shard["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 32)


def test_qkv_layout_is_grouped():
    # 4 query heads, 2 groups, head_dim 1: rows labelled by origin
    shape = shape_from_hf(_hf_model("llama", True)[0])
    shape = type(shape)(**{**shape.__dict__, "head_dim": 1, "num_heads": 4, "num_kv_heads": 2})
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    fused = fuse_qkv(q, k, v, shape)
    assert fused.flatten().tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fused, shape), (q, k, v)))


def test_pipeline_stages_partition_layers():
    config, _ = _hf_model("qwen2", tied=True)
    shape = shape_from_hf(config, pp=2)
    first, last = stage_param_names(shape, 0), stage_param_names(shape, 1)
    assert "embedding.word_embeddings.weight" in first and "output_layer.weight" in last
    assert not any(n.startswith("decoder.layers.2") for n in first + last)  # 2 layers per stage, local index


def test_unsupported_layouts_are_rejected():
    config, _ = _hf_model("qwen2", tied=True)
    with pytest.raises(ValueError, match="divisible by TP"):
        shape_from_hf(config, tp=4)
    with pytest.raises(ValueError, match="divisible by PP"):
        shape_from_hf(config, pp=3)
