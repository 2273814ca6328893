"""GPU check of the learner: `LearnerWorker` built directly (world size 1), no Ray, no vLLM, nothing downloaded.

    make gpu-check                                  # on a machine with one CUDA GPU
    python -m examples.gpu_check --cpu-smoke        # the same checks, tiny shapes, on a CPU (CI)

Each check prints PASS or FAIL with its figure; the script exits 1 on any FAIL and writes every figure
to a JSON file (`--out`). The checks:

- setup: bf16 model in Megatron's DistributedDataParallel with its DistributedOptimizer (fp32 main
  params); on CUDA the model-parallel RNG tracker is seeded; neither Ray nor vLLM was imported; a metric
  reduction over the DP group runs on the device its backend needs (CUDA for NCCL).
- logprobs: the learner's per-token logprobs against transformers' Qwen2 (fp32) on the same weights,
  within bf16 tolerance.
- step: one GRPO update at lr 1e-6 moves the fp32 main weights (bf16 alone could not hold such a step)
  and agrees with the same update done in fp32 by transformers + torch AdamW.
- precision: a few GRPO updates of the learner in bf16 and in fp16 (lr 1e-4): every loss finite, the fp32
  main weights move; fp16 goes through Megatron's dynamic loss scaler (the schedule's `grad_scale_func`
  set, the scale and its trackers in the optimizer state a checkpoint saves, skipped updates counted),
  bf16 has no scaler.
- throughput: forward-backward tokens/s and MFU of a randomly initialised Qwen2.5-0.5B-shaped model
  (hidden 896, 24 layers, 14 heads, 2 KV heads, FFN 4864, vocab 151936), and peak GPU memory; with SDPA
  attention (the default), with full activation recomputation, and with Megatron's local attention.
- packing (`examples/gpu_check_packing.py`): the small learner's logprobs packed (`learner.pack_sequences`)
  equal the padded ones within bf16 noise; tokens/s and MFU of a Qwen2.5-1.5B-shaped learner on a batch
  with long-tailed response lengths, padded (by count, by token budget) and packed.
- cuda_ipc_round_trip (colocation): learner rank 0's weight sender (`actors.weight_sync.WeightSender`, ipc
  backend, small buckets) streams the learner's gathered HF tensors as CUDA IPC handles through its control
  store to a second process on the same GPU, which reads them as the rollout worker does and rebuilds
  each tensor the way vLLM 0.32's IPC receiver does; the sha256 of every parameter it rebuilt equals what
  the sender sent. Skipped without CUDA.
- offload (colocation): after the timed steps of the default learner, `offload()` moves parameters, fp32
  main params and Adam state to pinned host memory and frees the gradient buffers; allocated and reserved
  GPU memory before and after, the time each way, every byte back in place after `onload()`, one
  more update that runs, and the time of a second round (a colocated run's steady state: the pinned host
  buffers of the first are reused).
- nccl_abort_rebuild (GPU only; weight sync's failure path, `actors.weight_sync.abort_nccl`): an NCCL
  group of one rank broadcasts, is aborted the way a failed push aborts rank 0's communicator, and is
  formed anew, three times; each broadcast delivers, the stream takes a kernel after every abort, and
  the device's free memory after the third abort says whether aborted communicators were freed. vLLM is
  absent here, so the group is torch's `ProcessGroupNCCL` (`abort()`: ncclCommAbort) in place of vLLM's
  `PyNcclCommunicator` (`destroy()`: ncclCommAbort); a communicator of one rank cannot show a broadcast
  held by a dead peer, only that abort and rebuild work and leave the stream usable.

The models are randomly initialised with transformers on the spot and saved as HF directories in a
temporary folder, with weights rounded to bf16 so that the bf16 learner and the fp32 reference start
from the same values.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.network import free_port

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=4096, tis_cap=0.0)
STEP_LR = 1e-6
"""The issue's learning rate: far below half the bf16 spacing of typical weights."""

