"""The policy's update: Megatron DDP (fp32 gradient buffers, bucketed DP reduce-scatter) and Megatron's
DistributedOptimizer (fp32 main params and AdamW state sharded over DP, global-norm clip across TP/PP/DP,
fp16's dynamic loss scaler), stepped at the scheduled learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.optimizer import MegatronOptimizer


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, clipping and LR schedule of the policy (plain values, unpacked from LearnerConfig)."""

    lr: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    """'constant' or 'cosine' (decays to 10% of lr at total_steps)."""
    total_steps: int = 0
    """Optimizer steps the cosine schedule spans (ignored by 'constant')."""
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""


FP16_INITIAL_LOSS_SCALE = 2.0**16
"""fp16 only: where Megatron's dynamic loss scaler starts (torch's GradScaler default; Megatron's own 2**32
would skip the first updates of every run until the scale comes down). It halves after FP16_HYSTERESIS
overflowing steps (the update is skipped) and doubles after FP16_LOSS_SCALE_WINDOW clean ones."""
FP16_LOSS_SCALE_WINDOW = 1000
"""fp16 only: clean optimizer steps before the loss scale doubles (Megatron's default)."""
FP16_HYSTERESIS = 2
"""fp16 only: overflowing steps before the loss scale halves (Megatron's default)."""

COSINE_FLOOR = 0.1
"""Cosine decays to this fraction of the peak LR (LearnerConfig.lr_schedule's documented end point)."""

ADAM_EPS = 1e-8
"""Adam's epsilon (torch's and Megatron's default)."""


def lr_at(step: int, s: OptimizerSettings) -> float:
    """LR of optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def wrap_ddp(model: GPTModel) -> DistributedDataParallel:
    """Megatron DDP: params and fp32 grads in contiguous buffers, bucketed DP reduce-scatter overlapped
    with the last micro-batch's backward. The params stay `model`'s, now views into DDP's buffers."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=True,
                                               use_distributed_optimizer=True)
    config = model.config  # Megatron's TransformerConfig, which GPTModel carries
    ddp = DistributedDataParallel(config, ddp_config, model)
    # The schedule runs every micro-batch but the last under no_sync: one reduction per update.
    config.no_sync_func = ddp.no_sync
    return ddp


def make_optimizer(ddp: DistributedDataParallel, settings: OptimizerSettings, *,
                   dtype: torch.dtype) -> MegatronOptimizer:
    """Megatron's DistributedOptimizer: fp32 main params and AdamW state, sharded over DP.

    fp16 adds Megatron's dynamic loss scaler: the schedule multiplies each micro-batch's loss by the scale
    before backward (`grad_scale_func`), the optimizer unscales the fp32 main grads, and a step whose
    gradients overflowed is skipped while the scale comes down (fp16's range is too narrow for raw
    gradients: small ones underflow to 0). bf16 has fp32's range and needs no scaling."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    s, fp16 = settings, dtype == torch.float16
    config = OptimizerConfig(optimizer="adam", lr=lr_at(0, s), weight_decay=s.weight_decay,
                             adam_beta1=s.beta1, adam_beta2=s.beta2, adam_eps=ADAM_EPS, clip_grad=s.grad_clip,
                             bf16=dtype == torch.bfloat16, fp16=fp16, params_dtype=dtype,
                             loss_scale=None, initial_loss_scale=FP16_INITIAL_LOSS_SCALE,
                             loss_scale_window=FP16_LOSS_SCALE_WINDOW, hysteresis=FP16_HYSTERESIS,
                             use_distributed_optimizer=True)
    optimizer = get_megatron_optimizer(config, [ddp])
    if fp16:
        ddp.module.config.grad_scale_func = optimizer.scale_loss  # read by the schedule's backward step
    optimizer.zero_grad()
    return optimizer


def inner_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    """The Megatron optimizers (one per parameter group kind) behind a chained one."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def master_weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """This rank's fp32 main copy of each parameter (its DP shard, flat; whole and shaped when DP = 1)."""
    out = {}
    for name, p in model.named_parameters():
        main = getattr(p, "main_param", None)
        main = p.detach() if main is None else main  # fp32 models: the optimizer steps the params
        out[name] = main.view(p.shape) if main.numel() == p.numel() else main
    return out


def finalize_grads(ddp: DistributedDataParallel) -> None:
    """Wait for DDP's DP reduce-scatter; with PP and tied embeddings sum the embedding's two copies."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads([ddp], num_tokens=None)  # None: the loss is already normalised


def optimizer_step(optimizer: MegatronOptimizer, ddp: DistributedDataParallel, *, lr: float,
                   fp16: bool) -> dict[str, float]:
    """Clip by the global grad norm (across TP, PP, DP), AdamW step at `lr`, zero the grads.

    A skipped update is an error except under fp16, where an overflow at this loss scale skips it (the
    scaler has lowered the scale): grad_norm is then 0 and `update_skipped` 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ok, norm, _ = optimizer.step()
    if not ok and not fp16:
        raise FloatingPointError("the optimizer skipped the update (non-finite gradients)")
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    if not fp16:
        return {"grad_norm": float(norm), "lr": lr}
    return {"grad_norm": float(norm) if ok else 0.0, "lr": lr, "update_skipped": float(not ok),
            "loss_scale": float(optimizer.get_loss_scale())}
