"""Learner tokens/s with sequence packing against padding, on responses with a long-tailed length spread.

    python -m benchmarks.packing [--sequences 64] [--repeats 3] [--budget 4096]

One `LearnerWorker` (the class the learner's Ray actors run; world size 1, gloo on CPU, NCCL on a GPU) on a
randomly initialised Qwen2 of a few million parameters (`SHAPE`), one GRPO forward-backward over the same
batch per micro-batch plan, timed (the optimizer step after it is not). The plans:

- padded, by count: `learner.sequences_per_microbatch` sequences per micro-batch, balanced by tokens (the
  default plan), each micro-batch padded to its longest sequence;
- padded, by budget: dynamic batch size, sequences grouped longest first while (sequences x longest
  length) stays within `learner.tokens_per_microbatch`;
- packed: `learner.pack_sequences`, sequences end to end up to the same budget of real tokens.

Lengths: prompts of 16 to 48 tokens and responses drawn from a log-normal (median 48 tokens, sigma 1.0,
at most 768): most responses are short and a few run long, the spread of an RL batch. Tokens/s counts
real tokens (prompt and response; padding excluded). The plans run interleaved (A, B, C, A, B, C, ...)
after one warm-up each; the table reports each plan's best and its spread over the repeats.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_table, write_json
from cluster.network import free_port

SHAPE = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
             max_positions=1024)
"""3.3M parameters with the tiny tokenizer's vocabulary: enough arithmetic per token that the learner's
per-micro-batch overhead does not hide what padding costs on 2 CPU cores; head_dim 64 as in real models."""
PROMPT_TOKENS = (16, 48)
"""Uniform prompt lengths."""
RESPONSE_MEDIAN, RESPONSE_SIGMA, RESPONSE_MAX = 48, 1.0, 768
"""Log-normal response lengths: median 48 tokens, 1% beyond ~490, cut at 768 (a response-length limit)."""
LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=RESPONSE_MAX, tis_cap=0.0)
PLANS = ("padded, by count", "padded, by budget", "packed")


def lengths(n: int, seed: int, *, prompt: tuple[int, int] = PROMPT_TOKENS, median: int = RESPONSE_MEDIAN,
            sigma: float = RESPONSE_SIGMA, cap: int = RESPONSE_MAX) -> list[tuple[int, int]]:
    """(prompt, response) token counts of n sequences: uniform prompts, log-normal responses cut at `cap`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        response = min(cap, max(1, round(rng.lognormvariate(math.log(median), sigma))))
        out.append((rng.randint(*prompt), response))
    return out


def make_batch(spans: list[tuple[int, int]], vocab: int, seed: int):  # -> TrainBatch
    """Right-padded rows of random tokens, response mask on the responses, random advantages."""
    from trainer.types import TrainBatch

    gen = torch.Generator().manual_seed(seed)
    total = torch.tensor([p + r for p, r in spans])  # [N]
    prompt = torch.tensor([p for p, _ in spans])  # [N]
    n, width = len(spans), int(total.max())
    pos = torch.arange(width)
    attention = pos[None] < total[:, None]  # [N, L]
    response = attention & (pos[None] >= prompt[:, None])  # [N, L]
    ids = torch.randint(1, vocab, (n, width), generator=gen).masked_fill(~attention, 0)  # [N, L]
    old = torch.where(response, -2.0 - torch.rand(n, width, generator=gen), torch.zeros(()))  # [N, L]
    return TrainBatch(input_ids=ids, attention_mask=attention, response_mask=response,
                      advantages=torch.randn(n, generator=gen), old_logprobs=old, ref_logprobs=old.clone(),
                      rollout_logprobs=old.clone())


def use_plan(worker, plan: str, *, spm: int, budget: int) -> None:
    """Set the worker's micro-batch settings to those `plan` names (the constructor's arguments)."""
    worker.spm = spm if plan == "padded, by count" else 10**6
    worker.tokens_per_microbatch = 0 if plan == "padded, by count" else budget
    worker.schedule.pack = plan == "packed"