LOGPROB_MEAN_TOL = 0.02
"""Mean |learner - HF fp32| logprob over valid tokens. bf16 keeps 8 significant bits (~0.4% per value);
through a few layers that gives errors of order 1e-2 on logprobs of magnitude ~log(V)."""
LOGPROB_MAX_TOL = 0.25
"""Worst single token: rare tokens with large |logit| carry the largest absolute bf16 error."""
MOVED_MIN_FRACTION = 0.9
"""Adam's first step moves every weight with a non-negligible gradient by about lr; bf16 params alone
would keep nearly all of them (spacing ~1e-4 at |w| ~ 0.02)."""
UPDATE_COSINE_MIN = 0.9
"""Cosine between the learner's update of the main weights and the fp32 reference update: Adam's first
step is ~lr * sign(grad), so it differs only where bf16 and fp32 gradients disagree in sign."""
GRAD_NORM_RTOL = 0.05
"""Relative difference of the global grad norm (bf16 compute, fp32 reduction) from the fp32 reference."""

THROUGHPUT_VARIANTS: dict[str, dict] = {
    "": dict(attention="sdpa"),
    "_full_recompute": dict(attention="sdpa", recompute="full"),
    "_local_attention": dict(attention="local"),
}
"""Learner settings timed: the default (SDPA attention), with full activation recomputation (less
memory, one more forward), and Megatron's local attention (the baseline SDPA replaces)."""

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak by GPU name (SXM parts), for MFU."""


@dataclass(frozen=True)
class Sizes:
    """Shapes and batch sizes of one mode (GPU or CPU smoke)."""

    small: dict
    small_batch: tuple[int, int]
    """(sequences, max length) of the logprob and step checks."""
    big: dict
    big_batch: tuple[int, int]
    """(sequences, length) of one timed forward-backward."""
    tokens_per_microbatch: int
    timed_iters: int


QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
GPU = Sizes(small=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=704, vocab_size=4096, tie_word_embeddings=True),
            small_batch=(8, 128), big=QWEN25_05B, big_batch=(16, 1024), tokens_per_microbatch=8192, timed_iters=3)
CPU_SMOKE = Sizes(small=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=128, vocab_size=500, tie_word_embeddings=True),
                  small_batch=(6, 24), big=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                num_key_value_heads=1, intermediate_size=128, vocab_size=500,
                                                tie_word_embeddings=True),
                  big_batch=(4, 32), tokens_per_microbatch=64, timed_iters=1)


class Report:
    """Collects PASS/FAIL lines and figures."""

    def __init__(self) -> None:
        self.figures: dict = {}
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, figure: str, **values) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<28} {figure}", flush=True)
        self.figures[name] = dict(ok=bool(ok), **values)
        if not ok:
            self.failed.append(name)

    def skip(self, name: str, why: str) -> None:
        print(f"SKIP  {name:<28} {why}", flush=True)
        self.figures[name] = dict(ok=True, skipped=True, why=why)


# --- models and batches ---------------------------------------------------------------------------


def write_qwen2(directory: Path, shape: dict, *, seed: int, device: str) -> Path:
    """A randomly initialised Qwen2 saved as a HF directory, weights rounded to bf16 (stored as fp32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def make_batch(n: int, length: int, vocab: int, *, seed: int):  # -> TrainBatch
    """n right-padded sequences of lengths in [length/2, length], prompt = first quarter, random advantages."""
    from trainer.types import TrainBatch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen)
    lengths[0] = length
    pos = torch.arange(length)
    attention = pos[None] < lengths[:, None]  # [N, L]
    response = attention & (pos[None] >= (lengths // 4)[:, None])  # [N, L]
    ids = torch.randint(1, vocab, (n, length), generator=gen).masked_fill(~attention, 0)  # [N, L]
    old = torch.where(response, -2.0 - torch.rand(n, length, generator=gen), torch.zeros(()))  # [N, L]
    return TrainBatch(input_ids=ids, attention_mask=attention, response_mask=response,
                      advantages=torch.randn(n, generator=gen), old_logprobs=old, ref_logprobs=old.clone(),
                      rollout_logprobs=old.clone())


def hf_logprobs(model, batch, device) -> torch.Tensor:
    """[N, L] fp32 logprobs of transformers' model, aligned like the learner's (position 0 and padding 0)."""
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask.long()).logits  # [N, L, V]
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, L-1]
    return torch.nn.functional.pad(lp, (1, 0)) * mask  # [N, L]


@contextlib.contextmanager
def learner(model_dir: Path, dtype: str = "bfloat16", **kwargs):
    """A world-size-1 LearnerWorker (bf16 policy unless told), shut down afterwards."""
    from actors.learner import LearnerWorker

    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), dtype=dtype, num_threads=torch.get_num_threads(),
                           **kwargs)
    try:
        yield worker
    finally:
        worker.shutdown()


