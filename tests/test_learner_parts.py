"""Learner pieces without Ray: chunked logprobs, micro-batch plans, reduction placement, and one
LearnerWorker in this process (world size 1, gloo) for master weights, micro-batching and recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from actors.learner import collective_device, plan_microbatches, reduce_metrics_over
from actors.logprobs import vocab_parallel_logprobs
from cluster.network import free_port
from trainer.types import TrainBatch

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=0.0)


def _previous_logprobs(logits, targets, *, vocab_start, vocab_size):
    """The learner's logprobs before chunking (one process, no TP): full fp32 copies, autograd through them."""
    logits = logits.float()
    local_vocab = logits.shape[-1]
    ids = torch.arange(vocab_start, vocab_start + local_vocab)  # [V/tp]
    padding = ids >= vocab_size  # [V/tp]
    logits = logits.masked_fill(padding, float("-inf"))  # [B, S, V/tp]
    peak = logits.detach().amax(dim=-1, keepdim=True)  # [B, S, 1]
    shifted = logits - peak  # [B, S, V/tp]
    log_norm = shifted.exp().sum(dim=-1).log()  # [B, S]
    local = targets - vocab_start  # [B, S]
    here = (local >= 0) & (local < local_vocab)  # [B, S]
    picked = shifted.gather(-1, local.clamp(0, local_vocab - 1).unsqueeze(-1)).squeeze(-1)  # [B, S]
    logprobs = torch.where(here, picked, torch.zeros_like(picked)) - log_norm  # [B, S]
    with torch.no_grad():
        probs = (shifted - log_norm.unsqueeze(-1)).exp()  # [B, S, V/tp], 0 on padding
        finite = torch.where(padding, torch.zeros_like(shifted), shifted)
        entropy = log_norm.detach() - (probs * finite).sum(-1)  # [B, S]
    return logprobs, entropy


def _logits(dtype, vocab=200, padded=256):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, padded, generator=gen)).to(dtype)  # [B, S, Vp]
    targets = torch.randint(0, vocab, (3, 7), generator=gen)  # [B, S]
    return logits, targets, torch.randn(3, 7, generator=gen)  # upstream gradient [B, S]


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_logprobs_equal_the_previous_function_fp32(chunk):
    logits, targets, upstream = _logits(torch.float32)
    a = logits.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(a, targets, vocab_start=0, vocab_size=200, group=None, chunk_tokens=chunk)
    (lp * upstream).sum().backward()
    b = logits.clone().requires_grad_()
    ref_lp, ref_ent = _previous_logprobs(b, targets, vocab_start=0, vocab_size=200)
    (ref_lp * upstream).sum().backward()
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert torch.equal(a.grad[..., 200:], torch.zeros_like(a.grad[..., 200:]))  # padding rows get nothing
    assert not ent.requires_grad


def test_chunked_logprobs_bf16_keeps_dtype_and_matches():
    logits, targets, upstream = _logits(torch.bfloat16)
    a = logits.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(a, targets, vocab_start=0, vocab_size=200, group=None, chunk_tokens=4)
    (lp * upstream).sum().backward()
    b = logits.clone().requires_grad_()
    ref_lp, ref_ent = _previous_logprobs(b, targets, vocab_start=0, vocab_size=200)
    (ref_lp * upstream).sum().backward()
    assert lp.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.equal(a.grad, b.grad)  # both round the same fp32 gradient to bf16


def test_chunked_logprobs_match_log_softmax():
    logits, targets, _ = _logits(torch.float64, vocab=256)
    lp, ent = vocab_parallel_logprobs(logits, targets, vocab_start=0, vocab_size=256, group=None, chunk_tokens=3)
    full = torch.log_softmax(logits, -1)
    assert torch.allclose(lp.double(), full.gather(-1, targets[..., None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent.double(), -(full.exp() * full).sum(-1), atol=1e-4)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_logprobs_at_a_temperature_are_log_softmax_of_scaled_logits_with_its_gradient(temperature):
    """vLLM samples from softmax(logits / T) (and reports those logprobs in processed_logprobs mode): the
    learner's logprobs, entropy and gradient are those of the scaled logits, computed without a copy."""
    logits, targets, upstream = _logits(torch.float64, vocab=256)
    a = logits.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(a, targets, vocab_start=0, vocab_size=256, group=None, chunk_tokens=3,
                                      temperature=temperature)
    (lp * upstream).sum().backward()
    b = logits.clone().requires_grad_()
    full = torch.log_softmax(b / temperature, -1)  # [B, S, V]
    want = full.gather(-1, targets[..., None]).squeeze(-1)  # [B, S]
    (want * upstream).sum().backward()
    assert torch.allclose(lp.double(), want.detach(), atol=1e-5)
    assert torch.allclose(ent.double(), -(full.exp() * full).sum(-1).detach(), atol=1e-4)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    plain, _ = vocab_parallel_logprobs(logits, targets, vocab_start=0, vocab_size=256, group=None)
    assert (plain.double() - want.detach()).abs().max() > 0.1  # the temperature matters at these logits
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(logits, targets, vocab_start=0, vocab_size=256, group=None, temperature=0.0)


def _tp_rank(rank: int, store, logits, targets, upstream, out) -> None:
    """One TP rank in a thread: a gloo group of its own (no default process group in this process)."""
    from datetime import timedelta

    group = dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=30))
    half = logits.shape[-1] // 2
    part = logits[..., rank * half : (rank + 1) * half].clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(part, targets, vocab_start=rank * half, vocab_size=200, group=group,
                                      chunk_tokens=4)
    (lp * upstream).sum().backward()
    out[rank] = (lp.detach(), ent, part.grad)