def computed_tokens(worker, batch) -> tuple[int, int]:
    """(micro-batches, tokens the model computes on) under the worker's current plan."""
    plan = worker._plan(batch)
    micro = [worker.schedule.microbatch(batch.select(torch.tensor(rows))) for rows in plan]
    return len(plan), sum(m.tokens for m in micro)


def time_step(worker, batch) -> float:
    """Seconds of one forward-backward (the optimizer step after it untimed)."""
    sync = torch.cuda.synchronize if worker.use_gpu else (lambda: None)
    sync()
    start = time.perf_counter()
    worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    sync()
    elapsed = time.perf_counter() - start
    worker.optim_step()
    return elapsed


def measure(model_dir: Path, batch, *, spm: int, budget: int, repeats: int) -> dict[str, Any]:
    from actors.learner import LearnerWorker, OptimizerSettings

    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), optimizer=OptimizerSettings(lr=1e-6),
                           num_threads=torch.get_num_threads())
    times: dict[str, list[float]] = {p: [] for p in PLANS}
    shapes = {}
    try:
        for plan in PLANS:  # warm-up: allocator, kernels
            use_plan(worker, plan, spm=spm, budget=budget)
            shapes[plan] = computed_tokens(worker, batch)
            time_step(worker, batch)
        for _ in range(repeats):
            for plan in PLANS:
                use_plan(worker, plan, spm=spm, budget=budget)
                times[plan].append(time_step(worker, batch))
        params = sum(p.numel() for p in worker.model.parameters())
    finally:
        worker.shutdown()
    real = int(batch.attention_mask.sum())
    out = {}
    for plan in PLANS:
        best = min(times[plan])
        out[plan] = {"micro_batches": shapes[plan][0], "computed_tokens": shapes[plan][1],
                     "padding_fraction": 1 - real / shapes[plan][1], "seconds": times[plan], "best_s": best,
                     "tokens_per_s": real / best, "tokens_per_s_worst": real / max(times[plan])}
    return {"params": params, "real_tokens": real, "plans": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=64, help="sequences in the batch (N)")
    ap.add_argument("--spm", type=int, default=8, help="sequences per micro-batch of the padded-by-count plan")
    ap.add_argument("--budget", type=int, default=4096, help="tokens_per_microbatch of the other two plans")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from examples.tiny_model import build_tokenizer, sample_corpus, write_model

    spans = lengths(args.sequences, args.seed)
    responses = sorted(r for _, r in spans)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(sample_corpus())
        model_dir = write_model(Path(tmp) / "model", tokenizer, seed=args.seed, **SHAPE)
        batch = make_batch(spans, len(tokenizer), args.seed)
        result = measure(model_dir, batch, spm=args.spm, budget=args.budget, repeats=args.repeats)
    plans = result["plans"]
    rows = [[plan, p["micro_batches"], p["computed_tokens"], f"{p['padding_fraction']:.0%}", p["best_s"],
             p["tokens_per_s"], f"{p['tokens_per_s_worst']:,.0f}-{p['tokens_per_s']:,.0f}"]
            for plan, p in plans.items()]
    print_table(f"learner forward-backward, {args.sequences} sequences ({result['real_tokens']} real tokens; "
                f"responses median {statistics.median(responses):.0f}, max {responses[-1]}), "
                f"{result['params'] / 1e6:.1f}M params, best of {args.repeats}",
                ["plan", "micro-batches", "tokens computed", "padding", "best s", "tokens/s", "tokens/s range"], rows)
    ratios = {f"packed_over_{plan.replace(', ', '_').replace(' ', '_')}":
              plans["packed"]["tokens_per_s"] / plans[plan]["tokens_per_s"] for plan in PLANS[:2]}
    for name, ratio in ratios.items():
        print(f"tokens/s, {name.replace('_', ' ')}: {ratio:.2f}x", flush=True)
    write_json("packing", {"args": vars(args), "shape": SHAPE, "response_lengths": responses, **result,
                           "ratios": ratios})


if __name__ == "__main__":
    main()