def release_memory() -> None:
    """DDP hooks and the optimizer hold reference cycles: collect them so peak memory is per learner."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- checks ---------------------------------------------------------------------------------------


def check_setup(report: Report, worker) -> None:
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(worker.optimizer, "chained_optimizers", [worker.optimizer])
    masters = worker.master_weights()
    ok = (isinstance(worker.ddp, DistributedDataParallel) and all(isinstance(o, DistributedOptimizer) for o in inner)
          and all(p.dtype == torch.bfloat16 for p in worker.model.parameters())
          and all(m.dtype == torch.float32 for m in masters.values()))
    report.check("distributed_optimizer", ok, f"{type(worker.ddp).__name__} + {type(inner[0]).__name__}, "
                 f"params {worker.dtype}, main params fp32", optimizer=type(inner[0]).__name__)
    if worker.use_gpu:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        states = get_cuda_rng_tracker().get_states()
        report.check("cuda_rng_tracker", "model-parallel-rng" in states, f"states {sorted(states)}")
    check_dp_reduction(report, worker)


def check_dp_reduction(report: Report, worker) -> None:
    """The DP group's all-reduce on `collective_device` of its backend; a CPU tensor on NCCL is reported
    (the failure mode that placement avoids), not required."""
    import torch.distributed as dist

    from actors.learner import collective_device

    group = worker.ps.get_data_parallel_group()
    backend = dist.get_backend(group)
    values = torch.tensor([1.5, 2.0], dtype=torch.float64, device=collective_device(backend))  # [M]
    dist.all_reduce(values, group=group)
    cpu_refused = None
    if backend == "nccl":
        try:
            dist.all_reduce(torch.ones(1, dtype=torch.float64), group=group)
            cpu_refused = False
        except (RuntimeError, ValueError):
            cpu_refused = True
    ok = values.tolist() == [1.5, 2.0] and values.device.type == ("cuda" if backend == "nccl" else "cpu")
    report.check("dp_reduction_device", ok, f"{backend} all-reduce of metrics on {values.device}"
                 + (f"; a CPU tensor on NCCL refused: {cpu_refused}" if cpu_refused is not None else ""),
                 backend=backend, device=str(values.device), cpu_tensor_refused=cpu_refused)


def check_logprobs(report: Report, worker, hf, batch, device) -> None:
    with torch.no_grad():
        expected = hf_logprobs(hf, batch, device).cpu()
    got = worker.compute_logprobs(batch)
    valid = batch.attention_mask.clone()
    valid[:, 0] = False
    diff = (got - expected).abs()[valid]
    mean, worst = diff.mean().item(), diff.max().item()
    report.check("logprobs_vs_transformers", mean < LOGPROB_MEAN_TOL and worst < LOGPROB_MAX_TOL,
                 f"mean |diff| {mean:.2e} (< {LOGPROB_MEAN_TOL}), max {worst:.2e} (< {LOGPROB_MAX_TOL}) "
                 f"over {int(valid.sum())} tokens", mean_abs_diff=mean, max_abs_diff=worst)


def reference_update(hf, batch, device) -> tuple[dict[str, torch.Tensor], float]:
    """The same GRPO update in fp32 with transformers + torch AdamW: (HF name -> weight delta, grad norm)."""
    from actors.learner import ADAM_EPS
    from trainer.grpo import grpo_loss

    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    opt = torch.optim.AdamW(hf.parameters(), lr=STEP_LR, eps=ADAM_EPS, weight_decay=0.0)
    lp = hf_logprobs(hf.train(), batch, device)
    on = {k: getattr(batch, k).to(device) for k in ("old_logprobs", "ref_logprobs", "rollout_logprobs",
                                                     "advantages", "response_mask")}
    loss, _ = grpo_loss(lp, **on, num_tokens=batch.num_tokens, num_sequences=batch.num_sequences, **LOSS_KWARGS)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0).item()
    opt.step()
    return {n: (p.detach() - before[n]).cpu() for n, p in hf.named_parameters()}, norm


def learner_update_hf(worker, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The learner's change of its fp32 main weights, in HF names and layouts (TP = PP = 1)."""
    from actors import hf_megatron

    out = {}
    for name, main in worker.master_weights().items():
        if name == "output_layer.weight":
            continue  # a tied copy (PP > 1 only)
        delta = (main.float() - before[name]).cpu()
        out.update(hf_megatron.megatron_to_hf(name, [delta], worker.shape, pp_rank=0))
    return out


