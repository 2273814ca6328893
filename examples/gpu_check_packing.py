"""The GPU check's sequence-packing part (`examples/gpu_check.py` calls it; figures in docs/gpu_check.md).

- `packed_logprobs_equal_padded`: on the check's small learner, the logprobs of the same batch packed
  (`learner.pack_sequences`: Megatron's THD `PackedSeqParams`; on CUDA in bf16 PyTorch's variable-length
  FlashAttention when this torch has it, `actors.sdpa_attention`) and padded agree within bf16 noise.
- `packing_throughput_*`: forward-backward tokens/s and MFU of a randomly initialised Qwen2.5-1.5B-shaped
  learner (hidden 1536, 28 layers, 12 heads, 2 KV heads, FFN 8960, vocab 151936) on a batch with
  long-tailed response lengths, under the three micro-batch plans of `benchmarks/packing.py` (padded by
  count, padded by token budget, packed), with packed over padded ratios. Tokens/s and MFU count real
  tokens only (padding computed is waste, not work); peak memory per plan.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from benchmarks.packing import PLANS, computed_tokens, lengths, make_batch, time_step, use_plan

QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True)
GPU_LENGTHS = dict(n=64, prompt=(64, 256), median=256, sigma=1.0, cap=2048)
"""64 sequences: prompts of 64-256 tokens, log-normal responses (median 256, cut at 2048): ~37k real tokens."""
GPU_PLAN = dict(spm=4, budget=8192)
"""Padded by count: 4 sequences per micro-batch (up to ~9k tokens with a long one); padded by budget and
packed: 8,192 tokens each, the 0.5B check's micro-batch. The 1.5B learner's state (bf16 params, fp32 grads,
main params and Adam moments) is ~34 GiB; 8k tokens of activations and logits add ~20 GiB."""
CPU_SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=128, vocab_size=500, tie_word_embeddings=True)
CPU_SMOKE_LENGTHS = dict(n=12, prompt=(4, 8), median=12, sigma=1.0, cap=64)
CPU_SMOKE_PLAN = dict(spm=4, budget=128)
PACKED_MEAN_TOL = 0.01
"""Mean |packed - padded| logprob: the same bf16 weights and inputs, attention by another kernel
(variable-length FlashAttention against SDPA's), so only accumulation order differs."""
PACKED_MAX_TOL = 0.15


def check_packed_logprobs(report, worker, batch, budget: int) -> None:
    """Logprobs of `batch` padded (the worker's own plan) and packed within `budget` tokens."""
    from actors import sdpa_attention

    padded = worker.compute_logprobs(batch)
    saved = worker.tokens_per_microbatch, worker.schedule.pack
    worker.tokens_per_microbatch, worker.schedule.pack = budget, True
    try:
        packed = worker.compute_logprobs(batch)
    finally:
        worker.tokens_per_microbatch, worker.schedule.pack = saved
    valid = batch.attention_mask.clone()
    valid[:, 0] = False
    diff = (packed - padded).abs()[valid]
    mean, worst = diff.mean().item(), diff.max().item()
    kernel = "varlen FlashAttention" if worker.use_gpu and sdpa_attention._varlen() is not None else "SDPA per sequence"
    report.check("packed_logprobs_equal_padded", mean < PACKED_MEAN_TOL and worst < PACKED_MAX_TOL,
                 f"mean |packed - padded| {mean:.2e} (< {PACKED_MEAN_TOL}), max {worst:.2e} (< {PACKED_MAX_TOL}) "
                 f"over {int(valid.sum())} tokens; packed attention: {kernel}",
                 mean_abs_diff=mean, max_abs_diff=worst, kernel=kernel)


def sequence_flops(shape: dict, token_lengths: list[int]) -> float:
    """Model FLOPs of one forward-backward over sequences of these lengths (real tokens only)."""
    from examples.gpu_check import matmul_flops_per_token

    return sum(n * matmul_flops_per_token(shape, n) for n in token_lengths)


def check_packing_throughput(report, model_dir: Path, shape: dict, *, use_gpu: bool, timed_iters: int) -> None:
    """Tokens/s and MFU of each plan on the same long-tailed batch, one learner, plans interleaved."""
    from actors.learner import OptimizerSettings
    from examples.gpu_check import PEAK_BF16_FLOPS, learner

    spec, plan_args = (GPU_LENGTHS, GPU_PLAN) if use_gpu else (CPU_SMOKE_LENGTHS, CPU_SMOKE_PLAN)
    n = spec["n"]
    spans = lengths(n, 0, prompt=spec["prompt"], median=spec["median"], sigma=spec["sigma"], cap=spec["cap"])
    batch = make_batch(spans, shape["vocab_size"], seed=13)
    flops = sequence_flops(shape, [p + r for p, r in spans])
    real = int(batch.attention_mask.sum())
    name = torch.cuda.get_device_name() if use_gpu else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    times: dict[str, list[float]] = {p: [] for p in PLANS}
    shapes, peaks = {}, {}
    with learner(model_dir, optimizer=OptimizerSettings(lr=1e-6)) as worker:
        for plan in PLANS:  # warm-up of each plan, then the plans interleaved
            use_plan(worker, plan, **plan_args)
            shapes[plan] = computed_tokens(worker, batch)
            if use_gpu:
                torch.cuda.reset_peak_memory_stats()
            time_step(worker, batch)
            peaks[plan] = torch.cuda.max_memory_allocated() / 2**30 if use_gpu else None
        for _ in range(timed_iters):
            for plan in PLANS:
                use_plan(worker, plan, **plan_args)
                times[plan].append(time_step(worker, batch))
    best = {plan: min(t) for plan, t in times.items()}
    for plan in PLANS:
        tps = real / best[plan]
        mfu = flops / best[plan] / peak if peak else None
        suffix = plan.replace(", ", "_").replace(" ", "_")
        report.check(f"packing_throughput_{suffix}", math.isfinite(tps) and tps > 0,
                     f"{tps:,.0f} real tokens/s ({shapes[plan][0]} micro-batches, {shapes[plan][1]:,} tokens "
                     f"computed for {real:,} real)" + (f", MFU {mfu:.1%}" if mfu else "")
                     + (f", peak {peaks[plan]:.1f} GiB" if peaks[plan] is not None else ""),
                     tokens_per_s=tps, seconds=times[plan], real_tokens=real, computed_tokens=shapes[plan][1],
                     micro_batches=shapes[plan][0], mfu=mfu, peak_gib=peaks[plan], device=name, **plan_args)
    ratios = {f"packed_over_{p.replace(', ', '_').replace(' ', '_')}": best[p] / best["packed"] for p in PLANS[:2]}
    report.figures["packing_ratios"] = ratios
    print("      packed tokens/s over " + ", ".join(f"{k.removeprefix('packed_over_')}: {v:.2f}x"
                                                   for k, v in ratios.items()), flush=True)
