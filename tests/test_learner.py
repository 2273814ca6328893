"""The Megatron learner on CPU (gloo) as Ray actors, checked against Hugging Face transformers (and, packed,
against its own padded path).

One Ray session per module; one worker group per layout (TP=2, then PP=2, then DP=2), shut down before
the next.
"""

from __future__ import annotations

import math

import pytest
import torch

from actors.learner import OptimizerSettings, lr_at, plan_microbatches
from trainer.grpo import LOSSES, grpo_loss
from trainer.types import TrainBatch

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=0.0)
SETTINGS = OptimizerSettings(lr=1e-3, grad_clip=0.5)
LOGPROB_TOL = 1e-4
PARAM_TOL = 2e-5


# --- pure helpers (no Ray) ---------------------------------------------------------------------


def test_microbatches_cover_every_sequence_once_and_balance_tokens():
    lengths = [30, 5, 28, 6, 29, 4, 31, 7]
    plan = plan_microbatches(lengths, 4)
    assert sorted(i for mb in plan for i in mb) == list(range(8))
    assert all(len(mb) <= 4 for mb in plan)
    loads = [sum(lengths[i] for i in mb) for mb in plan]
    assert max(loads) - min(loads) <= 4


def test_lr_schedule_warmup_then_cosine_to_floor():
    s = OptimizerSettings(lr=1.0, warmup_steps=2, schedule="cosine", total_steps=10)
    assert [lr_at(i, s) for i in range(2)] == [0.5, 1.0]
    assert lr_at(2, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(0.1) and lr_at(50, s) == pytest.approx(0.1)
    assert lr_at(6, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from examples.tiny_model import write_test_model

    return write_test_model(tmp_path_factory.mktemp("tiny"), seed=3, num_layers=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def ray_session(shared_ray):
    """The learner ranks' Ray: the suite's shared one (tests/conftest.py)."""


def _group(model_dir, **layout):
    from actors.learner_group import LearnerGroup

    return LearnerGroup(model_path=str(model_dir), optimizer=SETTINGS, sequences_per_microbatch=2,
                        cpus_per_actor=1, hold_reference=True, **layout)


@pytest.fixture(scope="module")
def batch(model_dir):
    """6 sequences of different lengths, right-padded, with a random 'old policy' and advantages."""
    gen = torch.Generator().manual_seed(0)
    n, length = 6, 24
    lengths = torch.tensor([24, 9, 17, 12, 20, 6])
    prompt = torch.tensor([4, 3, 8, 5, 6, 2])
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    input_ids = torch.randint(1, vocab, (n, length), generator=gen)
    pos = torch.arange(length)
    attention = pos[None] < lengths[:, None]  # [N, L]
    response = attention & (pos[None] >= prompt[:, None])  # [N, L]
    input_ids = input_ids.masked_fill(~attention, 0)
    noise = -2.0 - torch.rand(n, length, generator=gen)
    old = torch.where(response, noise, torch.zeros(()))
    return TrainBatch(input_ids=input_ids, attention_mask=attention, response_mask=response,
                      advantages=torch.randn(n, generator=gen), old_logprobs=old, ref_logprobs=old.clone(),
                      rollout_logprobs=old.clone())


def _hf_model(path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()


def _hf_logprobs(model, batch: TrainBatch) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits  # [N, L, V]
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0)) * batch.attention_mask  # [N, L]


def _hf_step(model, batch: TrainBatch) -> None:
    """One update of the same loss on the HF model in this process: the learner's reference result."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(0, SETTINGS), betas=(SETTINGS.beta1, SETTINGS.beta2),
                            weight_decay=0.0)
    lp = _hf_logprobs(model, batch)
    loss, _ = grpo_loss(lp, old_logprobs=batch.old_logprobs, ref_logprobs=batch.ref_logprobs,
                        rollout_logprobs=batch.rollout_logprobs, advantages=batch.advantages,
                        response_mask=batch.response_mask, num_tokens=batch.num_tokens,
                        num_sequences=batch.num_sequences, **LOSS_KWARGS)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), SETTINGS.grad_clip)
    opt.step()


def _exported(group, directory):
    from safetensors.torch import load_file

    group.export_hf(directory)
    return load_file(str(directory / "model.safetensors"))


def _check_layout(group, model_dir, batch, tmp_path):
    """Logprobs equal HF's; one step equals HF's step; export loads in transformers."""
    hf = _hf_model(model_dir)
    with torch.no_grad():
        expected = _hf_logprobs(hf, batch)
    got = group.compute_logprobs(batch)
    diff = (got - expected).abs().max().item()
    print(f"max |learner - HF| logprob difference: {diff:.2e}")
    assert got.shape == batch.input_ids.shape and diff < LOGPROB_TOL
    assert torch.equal(got[:, 0], torch.zeros(batch.num_sequences))
    assert (group.compute_ref_logprobs(batch) - expected).abs().max().item() < LOGPROB_TOL

    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    metrics = group.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    assert {"entropy", "loss"} <= set(metrics) and metrics["entropy"] > 0
    stats = group.optim_step()
    assert stats["lr"] == SETTINGS.lr and stats["grad_norm"] > 0
    _hf_step(hf, batch)
    after = _exported(group, tmp_path / "export")
    worst = 0.0
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: same tensor as the embedding
        worst = max(worst, (after[name] - tensor).abs().max().item())
        assert not torch.equal(before[name], tensor) or "norm" in name, f"{name} did not move"
    print(f"max |learner - HF| parameter difference after one step: {worst:.2e}")
    assert worst < PARAM_TOL

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    with torch.no_grad():
        assert (_hf_logprobs(reloaded, batch) - group.compute_logprobs(batch)).abs().max().item() < LOGPROB_TOL
    _check_packing(group, batch)


def _check_packing(group, batch):
    """`learner.pack_sequences` on this layout gives the padded path's logprobs, loss and gradient norm (both
    at lr 0, so they see the same weights; the settings are put back afterwards)."""
    import ray

    def configure(worker, pack: bool, lr: float) -> None:  # local: pickled by value
        from dataclasses import replace

        worker.schedule.pack, worker.tokens_per_microbatch = pack, 48 if pack else 0
        worker.settings = replace(worker.settings, lr=lr)

    results = []
    try:
        for pack in (False, True):
            ray.get([w.__ray_call__.remote(configure, pack, 0.0) for w in group.workers])
            logprobs = group.compute_logprobs(batch)
            loss = group.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)["loss"]
            results.append((logprobs, loss, group.optim_step()["grad_norm"]))
    finally:
        ray.get([w.__ray_call__.remote(configure, False, SETTINGS.lr) for w in group.workers])
    (padded, padded_loss, padded_norm), (packed, packed_loss, packed_norm) = results
    assert (packed - padded).abs().max().item() < 1e-5
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5) and packed_norm == pytest.approx(padded_norm, rel=1e-4)


# --- TP = 2 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp2(ray_session, model_dir):
    group = _group(model_dir, tp=2)
    try:
        yield group
    finally:
        group.shutdown()


@pytest.mark.slow
def test_tp2_matches_hf_logprobs_and_step(tp2, model_dir, batch, tmp_path):
    _check_layout(tp2, model_dir, batch, tmp_path)


@pytest.mark.slow
def test_tp2_save_load_resumes_exactly(tp2, batch, tmp_path):
    def step() -> float:
        m = tp2.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
        tp2.optim_step()
        return m["loss"]

    tp2.save(tmp_path / "ckpt")
    first, second = step(), step()
    tp2.load(tmp_path / "ckpt")
    assert step() == first
    assert step() == second


# --- PP = 2 --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pp2_matches_hf_logprobs_and_step(ray_session, model_dir, batch, tmp_path, tp2):
    tp2.shutdown()  # two cores: one group at a time
    group = _group(model_dir, pp=2)
    try:
        _check_layout(group, model_dir, batch, tmp_path)
        # The ipc weight sync's gather: every rank serving an engine (here one per stage) gets every full
        # tensor, in the same order, equal to what rank 0 exports; a rank that serves none gets nothing.
        import ray

        def _gathered(worker, receivers) -> list:  # local: pickled by value, so the ranks need not import tests
            return [(n, t.detach().cpu().clone()) for n, t in worker.hf_state_dict_iter(receivers=receivers)]

        exported = _exported(group, tmp_path / "export")
        both, only_0 = (ray.get([w.__ray_call__.remote(_gathered, receivers) for w in group.workers])
                        for receivers in ((0, 1), (0,)))
        names = [n for n, _ in both[0]]
        assert names == [n for n, _ in both[1]] == [n for n, _ in only_0[0]] and sorted(names) == sorted(exported)
        for per_rank in both:
            assert all(torch.equal(t, exported[n]) for n, t in per_rank)
        assert only_0[1] == []
    finally:
        group.shutdown()


# --- DP = 2 --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dp2_matches_hf_logprobs_and_step(ray_session, model_dir, batch, tmp_path, tp2):
    """Two replicas over gloo: DDP reduce-scatters fp32 grads, the distributed optimizer shards its state
    and all-gathers the params, metrics are reduced over DP; the result equals one HF step on the batch."""
    tp2.shutdown()  # two cores: one group at a time
    group = _group(model_dir, dp=2)
    try:
        _check_layout(group, model_dir, batch, tmp_path)
    finally:
        group.shutdown()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tp1_matches_hf(ray_session, model_dir, batch, tmp_path):
    group = _group(model_dir, tp=1, use_gpu=True)
    try:
        _check_layout(group, model_dir, batch, tmp_path)
    finally:
        group.shutdown()


def test_loss_registry_has_grpo():
    assert LOSSES["grpo"] is grpo_loss


# --- start-up ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_rendezvous_port_taken_before_rank_0_binds_it_starts_the_ranks_again(ray_session, model_dir, batch,
                                                                                  monkeypatch, tp2):
    """The port is chosen free, then taken by another process before rank 0 binds it (what a CI run met):
    the group starts its ranks again on another port instead of failing the run."""
    import socket

    import actors.learner_group as learner_group
    from cluster.network import endpoint_on

    tp2.shutdown()  # two cores: one group at a time
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    chosen: list[int] = []

    def first_taken(options, timeout_s):
        host, port = endpoint_on(options, timeout_s)
        chosen.append(taken if not chosen else port)
        return host, chosen[-1]

    monkeypatch.setattr(learner_group, "endpoint_on", first_taken)
    try:
        group = _group(model_dir)
        try:
            assert len(chosen) == 2 and chosen[0] == taken != chosen[1]
            assert group.compute_logprobs(batch).shape[0] == batch.num_sequences
        finally:
            group.shutdown()
    finally:
        squatter.close()


def test_port_taken_reads_the_bind_error_through_rays_wrapping():
    import errno
    import os

    from cluster.calls import RemoteCallError
    from cluster.network import port_taken

    remote = RuntimeError(f"ray::LearnerWorker.__init__() ...\nOSError: [Errno 98] {os.strerror(errno.EADDRINUSE)}")
    try:
        try:
            raise remote
        except RuntimeError as e:
            raise RemoteCallError("start-up: policy learner rank 0 failed: the actor died") from e
    except RemoteCallError as err:
        assert port_taken(err)
    assert port_taken(OSError(errno.EADDRINUSE, "in use"))
    assert not port_taken(RemoteCallError("start-up: policy learner rank 0 failed: out of memory"))