def check_step(report: Report, worker, hf, batch, device) -> None:
    before = {n: m.detach().float().clone() for n, m in worker.master_weights().items()}
    bf16_before = {n: p.detach().clone() for n, p in worker.model.named_parameters()}
    worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    stats = worker.optim_step()
    got = learner_update_hf(worker, before)
    expected, ref_norm = reference_update(hf, batch, device)
    moved = sum(int((d.abs() > STEP_LR / 10).sum()) for d in got.values())
    total = sum(d.numel() for d in got.values())
    bf16_moved = sum(int((p.detach() != bf16_before[n]).sum()) for n, p in worker.model.named_parameters())
    report.check("step_moves_fp32_main_weights", moved / total > MOVED_MIN_FRACTION,
                 f"{moved / total:.1%} of main weights moved by > lr/10 at lr {STEP_LR} "
                 f"(bf16 params that changed: {bf16_moved / total:.1%})",
                 moved_fraction=moved / total, bf16_changed_fraction=bf16_moved / total)
    names = sorted(expected)
    a = torch.cat([got[n].flatten().double() for n in names])
    b = torch.cat([expected[n].flatten().double() for n in names])
    cosine = (a @ b / (a.norm() * b.norm())).item()
    rel_norm = abs(stats["grad_norm"] - ref_norm) / ref_norm
    report.check("step_vs_fp32_reference", cosine > UPDATE_COSINE_MIN and rel_norm < GRAD_NORM_RTOL,
                 f"update cosine {cosine:.4f} (> {UPDATE_COSINE_MIN}), grad norm {stats['grad_norm']:.4g} vs "
                 f"{ref_norm:.4g} (rel {rel_norm:.1e} < {GRAD_NORM_RTOL}), max |delta| "
                 f"{a.abs().max().item():.2e} vs {b.abs().max().item():.2e}",
                 update_cosine=cosine, grad_norm=stats["grad_norm"], ref_grad_norm=ref_norm,
                 grad_norm_rel_diff=rel_norm)


PRECISION_STEPS = 3
"""GRPO updates per dtype in the precision check."""
PRECISION_LR = 1e-4
"""Large enough that every step moves the fp32 main weights visibly."""


def check_precision_steps(report: Report, model_dir: Path, batch) -> None:
    """bf16 and fp16 learners each take PRECISION_STEPS updates: losses finite, main weights moved; fp16 with
    Megatron's loss scaler wired into the schedule and its state in the optimizer state, bf16 without."""
    from actors.learner import OptimizerSettings
    from actors.learner_checkpoint import optimizer_state

    for dtype in ("bfloat16", "float16"):
        release_memory()
        with learner(model_dir, dtype=dtype, optimizer=OptimizerSettings(lr=PRECISION_LR, grad_clip=1.0),
                     sequences_per_microbatch=4) as worker:
            before = {n: m.detach().float().clone() for n, m in worker.master_weights().items()}
            steps = []
            for _ in range(PRECISION_STEPS):
                metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
                steps.append(metrics | worker.optim_step())
            moved = sum(int((m.detach().float() != before[n]).sum()) for n, m in worker.master_weights().items())
            total = sum(t.numel() for t in before.values())
            losses = [s["loss"] for s in steps]
            finite = all(math.isfinite(v) for v in losses)
            scalers = optimizer_state(worker.optimizer)["grad_scalers"]
            scale_func = worker.model.config.grad_scale_func is not None
            skipped = int(sum(s.get("update_skipped", 0.0) for s in steps))
            params = {p.dtype for p in worker.model.parameters()} == {getattr(torch, dtype)}
            if dtype == "float16":
                scales = [s["loss_scale"] for s in steps]
                state = scalers[0] or {}
                ok = finite and params and moved > 0 and scale_func and skipped < PRECISION_STEPS and "scale" in state
                figure = (f"losses {', '.join(f'{v:.4g}' for v in losses)}; loss scale {scales}, "
                          f"{skipped} of {PRECISION_STEPS} updates skipped; scaler state "
                          f"{ {k: float(v) for k, v in state.items()} }; {moved / total:.1%} of main weights moved")
                report.check("fp16_steps_with_loss_scaler", ok, figure, losses=losses, loss_scales=scales,
                             skipped=skipped, moved_fraction=moved / total,
                             scaler_state={k: float(v) for k, v in state.items()})
            else:
                ok = finite and params and moved > 0 and not scale_func and all(s is None for s in scalers)
                report.check("bf16_steps", ok, f"losses {', '.join(f'{v:.4g}' for v in losses)}; no loss scaler; "
                             f"{moved / total:.1%} of main weights moved", losses=losses, moved_fraction=moved / total)


