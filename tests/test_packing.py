"""Sequence packing in the learner (`actors/packing.py`, `learner.pack_sequences`): the token-budget packer's
invariants, the packed layout and its way back, each packed sequence's attention on its own tokens, the
config checks, and a real Megatron-core learner on CPU giving the padded path's logprobs and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from actors.packing import pack_rows, plan_packs
from cluster.network import free_port
from trainer.types import TrainBatch

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.01, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=64, tis_cap=0.0)

# --- the packer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_packs_hold_every_sequence_once_within_budget_and_count(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(40, 200)]) for _ in range(rng.randint(1, 60))]
    budget, spm = rng.choice([64, 100, 256]), rng.choice([1, 3, 16, 1024])
    plan = plan_packs(lengths, budget, spm)
    assert sorted(i for mb in plan for i in mb) == list(range(len(lengths)))  # every sequence exactly once
    for mb in plan:
        assert mb == sorted(mb) and 1 <= len(mb) <= spm
        tokens = sum(lengths[i] for i in mb)
        assert tokens <= budget or len(mb) == 1  # over budget only as a lone sequence longer than it
    for i, n in enumerate(lengths):
        if n > budget:
            assert [i] in plan  # the rule for a sequence longer than the budget: alone, never cut
    assert plan == plan_packs(lengths, budget, spm)  # deterministic


def test_packing_fills_micro_batches_that_padding_would_waste():
    lengths = [100, 10, 12, 90, 8, 95, 11, 9]
    plan = plan_packs(lengths, 128, 64)  # padded under the same budget: 100, 95, 90 alone, then 5 x 12
    assert plan == [[0, 2, 6], [1, 4, 5, 7], [3]]  # 123, 122 and 90 tokens: three micro-batches, not four


def test_packer_refuses_a_missing_budget():
    with pytest.raises(ValueError, match="token budget"):
        plan_packs([3, 4], 0, 16)


# --- the packed layout -------------------------------------------------------------------------------


def test_pack_rows_lays_sequences_end_to_end_and_unpacks_like_the_padded_path():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])  # [b, s] right-padded
    mask = ids != 0
    mask[2] = True  # a row with no padding
    p = pack_rows(ids, mask)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]  # positions restart per sequence
    assert p.targets.tolist() == [[6, 7, 0, 9, 0, 2, 3, 4, 0]]  # the next token of the same sequence
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.cu_seqlens.dtype == torch.int32 and p.max_seqlen == 4
    leaf = torch.arange(1.0, 10.0, requires_grad=True)  # [T]
    scores = leaf[None]  # [1, T]: the score of t's next token
    out = p.unpack(scores)  # [b, s]
    assert out.tolist() == [[0, 1, 2, 0], [0, 4, 0, 0], [0, 6, 7, 8]]
    out.sum().backward()  # a sequence's last position predicts nothing: no gradient reaches it
    assert leaf.grad.tolist() == [1, 1, 0, 1, 0, 1, 1, 1, 0]


def test_pack_rows_refuses_rows_that_are_not_right_padded():
    ids = torch.tensor([[0, 5, 6]])
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(ids, ids != 0)


# --- attention on packed sequences -------------------------------------------------------------------


def test_packed_attention_equals_each_sequence_alone_with_gqa():
    from megatron.core.packed_seq_params import PackedSeqParams

    from actors.sdpa_attention import packed_attention

    gen = torch.Generator().manual_seed(0)
    lengths, heads, groups, dim = [5, 1, 9], 4, 2, 8
    t = sum(lengths)
    q = torch.randn(t, heads, dim, generator=gen)  # [T, np, hn]
    k, v = torch.randn(t, groups, dim, generator=gen), torch.randn(t, groups, dim, generator=gen)  # [T, ng, hn]
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=9, max_seqlen_kv=9)
    out = packed_attention(q, k, v, params, scale=0.3)  # [T, np * hn]
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        kk = k[lo:hi].repeat_interleave(heads // groups, 1)  # [l, np, hn]
        vv = v[lo:hi].repeat_interleave(heads // groups, 1)
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi], kk) * 0.3  # [np, l, l]
        scores = scores.masked_fill(torch.ones(hi - lo, hi - lo, dtype=torch.bool).triu(1), -torch.inf)
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv).reshape(hi - lo, -1)  # [l, np * hn]
        assert torch.allclose(out[lo:hi], expected, atol=1e-5)
    lengths = [3, 17, 4, 30, 8, 9, 1, 16]  # several buckets of several sequences: gradients as each alone
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=30, max_seqlen_kv=30)
    tensors = [torch.randn(sum(lengths), h, dim, generator=gen, requires_grad=True) for h in (heads, groups, groups)]
    weights = torch.randn(sum(lengths), heads * dim, generator=gen)  # [T, np * hn]
    (packed_attention(*tensors, params, scale=0.3) * weights).sum().backward()
    grads = [x.grad.clone() for x in tensors]
    for x in tensors:
        x.grad = None
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        q, k, v = (x[lo:hi].permute(1, 0, 2)[None] for x in tensors)  # [1, heads, l, hn]
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
        (o[0].permute(1, 0, 2).reshape(hi - lo, -1) * weights[lo:hi]).sum().backward()
    assert all(torch.allclose(g, x.grad, atol=1e-5) for g, x in zip(grads, tensors))
    bad = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=9, max_seqlen_kv=9)
    with pytest.raises(ValueError, match="'thd'"):
        packed_attention(q, k, v, bad, scale=0.3)


def test_varlen_attention_is_called_as_the_installed_torch_defines_it(monkeypatch):
    """GPU only, so here with stand-ins: torch 2.13's signature (window_size, scale, enable_gqa) and an
    earlier one (is_causal only: KV heads repeated for GQA, only the default scale)."""
    import math

    import actors.sdpa_attention as sdpa

    calls: list[dict] = []

    def current(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(kv_heads=key.shape[1], scale=scale, window_size=window_size, enable_gqa=enable_gqa))
        return query

    def earlier(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append(dict(kv_heads=key.shape[1], is_causal=is_causal))
        return query

    q, kv = torch.zeros(6, 4, 8), torch.zeros(6, 2, 8)  # [T, np, hn], [T, ng, hn]
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    try:
        for fake in (current, earlier):
            monkeypatch.setattr(sdpa, "_varlen", lambda fake=fake: fake)
            sdpa._varlen_parameters.cache_clear()
            sdpa._varlen_causal(q, kv, kv, cu, 4, 1 / math.sqrt(8))
        assert calls == [dict(kv_heads=2, scale=1 / math.sqrt(8), window_size=(-1, 0), enable_gqa=True),
                         dict(kv_heads=4, is_causal=True)]
        with pytest.raises(ValueError, match="no scale argument"):
            sdpa._varlen_causal(q, kv, kv, cu, 4, 0.5)
    finally:
        sdpa._varlen_parameters.cache_clear()


# --- the switch and its checks ----------------------------------------------------------------------


def test_config_refuses_packing_without_a_token_budget():
    from trainer.config import ConfigError, TrainConfig, apply_overrides

    cfg = TrainConfig()
    with pytest.raises(ConfigError, match="pack_sequences needs learner.tokens_per_microbatch > 0"):
        apply_overrides(cfg, ["learner.pack_sequences=true"]).validate()
    on = apply_overrides(cfg, ["learner.pack_sequences=true", "learner.tokens_per_microbatch=512"]).validate()
    assert on.learner.pack_sequences and not cfg.learner.pack_sequences  # off by default


def test_learner_refuses_packing_it_cannot_run():
    from actors.learner import check_packing

    check_packing(False, tokens_per_microbatch=0, attention="local")  # off: nothing to check
    with pytest.raises(ValueError, match="tokens_per_microbatch > 0"):
        check_packing(True, tokens_per_microbatch=0, attention="sdpa")
    with pytest.raises(ValueError, match="attention='sdpa'"):
        check_packing(True, tokens_per_microbatch=64, attention="local")


# --- a real Megatron-core learner on CPU ------------------------------------------------------------


def _batch(vocab: int) -> TrainBatch:
    """Long-tailed lengths; a response mask with a masked run inside a response (a tool's output) and one
    row with no counted token at all."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([40, 7, 11, 33, 6, 9, 25, 8])
    prompts = torch.tensor([5, 3, 4, 6, 2, 3, 5, 4])
    n, width = len(lengths), int(lengths.max()) + 3  # padding beyond the longest row, too
    pos = torch.arange(width)
    attention = pos[None] < lengths[:, None]  # [N, L]
    response = attention & (pos[None] >= prompts[:, None])  # [N, L]
    response[0, 12:20] = False  # tool output inside a response: attended to, not trained on
    response[3, 10:14] = False
    response[5] = False
    ids = torch.randint(1, vocab, (n, width), generator=gen).masked_fill(~attention, 0)  # [N, L]
    old = torch.where(response, -2.0 - torch.rand(n, width, generator=gen), torch.zeros(()))  # [N, L]
    return TrainBatch(input_ids=ids, attention_mask=attention, response_mask=response,
                      advantages=torch.randn(n, generator=gen), old_logprobs=old, ref_logprobs=old - 0.1,
                      rollout_logprobs=old.clone())


@pytest.mark.slow
def test_packed_logprobs_and_gradients_equal_the_padded_path(tmp_path):
    """One CPU learner (world size 1, gloo), fp32: the same batch padded and packed; about 5 s."""
    from transformers import AutoConfig

    from actors.learner import LearnerWorker, OptimizerSettings
    from examples.tiny_model import write_test_model

    model_dir = write_test_model(tmp_path / "tiny", seed=3, num_layers=2, tie_word_embeddings=True)
    batch = _batch(AutoConfig.from_pretrained(model_dir).vocab_size)
    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), optimizer=OptimizerSettings(lr=0.0, grad_clip=0.0),
                           sequences_per_microbatch=64, tokens_per_microbatch=48, pack_sequences=False,
                           num_threads=2)

    def run(pack: bool) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor], list[list[int]]]:
        worker.schedule.pack = pack
        logprobs = worker.compute_logprobs(batch)
        metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
        grads = {n: p.main_grad.clone() for n, p in worker.model.named_parameters()}
        worker.optim_step()  # lr 0: the weights stay; the gradients are zeroed
        return logprobs, metrics, grads, worker._plan(batch)

    try:
        padded, packed = run(False), run(True)
    finally:
        worker.shutdown()
    assert len(packed[3]) < len(padded[3])  # packing needs fewer micro-batches under the same budget
    assert all(sum(int(batch.attention_mask[i].sum()) for i in mb) <= 48 for mb in packed[3] if len(mb) > 1)
    valid = batch.attention_mask.clone()
    valid[:, 0] = False
    assert torch.allclose(packed[0], padded[0], atol=1e-5) and packed[0][valid].abs().min() > 0
    for name in ("loss", "pg_loss", "kl", "entropy", "ratio_mean"):
        assert packed[1][name] == pytest.approx(padded[1][name], rel=1e-5, abs=1e-7), name
    for name, grad in padded[2].items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(packed[2][name], grad, rtol=1e-4, atol=1e-7), name