def test_chunked_logprobs_over_two_tp_ranks_equal_one_rank():
    import threading

    logits, targets, upstream = _logits(torch.float32)  # vocab 200 of 256: rank 1 holds 72 padding rows
    store = dist.HashStore()
    out: dict = {}
    threads = [threading.Thread(target=_tp_rank, args=(r, store, logits, targets, upstream, out)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    a = logits.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(a, targets, vocab_start=0, vocab_size=200, group=None)
    (lp * upstream).sum().backward()
    for rank in (0, 1):
        assert torch.allclose(out[rank][0], lp, atol=1e-5) and torch.allclose(out[rank][1], ent, atol=1e-5)
    assert torch.allclose(torch.cat([out[0][2], out[1][2]], -1), a.grad, atol=1e-6)


# --- micro-batch plans and reductions ------------------------------------------------------------


def test_token_budget_microbatches_respect_budget_and_cover_once():
    lengths = [30, 5, 28, 6, 29, 4, 31, 7, 80]
    plan = plan_microbatches(lengths, 16, tokens_per_microbatch=64)
    assert sorted(i for mb in plan for i in mb) == list(range(len(lengths)))
    for mb in plan:
        padded = len(mb) * max(lengths[i] for i in mb)
        assert padded <= 64 or len(mb) == 1  # an 80-token sequence goes alone
    assert [8] in plan
    assert max(len(mb) for mb in plan_microbatches(lengths, 2, tokens_per_microbatch=1000)) == 2


def test_reductions_run_where_the_backend_needs_them(monkeypatch):
    assert collective_device("gloo") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device("nccl") == torch.device("cuda", 3)
    assert reduce_metrics_over({"loss": 1.5}, {"loss": "sum"}, None) == {"loss": 1.5}


# --- one LearnerWorker in this process ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from examples.tiny_model import write_test_model

    return write_test_model(tmp_path_factory.mktemp("tiny"), seed=5, num_layers=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def batch(model_dir):
    from transformers import AutoConfig

    from examples.gpu_check import make_batch

    return make_batch(6, 24, AutoConfig.from_pretrained(model_dir).vocab_size, seed=0)


def _worker(model_dir, **kwargs):
    from actors.learner import LearnerWorker

    return LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                         model_path=str(model_dir), num_threads=2, **kwargs)


def _loss_and_grad_norm(worker, batch: TrainBatch) -> tuple[float, float]:
    metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    return metrics["loss"], worker.optim_step()["grad_norm"]


@pytest.mark.slow
def test_bf16_model_keeps_fp32_master_weights_on_cpu(model_dir, batch):
    from actors.learner import OptimizerSettings

    worker = _worker(model_dir, dtype="bfloat16", optimizer=OptimizerSettings(lr=1e-6))
    try:
        before = {n: m.clone() for n, m in worker.master_weights().items()}
        assert all(p.dtype == torch.bfloat16 for p in worker.model.parameters())
        assert all(m.dtype == torch.float32 for m in before.values())
        _loss_and_grad_norm(worker, batch)
        after = worker.master_weights()
        moved = sum(int(((after[n] - before[n]).abs() > 1e-7).sum()) for n in before)
        total = sum(m.numel() for m in before.values())
        assert moved / total > 0.9  # a 1e-6 step survives in fp32 ...
        params = dict(worker.model.named_parameters())
        assert all(torch.equal(params[n], after[n].to(torch.bfloat16)) for n in after)  # ... and bf16 rounds it
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_microbatching_and_recomputation_do_not_change_loss_or_gradient(model_dir, batch):
    from actors.learner import OptimizerSettings

    settings = OptimizerSettings(lr=0.0, grad_clip=0.0)  # lr 0: the weights stay, the grad norm is reported
    worker = _worker(model_dir, optimizer=settings, sequences_per_microbatch=6)
    try:
        whole = _loss_and_grad_norm(worker, batch)
        worker.spm = 2
        pairs = _loss_and_grad_norm(worker, batch)
        worker.spm, worker.tokens_per_microbatch = 6, 40
        budget = _loss_and_grad_norm(worker, batch)
        assert len(worker._plan(batch)) > 1
    finally:
        worker.shutdown()
    worker = _worker(model_dir, optimizer=settings, sequences_per_microbatch=2, recompute="full")
    try:
        recomputed = _loss_and_grad_norm(worker, batch)
    finally:
        worker.shutdown()
    for loss, norm in (pairs, budget, recomputed):
        assert loss == pytest.approx(whole[0], rel=1e-5, abs=1e-7)
        assert norm == pytest.approx(whole[1], rel=1e-5)