def matmul_flops_per_token(shape: dict, seq_len: int) -> float:
    """Model FLOPs per token, forward + backward: 6 x matmul params (lm_head included) + attention.

    Attention counts 4 x s x hidden FLOPs per token per layer forward (QK^T and PV over the full s x s,
    as PaLM's MFU formula does), x3 for forward + backward. The same count serves every variant, so
    recomputation's extra forward and causal skipping do not change it: MFU compares useful work.
    """
    h, f, v, layers = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["num_hidden_layers"]
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * f  # qkv, o_proj, gate/up/down
    params = layers * per_layer + h * v  # lm_head matmul (tied or not, it is one GEMM)
    return 6 * params + 12 * layers * seq_len * h


def check_throughput(report: Report, worker, shape: dict, sizes: Sizes, suffix: str) -> None:
    n, length = sizes.big_batch
    batch = make_batch(n, length, shape["vocab_size"], seed=7)
    batch = batch.replace(attention_mask=torch.ones_like(batch.attention_mask),
                          response_mask=torch.ones_like(batch.response_mask).index_fill(1, torch.tensor([0]), False))
    sync = torch.cuda.synchronize if worker.use_gpu else (lambda: None)

    def fb() -> float:
        sync()
        start = time.perf_counter()
        worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
        sync()
        elapsed = time.perf_counter() - start
        worker.optim_step()
        return elapsed

    fb()  # warm-up: kernels, buffers, allocator
    if worker.use_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = [fb() for _ in range(sizes.timed_iters)]
    seconds = min(times)
    tokens = n * length
    tps = tokens / seconds
    flops = matmul_flops_per_token(shape, length) * tps
    name = torch.cuda.get_device_name() if worker.use_gpu else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    mfu = flops / peak if peak else None
    params = sum(p.numel() for p in worker.model.parameters())
    report.check("forward_backward_throughput" + suffix, math.isfinite(tps) and tps > 0,
                 f"{tps:,.0f} tokens/s ({n} x {length} tokens in {seconds:.3f} s, {params / 1e6:.0f}M params), "
                 f"{flops / 1e12:.1f} TFLOP/s" + (f", MFU {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s" if mfu else ""),
                 tokens_per_s=tps, seconds=seconds, tokens=tokens, params=params, tflops=flops / 1e12, mfu=mfu,
                 device=name, microbatch_tokens=sizes.tokens_per_microbatch)
    if worker.use_gpu:
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
        total_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
        report.check("peak_memory" + suffix, peak_gb < total_gb, f"{peak_gb:.1f} GiB of {total_gb:.0f} GiB (max allocated "
                     "during timed forward-backward + step)", peak_gib=peak_gb, total_gib=total_gb)


OFFLOAD_LEFT_MAX_FRACTION = 0.1
"""After an offload at most this fraction of the state's bytes may remain allocated on the GPU (what
remains: RoPE tables, RNG state, the allocator's bookkeeping)."""


def device_state_bytes(worker) -> list[torch.Tensor]:
    """Host copies of every storage an offload moves (params, fp32 main params, Adam state)."""
    from actors.offload import storage_bytes, unique_storages

    keep, _ = worker._device_state()
    return [storage_bytes(s).cpu().clone() for s in unique_storages(keep, worker.device).values()]


def _size(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.2f} MiB"


def check_offload(report: Report, worker, vocab: int) -> None:
    """GPU memory before and after `offload`, the state bit for bit after `onload`, one more update."""
    from actors.offload import storage_bytes, unique_storages

    gib = 2**30
    sync = torch.cuda.synchronize if worker.use_gpu else (lambda: None)

    def timed(call):
        """(result, seconds) of one offload or onload, the device idle before and after."""
        sync()
        start = time.perf_counter()
        result = call()
        sync()
        return result, time.perf_counter() - start

    before = device_state_bytes(worker)
    allocated = (torch.cuda.memory_allocated() / gib, torch.cuda.memory_reserved() / gib) if worker.use_gpu else (0, 0)
    moved, offload_s = timed(worker.offload)
    keep, discard = worker._device_state()
    emptied = not unique_storages(keep + discard, worker.device)  # no storage with bytes left on the device
    after = (torch.cuda.memory_allocated() / gib, torch.cuda.memory_reserved() / gib) if worker.use_gpu else (0, 0)
    _, onload_s = timed(worker.onload)
    restored = [storage_bytes(s).cpu() for s in unique_storages(worker._device_state()[0], worker.device).values()]
    identical = len(restored) == len(before) and all(torch.equal(a, b) for a, b in zip(restored, before))
    freed_ok = after[0] <= allocated[0] - (1 - OFFLOAD_LEFT_MAX_FRACTION) * moved["offloaded_gib"] \
        if worker.use_gpu else moved["offloaded_gib"] > 0
    batch = make_batch(4, 32, vocab, seed=11)
    metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    stats = worker.optim_step()
    runs = math.isfinite(metrics["loss"]) and math.isfinite(stats["grad_norm"])
    # A colocated run offloads every step: from the second round on the pinned host buffers are reused.
    _, offload2_s = timed(worker.offload)
    _, onload2_s = timed(worker.onload)
    report.check("offload_onload", emptied and freed_ok and identical and runs,
                 (f"GPU allocated {allocated[0]:.2f} -> {after[0]:.2f} GiB, reserved {allocated[1]:.2f} -> "
                  f"{after[1]:.2f} GiB; " if worker.use_gpu else "CPU: ") +
                 f"{_size(moved['offloaded_gib'])} freed, {_size(moved['host_gib'])} to host in {offload_s:.2f} s, "
                 f"back in {onload_s:.2f} s (next round: {offload2_s:.2f} s and {onload2_s:.2f} s, host buffers "
                 f"reused); storages emptied: {emptied}; state bit-identical: {identical}; next update runs: {runs}",
                 allocated_before_gib=allocated[0], allocated_after_gib=after[0], reserved_before_gib=allocated[1],
                 reserved_after_gib=after[1], freed_gib=moved["offloaded_gib"], host_gib=moved["host_gib"],
                 offload_s=offload_s, onload_s=onload_s, offload_again_s=offload2_s, onload_again_s=onload2_s,
                 bit_identical=identical)


def time_variant(report: Report, model_dir: Path, sizes: Sizes, suffix: str, variant: dict) -> None:
    from actors.learner import OptimizerSettings

    with learner(model_dir, optimizer=OptimizerSettings(lr=STEP_LR), sequences_per_microbatch=1024,
                 tokens_per_microbatch=sizes.tokens_per_microbatch, **variant) as worker:
        check_throughput(report, worker, sizes.big, sizes, suffix)
        if not suffix:  # the default learner, its Adam state filled by the timed steps
            check_offload(report, worker, sizes.big["vocab_size"])


NCCL_ROUNDS = 3
"""Groups formed and aborted in turn by the NCCL check (a run's first group and two replacements)."""
NCCL_LEAK_TOL_BYTES = 64 * 2**20
"""Free device memory may drop by less than this from the first abort to the last (allocator noise)."""


class AbortingGroup:
    """What `abort_nccl` calls on vLLM's PyNcclCommunicator (`destroy`: ncclCommAbort), on torch's group."""

    def __init__(self, group) -> None:
        self.group = group

    def destroy(self) -> None:
        self.group.abort()


def check_nccl_abort_rebuild(report: Report) -> None:
    from datetime import timedelta

    from torch.distributed import PrefixStore, ProcessGroupNCCL, TCPStore

    from actors.weight_sync import abort_nccl, wait_cuda

    store = TCPStore("127.0.0.1", free_port(), 1, True, timeout=timedelta(seconds=60))
    delivered, free_after = [], []
    error = ""
    started = time.perf_counter()
    try:
        for round_ in range(NCCL_ROUNDS):
            group = ProcessGroupNCCL(PrefixStore(f"round{round_}", store), 0, 1, ProcessGroupNCCL.Options())
            value = torch.full((1 << 20,), float(round_ + 1), device="cuda")  # [M]
            group.broadcast(value, 0).wait()
            wait_cuda(60.0, f"broadcast of round {round_}")
            delivered.append(float(value[0].item()))
            abort_nccl(AbortingGroup(group), 60.0)  # also waits for the stream, as after a failed push
            after = torch.ones(1024, device="cuda").sum()  # a kernel on the stream the group used
            wait_cuda(60.0, f"a kernel after abort {round_}")
            delivered[-1] *= float(after.item() == 1024)
            del group
            gc.collect()
            free_after.append(torch.cuda.mem_get_info()[0])
    except Exception as e:  # reported as the check's failure, with the rounds that did pass
        error = f"{type(e).__name__}: {e}"
    drop = free_after[0] - free_after[-1] if len(free_after) == NCCL_ROUNDS else 0
    ok = not error and delivered == [float(r + 1) for r in range(NCCL_ROUNDS)] and drop < NCCL_LEAK_TOL_BYTES
    report.check("nccl_abort_rebuild", ok, error or f"{NCCL_ROUNDS} groups formed, broadcast, aborted; free memory "
                 f"after the first and last abort differs by {drop / 2**20:.1f} MiB "
                 f"({time.perf_counter() - started:.1f} s)", rounds=len(delivered), free_drop_bytes=drop,
                 error=error)


IPC_BUCKET_BYTES = 2**20
"""Small buckets, so the round trip covers many buckets and the sender's wait for each acknowledgement."""
IPC_TIMEOUT_S = 120.0


def rebuild_like_vllm(handle: dict, device_index: int) -> torch.Tensor:
    """One tensor as vLLM 0.32's `IPCWeightTransferEngine.receive_weights` (unpacked) rebuilds it: its GPU's
    uuid picks the arguments, argument 6 becomes its own device index, torch's `rebuild_cuda_tensor` opens
    the sender's block. (vLLM itself is not installed where this runs.)"""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    if uuid not in handle:
        raise ValueError(f"IPC handle not found for GPU UUID {uuid}; available: {list(handle)}")
    args = list(handle[uuid])
    args[6] = device_index
    return rebuild_cuda_tensor(*args)


def ipc_receiver(spec, version: int, results) -> None:
    """The engine's side, in a second process: the control-store protocol of `actors.rollout_sync.WeightReceiver.receive_buckets`
    (bucket metadata, then the pickled handles, then an acknowledgement), vLLM's rebuild, and the checksums
    of what it rebuilt (`ChecksumStream`, as the sender computes them)."""
    import pickle
    from datetime import timedelta

    from actors.weight_sync import (
        ACK_KEY,
        BUCKET_KEY,
        IPC_KEY,
        ChecksumStream,
        control_store,
        decode_bucket,
        engine_scope,
    )

    try:
        torch.cuda.set_device(0)
        store = engine_scope(control_store(spec, is_master=False), spec, 0)
        stream, index = ChecksumStream(), 0
        while True:
            key = BUCKET_KEY.format(version=version, index=index)
            store.wait([key], timedelta(seconds=spec.timeout_s))
            metas = decode_bucket(store.get(key))
            if metas is None:
                break
            for meta, handle in zip(metas, pickle.loads(store.get(IPC_KEY.format(version=version, index=index)))):
                tensor = rebuild_like_vllm(handle, 0)
                if str(tensor.dtype) != f"torch.{meta.dtype}" or tuple(tensor.shape) != meta.shape:
                    raise ValueError(f"{meta.name}: rebuilt {tensor.dtype} {tuple(tensor.shape)}, sent {meta}")
                stream.add(meta.name, tensor)
            store.set(ACK_KEY.format(version=version, index=index, receiver=0), b"1")
            index += 1
        results.put((index, stream.checksums, ""))
    except Exception as e:  # reported by the parent as the check's failure
        results.put((0, {}, f"{type(e).__name__}: {e}"))


def check_ipc_round_trip(report: Report, worker) -> None:
    """Learner rank 0's real ipc sender to a second process on the same GPU, values compared by sha256."""
    import multiprocessing
    import secrets

    from actors.weight_sync import TransferSpec, WeightSender

    spec = TransferSpec(host="127.0.0.1", port=free_port(), world_size=2, num_engines=1, backend="ipc",
                        timeout_s=IPC_TIMEOUT_S, secret=secrets.token_hex(8))
    sender = WeightSender(spec, 0)  # opens the control store the receiver connects to
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    results = context.Queue()
    receiver = context.Process(target=ipc_receiver, args=(spec, 1, results))
    receiver.start()
    try:
        stats = sender.send(worker.hf_state_dict_iter(), bucket_bytes=IPC_BUCKET_BYTES, version=1, checksums=True)
        buckets, rebuilt, error = results.get(timeout=IPC_TIMEOUT_S)
    finally:
        receiver.join(timeout=30)
        sender.close()
    sent = stats["checksums"]
    ok = not error and buckets == stats["buckets"] > 1 and rebuilt == sent
    report.check("cuda_ipc_round_trip", ok, error or f"{len(rebuilt)}/{len(sent)} parameters identical over "
                 f"{buckets} buckets, {stats['bytes'] / 2**20:.1f} MiB in {stats['seconds']:.2f} s",
                 buckets=buckets, parameters=len(sent), identical=rebuilt == sent, seconds=stats["seconds"],
                 error=error)


# --- main -----------------------------------------------------------------------------------------


def run(cpu_smoke: bool, out: Path) -> int:
    use_gpu = torch.cuda.is_available() and not cpu_smoke
    if not use_gpu and not cpu_smoke:
        print("FAIL  no CUDA device (use --cpu-smoke on a CPU)")
        return 1
    sizes = GPU if use_gpu else CPU_SMOKE
    device = "cuda" if use_gpu else "cpu"
    report = Report()
    started = time.perf_counter()
    report.figures["device"] = torch.cuda.get_device_name() if use_gpu else "cpu"
    report.figures["torch"] = torch.__version__
    from examples.gpu_check_packing import (
        CPU_SMOKE_SHAPE,
        QWEN25_15B,
        check_packed_logprobs,
        check_packing_throughput,
    )

    with tempfile.TemporaryDirectory() as tmp:
        small = write_qwen2(Path(tmp) / "small", sizes.small, seed=0, device=device)
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(small, dtype=torch.float32).to(device)
        batch = make_batch(*sizes.small_batch, sizes.small["vocab_size"], seed=1)
        from actors.learner import OptimizerSettings

        with learner(small, optimizer=OptimizerSettings(lr=STEP_LR, grad_clip=1.0),
                     sequences_per_microbatch=4) as worker:
            check_setup(report, worker)
            check_logprobs(report, worker, hf, batch, device)
            check_packed_logprobs(report, worker, batch, budget=sizes.small_batch[0] * sizes.small_batch[1] // 2)
            check_step(report, worker, hf, batch, device)
            if use_gpu:
                check_ipc_round_trip(report, worker)
            else:
                report.skip("cuda_ipc_round_trip", "needs CUDA (two processes on one GPU)")
        del hf, worker
        check_precision_steps(report, small, batch)
        big = write_qwen2(Path(tmp) / "big", sizes.big, seed=2, device=device)
        for suffix, variant in THROUGHPUT_VARIANTS.items():
            release_memory()
            time_variant(report, big, sizes, suffix, variant)
        release_memory()
        packing_shape = QWEN25_15B if use_gpu else CPU_SMOKE_SHAPE
        packing_model = write_qwen2(Path(tmp) / "packing", packing_shape, seed=3, device=device)
        check_packing_throughput(report, packing_model, packing_shape, use_gpu=use_gpu, timed_iters=sizes.timed_iters)
    if use_gpu:
        check_nccl_abort_rebuild(report)
    clean = not ({"ray", "vllm"} & set(sys.modules))
    report.check("no_ray_no_vllm", clean, "neither ray nor vllm was imported")
    report.figures["seconds"] = time.perf_counter() - started
    report.figures["failed"] = report.failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.figures, indent=2))
    print(f"{'FAIL' if report.failed else 'PASS'}: {len(report.failed)} failed, "
          f"{report.figures['seconds']:.0f} s; figures in {out}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (what CI runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="JSON of the figures")
    args = parser.parse_args(argv)
    return run(args.cpu_smoke, args.out)


if __name__ == "__main__":
    sys.exit(main())
