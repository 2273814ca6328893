"""The learner: one Megatron-core rank of the policy (or of the frozen reference), TP x PP x DP.

`LearnerWorker` is a plain class; `actors.learner_group.LearnerGroup` wraps it with `ray.remote`, one
actor per rank, and calls every verb on all ranks at once (the verbs are collective). The GPU check
(`examples/gpu_check.py`) builds it directly, without Ray.

    TrainBatch (this rank's DP slice) -> micro-batches (by sequence count or by token budget)
        -> Megatron pipeline schedule (forward, loss from trainer.grpo.LOSSES[name], backward)
        -> Megatron DDP: grads accumulate in one fp32 buffer, reduce-scattered over DP in buckets while
           the last micro-batch's backward runs
        -> optim_step: Megatron DistributedOptimizer (fp32 main params and Adam state sharded over DP,
           global-norm clip across TP/PP/DP, AdamW at the scheduled LR, bf16 params all-gathered back)

The learner knows nothing about GRPO: it computes per-token logprobs (vocab-parallel, chunked, padded
vocab rows masked; `actors.logprobs`) at the rollouts' sampling temperature (softmax(logits / T), what vLLM
sampled from and reports) and hands them to the named loss with the batch's tensors and the caller's
global counts. fp16 trains through Megatron's dynamic loss scaler; bf16 and fp32 need none.

GPU and CPU run the same classes: Megatron's `GPTModel`, `DistributedDataParallel` and
`DistributedOptimizer`. On CPU (gloo) `actors.megatron_cpu` patches the few places where Megatron-core
0.16.1 allocates on CUDA or checks CUDA type names; nothing else differs. What the CPU path cannot share:
the CUDA RNG tracker (no CUDA generator to seed: `fork()` is a null context there), and Megatron's
default causal mask (built on CUDA; an explicit mask is passed on both paths).

Departures from a stock Megatron training setup: the loss is already normalised by the global token
count, so the schedule does not rescale it and DDP sums (not averages) gradients over DP; only one
`forward_backward` per `optim_step` (DP gradients are reduced at its end); attention is
PyTorch's SDPA (FlashAttention on GPUs, `actors.sdpa_attention`) in place of Transformer Engine's;
weight decay applies to matrices only (Megatron's default groups).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from actors import hf_megatron, megatron_cpu
from actors.logprobs import vocab_parallel_logprobs
from actors.offload import StorageOffloader
from trainer.checkpoint import CheckpointError, CheckpointSaveError, load_tensors, save_failure
from trainer.types import TrainBatch

if TYPE_CHECKING:
    from actors.weight_sync.spec import TransferSpec

_MAX_NDIM = 4
"""Header length for shipping a tensor's shape between pipeline stages (HF tensors have <= 2 dims)."""

RECOMPUTE_MODES = ("none", "selective", "full")
"""Activation recomputation: none; selective (attention core only); full (every layer's input kept)."""


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


def plan_microbatches(lengths: list[int], sequences_per_microbatch: int,
                      tokens_per_microbatch: int = 0) -> list[list[int]]:
    """Split sequence indices into micro-batches; each is later cut to its longest sequence.

    tokens_per_microbatch = 0: ceil(N / spm) micro-batches of at most spm sequences with balanced token
    counts (longest first, each to the lightest micro-batch with room: greedy LPT).
    tokens_per_microbatch > 0: dynamic batch size. Longest first, a micro-batch takes sequences while
    (sequences x its longest length) stays within the budget and the count within spm; a sequence longer
    than the budget goes alone. Similar lengths end up together, so the cut wastes little either way.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if tokens_per_microbatch > 0:
        plan: list[list[int]] = []
        for i in order:
            current = plan[-1] if plan else None
            if current is not None and len(current) < sequences_per_microbatch and \
                    (len(current) + 1) * lengths[current[0]] <= tokens_per_microbatch:
                current.append(i)
            else:
                plan.append([i])
        return [sorted(b) for b in plan]
    count = max(1, -(-len(lengths) // sequences_per_microbatch))
    bins: list[list[int]] = [[] for _ in range(count)]
    tokens = [0] * count
    for i in order:
        b = min((b for b in range(count) if len(bins[b]) < sequences_per_microbatch), key=lambda b: tokens[b])
        bins[b].append(i)
        tokens[b] += lengths[i]
    return [sorted(b) for b in bins if b]


def collective_device(backend: str) -> torch.device:
    """Where a tensor must live for a collective on a group of this backend: NCCL needs CUDA, gloo CPU."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_metrics_over(metrics: dict[str, float], reductions: dict[str, str], group) -> dict[str, float]:
    """Reduce scalar metrics over `group`, one collective per reduction kind ('sum', 'max', 'min').

    The tensors are put on the device the group's backend needs (`collective_device`).
    """
    if group is None or dist.get_world_size(group) == 1:
        return dict(metrics)
    device = collective_device(dist.get_backend(group))
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    out: dict[str, float] = {}
    for kind, op in ops.items():
        names = sorted(n for n in metrics if reductions[n] == kind)
        if not names:
            continue
        values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=device)  # [M]
        dist.all_reduce(values, op=op, group=group)
        out.update(zip(names, values.tolist()))
    return out


def _on_device(verb):
    """A verb that needs the state on the device: refused, with the reason, while it is offloaded."""

    @wraps(verb)
    def checked(self, *args, **kwargs):
        if self._offloader.active:
            raise RuntimeError(f"{self.role} learner rank {self.rank}: {verb.__name__} while the model and "
                               "optimizer state are offloaded to host memory (colocated engines hold the GPU); "
                               "call onload first")
        return verb(self, *args, **kwargs)

    return checked


class LearnerWorker:
    """One Megatron rank. Every verb is collective: call it on all ranks of the group together."""

    def __init__(self, *, rank: int, world_size: int, master_addr: str, master_port: int, tp: int = 1,
                 pp: int = 1, dp: int = 1, model_path: str, dtype: str = "float32", seed: int = 0,
                 optimizer: OptimizerSettings | None = None, sequences_per_microbatch: int = 16,
                 tokens_per_microbatch: int = 0, recompute: str = "none", attention: str = "sdpa",
                 role: str = "policy", temperature: float = 1.0,
                 hold_reference: bool = False, num_threads: int = 1, timeout_s: float = 600.0,
                 store_secret: str = ""):
        if role not in ("policy", "reference"):
            raise ValueError(f"role must be 'policy' or 'reference', not {role!r}")
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, not {recompute!r}")
        if tp * pp * dp != world_size:
            raise ValueError(f"tp x pp x dp = {tp * pp * dp} must equal world_size = {world_size}")
        from actors.versions import check_megatron

        check_megatron(where=f"{role} learner rank {rank}")  # before anything is built on its internals
        torch.set_num_threads(num_threads)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        self.rank, self.role = rank, role
        # The rollouts' sampling temperature: every logprob here (policy, old policy, reference) is that of
        # softmax(logits / T), the distribution vLLM sampled from and reports (processed_logprobs).
        self.temperature = temperature
        self.use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        if not self.use_gpu:
            megatron_cpu.apply()
        self._rendezvous(master_addr, master_port, rank, world_size, timeout_s, store_secret)
        from megatron.core import parallel_state as ps

        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        self.ps = ps
        self.tp_rank, self.pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        self.dp_rank = ps.get_data_parallel_rank()
        torch.manual_seed(seed)
        random.seed(seed)
        if self.use_gpu:
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            # Megatron's attention and TP layers fork the tracker's "model-parallel-rng" state.
            model_parallel_cuda_manual_seed(seed)

        from transformers import AutoConfig

        self.model_path = Path(model_path)
        self.shape = hf_megatron.shape_from_hf(AutoConfig.from_pretrained(model_path), tp=tp, pp=pp)
        self.dtype = getattr(torch, dtype)
        self.spm, self.tokens_per_microbatch = sequences_per_microbatch, tokens_per_microbatch
        self.recompute, self.attention = recompute, attention
        self.model = self._load_model(trainable=role == "policy")
        self.ref_model = self._load_model(trainable=False) if hold_reference else None
        if self.ref_model is not None and self.use_gpu:
            self.ref_model.to("cpu")  # offloaded while idle
        self.settings = optimizer or OptimizerSettings()
        self.step = 0
        self.ddp = self._wrap_ddp(self.model) if role == "policy" else None
        self.optimizer = self._make_optimizer() if self.ddp is not None else None
        self._grads_reduced = False
        self._sender: Any = None
        self._sync_spec: Any = None
        self._offloader = StorageOffloader(self.device)

    # --- construction ---------------------------------------------------------------------------

    def coords(self) -> dict[str, int]:
        """This rank's place: rank, tp_rank, pp_rank, dp_rank, and whether it holds the model's output."""
        last = self.pp_rank == self.shape.pp - 1
        return dict(rank=self.rank, tp_rank=self.tp_rank, pp_rank=self.pp_rank, dp_rank=self.dp_rank,
                    is_output=int(last and self.tp_rank == 0))

    def _load_model(self, *, trainable: bool) -> torch.nn.Module:
        config = hf_megatron.transformer_config(self.shape, dtype=self.dtype, use_cpu=not self.use_gpu,
                                                recompute=self.recompute if trainable else "none")
        model = hf_megatron.build_gpt_model(self.shape, config, pre_process=self.pp_rank == 0,
                                            post_process=self.pp_rank == self.shape.pp - 1,
                                            attention=self.attention)
        params = dict(model.named_parameters())
        expected = hf_megatron.stage_param_names(self.shape, self.pp_rank)
        if set(params) != set(expected):
            raise RuntimeError(f"Megatron parameters {sorted(set(params) ^ set(expected))} do not match the "
                               "conversion table in actors/hf_megatron.py")
        with _safetensors(self.model_path) as read, torch.no_grad():
            for name in expected:
                shard = hf_megatron.hf_to_megatron(name, read, self.shape, tp_rank=self.tp_rank,
                                                   pp_rank=self.pp_rank)
                params[name].copy_(shard.to(self.dtype))
        # All params in the model dtype, norms included (what Megatron's Float16Module does to the model).
        model.to(device=self.device, dtype=self.dtype)
        model.requires_grad_(trainable)
        return model.train(trainable)

    def _wrap_ddp(self, model: torch.nn.Module):  # -> megatron.core.distributed.DistributedDataParallel
        """Megatron DDP: params and fp32 grads in contiguous buffers, bucketed DP reduce-scatter overlapped
        with the last micro-batch's backward. The params stay the GPTModel's (`self.model`), now views."""
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=True,
                                                   use_distributed_optimizer=True)
        ddp = DistributedDataParallel(model.config, ddp_config, model)
        # The schedule runs every micro-batch but the last under no_sync: one reduction per update.
        config: Any = model.config  # Megatron's TransformerConfig (untyped here)
        config.no_sync_func = ddp.no_sync
        return ddp

    def _make_optimizer(self):  # -> megatron.core.optimizer.MegatronOptimizer
        """Megatron's DistributedOptimizer: fp32 main params and AdamW state, sharded over DP.

        fp16 adds Megatron's dynamic loss scaler: the schedule multiplies each micro-batch's loss by the scale
        before backward (`grad_scale_func`), the optimizer unscales the fp32 main grads, and a step whose
        gradients overflowed is skipped while the scale comes down (fp16's range is too narrow for raw
        gradients: small ones underflow to 0). bf16 has fp32's range and needs no scaling."""
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        s = self.settings
        config = OptimizerConfig(optimizer="adam", lr=lr_at(0, s), weight_decay=s.weight_decay,
                                 adam_beta1=s.beta1, adam_beta2=s.beta2, adam_eps=ADAM_EPS, clip_grad=s.grad_clip,
                                 bf16=self.dtype == torch.bfloat16, fp16=self.fp16, params_dtype=self.dtype,
                                 loss_scale=None, initial_loss_scale=FP16_INITIAL_LOSS_SCALE,
                                 loss_scale_window=FP16_LOSS_SCALE_WINDOW, hysteresis=FP16_HYSTERESIS,
                                 use_distributed_optimizer=True)
        optimizer = get_megatron_optimizer(config, [self.ddp])
        if self.fp16:
            self.model.config.grad_scale_func = optimizer.scale_loss  # read by the schedule's backward step
        optimizer.zero_grad()
        return optimizer

    @property
    def fp16(self) -> bool:
        return self.dtype == torch.float16

    def _inner_optimizers(self) -> list:
        """The Megatron optimizers (one per parameter group kind) behind a chained one."""
        return list(getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    def master_weights(self) -> dict[str, Tensor]:
        """This rank's fp32 main copy of each parameter (its DP shard, flat; whole and shaped when DP = 1)."""
        out = {}
        for name, p in self.model.named_parameters():
            main = getattr(p, "main_param", None)
            main = p.detach() if main is None else main  # fp32 models: the optimizer steps the params
            out[name] = main.view(p.shape) if main.numel() == p.numel() else main
        return out

    # --- logprobs -------------------------------------------------------------------------------

    @_on_device
    def compute_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """[N, L] float32 logprobs aligned with input_ids (position 0 and padding are 0); None off the last stage."""
        return self._forward_only(self.model, batch)

    @_on_device
    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """Logprobs of the colocated frozen reference (or of this worker's model when role='reference')."""
        model = self.ref_model if self.ref_model is not None else self.model
        if self.role == "policy" and self.ref_model is None:
            raise RuntimeError("this policy worker holds no colocated reference (hold_reference=False)")
        with self._resident(model), torch.no_grad():
            return self._forward_only(model, batch)

    @contextlib.contextmanager
    def _resident(self, model: torch.nn.Module) -> Iterator[None]:
        """On GPU the colocated reference lives on the CPU and visits the GPU only while it computes."""
        offload = self.use_gpu and model is self.ref_model
        if offload:
            model.to(self.device)
        try:
            yield
        finally:
            if offload:
                model.to("cpu")

    def _plan(self, batch: TrainBatch) -> list[list[int]]:
        return plan_microbatches(batch.attention_mask.sum(1).tolist(), self.spm, self.tokens_per_microbatch)

    def _forward_only(self, model: torch.nn.Module, batch: TrainBatch) -> Tensor | None:
        plan = self._plan(batch)
        with torch.no_grad():
            outputs = self._run_schedule(model, batch, plan, loss=None, forward_only=True)
        if outputs is None:
            return None
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)  # [N, L]
        for rows, o in zip(plan, outputs):
            lp = o["logprobs"].float().cpu()  # [b, s]
            out[rows, : lp.shape[1]] = lp
        return out * batch.attention_mask

    # --- training -------------------------------------------------------------------------------

    @_on_device
    def forward_backward(self, batch: TrainBatch, loss_name: str, num_tokens: int, num_sequences: int,
                         loss_kwargs: dict) -> dict[str, float]:
        """Gradients of LOSSES[loss_name] over this rank's batch, reduced over DP; metrics reduced over DP.

        `num_tokens` / `num_sequences` count the whole update (all DP ranks); the loss is normalised
        by them, so summed gradients are the update's gradient. One call per `optim_step`: the DP
        reduce-scatter runs at the end of this call. Returns {} off the last stage.
        """
        from trainer.grpo import LOSSES, metric_reduction, reduce_metrics

        if self.ddp is None:
            raise RuntimeError("a reference worker does not train")
        if self._grads_reduced:
            raise RuntimeError("gradients were already reduced over DP: call optim_step before the next "
                               "forward_backward (accumulate by passing one larger batch)")
        loss = partial(LOSSES[loss_name], num_tokens=num_tokens, num_sequences=num_sequences, **loss_kwargs)
        metrics = self._run_schedule(self.ddp, batch, self._plan(batch), loss=(loss, num_tokens), forward_only=False)
        self._finalize_grads()
        if metrics is None:
            return {}
        reduced = reduce_metrics(metrics)
        return reduce_metrics_over(reduced, {n: metric_reduction(n) for n in reduced},
                                   self.ps.get_data_parallel_group())

    def _run_schedule(self, model, batch: TrainBatch, plan: list[list[int]], *, loss, forward_only: bool):
        """Megatron's forward/backward schedule over the micro-batches `plan`; per-micro-batch dicts or None."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        micro = [_trim(batch.select(torch.tensor(rows))) for rows in plan]
        step = partial(self._forward_step, loss=loss)
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(micro), model=[model], num_microbatches=len(micro),
            seq_length=max(m.input_ids.shape[1] for m in micro), micro_batch_size=max(len(r) for r in plan),
            forward_only=forward_only)
        return outputs if self.pp_rank == self.shape.pp - 1 else None

    def _forward_step(self, data_iterator, model, *, loss):
        mb: TrainBatch = next(data_iterator)
        ids = mb.input_ids.to(self.device)  # [b, s]
        b, s = ids.shape
        positions = torch.arange(s, device=self.device).expand(b, s)  # [b, s]
        output = model(ids, positions, megatron_cpu.causal_mask(s, self.device))  # last stage: [b, s, V/tp]
        return output, partial(self._loss_func, mb, loss)

    def _loss_func(self, mb: TrainBatch, loss, logits: Tensor):
        ids = mb.input_ids.to(self.device)  # [b, s]
        vocab_start = self.tp_rank * logits.shape[-1]
        # logits at t predict token t + 1: score every position against the next token (the last one
        # against a dummy 0, dropped), so the logits are read in place instead of sliced into a copy.
        targets = torch.nn.functional.pad(ids[:, 1:], (0, 1))  # [b, s]
        lp, entropy = vocab_parallel_logprobs(logits, targets, vocab_start=vocab_start,
                                              vocab_size=self.shape.vocab_size, temperature=self.temperature,
                                              group=self.ps.get_tensor_model_parallel_group())  # [b, s]
        logprobs = torch.nn.functional.pad(lp[:, :-1], (1, 0))  # [b, s]; position 0 has no prediction
        count = torch.tensor(1, dtype=torch.int)
        if loss is None:
            return logprobs.sum() * 0, count, {"logprobs": logprobs.detach()}
        loss_fn, num_tokens = loss
        mask = mb.response_mask.to(self.device)  # [b, s]
        rollout = mb.rollout_logprobs.to(self.device)  # [b, s]
        old, gap = old_logprobs_or_own(mb.old_logprobs.to(self.device), logprobs, rollout, mask, num_tokens)
        value, metrics = loss_fn(
            logprobs, old_logprobs=old, ref_logprobs=mb.ref_logprobs.to(self.device),
            rollout_logprobs=rollout, advantages=mb.advantages.to(self.device), response_mask=mask)
        token_entropy = torch.nn.functional.pad(entropy[:, :-1], (1, 0))  # [b, s]
        metrics = {k: v.detach() if isinstance(v, Tensor) else v for k, v in metrics.items()} | gap
        metrics["entropy"] = (token_entropy * mask).sum() / max(num_tokens, 1)
        return value, count, metrics

    def _finalize_grads(self) -> None:
        """Wait for DDP's DP reduce-scatter; with PP and tied embeddings sum the embedding's two copies."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.ddp], num_tokens=None)  # None: the loss is already normalised
        self._grads_reduced = True

    @_on_device
    def optim_step(self) -> dict[str, float]:
        """Clip by the global grad norm (across TP, PP, DP), AdamW step at the scheduled LR, zero grads."""
        if self.optimizer is None or self.ddp is None:
            raise RuntimeError("a reference worker has no optimizer")
        lr = lr_at(self.step, self.settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ok, norm, _ = self.optimizer.step()
        if not ok and not self.fp16:
            raise FloatingPointError("the optimizer skipped the update (non-finite gradients)")
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._grads_reduced = False
        self.step += 1
        if not self.fp16:
            return {"grad_norm": float(norm), "lr": lr}
        # fp16: an overflow at this loss scale skips the update (the scaler has lowered the scale); grad_norm
        # is then 0 and `update_skipped` 1. The LR schedule moves on, as the run's step count does.
        return {"grad_norm": float(norm) if ok else 0.0, "lr": lr, "update_skipped": float(not ok),
                "loss_scale": float(self.optimizer.get_loss_scale())}

    # --- checkpoints ----------------------------------------------------------------------------

    def _optimizer_state(self) -> dict | None:
        """The inner torch optimizer's state and the fp32 tensors it steps (this rank's shards)."""
        if self.optimizer is None:
            return None
        inner = [o.optimizer for o in self._inner_optimizers()]
        scalers = [o.grad_scaler.state_dict() if o.grad_scaler is not None else None
                   for o in self._inner_optimizers()]  # fp16: the loss scale and its trackers
        return {"inner": [o.state_dict() for o in inner],
                "main": [[p.detach().cpu().clone() for g in o.param_groups for p in g["params"]] for o in inner],
                "grad_scalers": scalers}

    def _load_optimizer_state(self, state: dict) -> None:
        assert self.optimizer is not None, "only a policy worker holds optimizer state"
        inner = [o.optimizer for o in self._inner_optimizers()]
        for megatron_optimizer, scaler in zip(self._inner_optimizers(), state.get("grad_scalers", [])):
            if scaler is not None and megatron_optimizer.grad_scaler is not None:
                megatron_optimizer.grad_scaler.load_state_dict(scaler)
        with torch.no_grad():
            for o, saved_state, saved_main in zip(inner, state["inner"], state["main"]):
                for p, saved in zip((p for g in o.param_groups for p in g["params"]), saved_main):
                    p.copy_(saved)
                o.load_state_dict(saved_state)
                for moments in o.state.values():  # torch.load's storages cannot be resized, so not offloaded
                    for k, v in moments.items():
                        if isinstance(v, Tensor) and not v.untyped_storage().resizable():
                            moments[k] = v.clone()

    @_on_device
    def save(self, directory: str) -> None:
        """Sharded checkpoint: one file per rank with model shard, optimizer, step and RNG states. A rank
        whose write fails (a full disk) makes every rank raise CheckpointSaveError: none waits in a barrier."""
        out = Path(directory)
        path = out / f"rank_{self.rank:05d}.pt"
        state = {
            "layout": (self.shape.tp, self.shape.pp, dist.get_world_size()),
            "model": {n: p.detach().cpu() for n, p in self.model.named_parameters()},
            "optimizer": self._optimizer_state(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state() if self.use_gpu else None},
        }
        error: CheckpointSaveError | None = None
        try:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
            if self.rank == 0:
                path = out / "learner.json"
                path.write_text(json.dumps({"tp": self.shape.tp, "pp": self.shape.pp,
                                            "world_size": dist.get_world_size(), "step": self.step}))
        except (OSError, RuntimeError) as exc:
            error = save_failure(path, exc)
        if not self._all_ranks_ok(error is None):
            raise error or CheckpointSaveError(out, "another learner rank's write failed (its error names the file)")

    @_on_device
    def load(self, directory: str) -> None:
        """Resume from `save(directory)` written by the same layout. The shard is read with weights_only (a
        pickle that would run code is refused, CorruptCheckpoint naming the file); if any rank refuses its
        shard, every rank raises before changing anything."""
        state, error = None, None
        try:
            state = load_tensors(Path(directory) / f"rank_{self.rank:05d}.pt")
            layout = (self.shape.tp, self.shape.pp, dist.get_world_size())
            if tuple(state["layout"]) != layout:
                raise ValueError(f"checkpoint layout (tp, pp, world) {state['layout']} != this group's {layout}")
        except (CheckpointError, ValueError, KeyError, TypeError) as exc:
            error = exc
        if not self._all_ranks_ok(error is None):
            raise error or CheckpointError(f"{directory}: another learner rank refused its shard; nothing loaded")
        assert state is not None
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state["model"][name])
        if self.optimizer is not None:
            self._load_optimizer_state(state["optimizer"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if self.use_gpu and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        dist.barrier()

    def _all_ranks_ok(self, ok: bool) -> bool:
        """Whether every rank got `ok` (a collective, also the barrier): a rank that failed to read or write
        its shard must not leave the others waiting for it."""
        flag = torch.tensor([int(ok)], dtype=torch.int, device=collective_device(dist.get_backend()))
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # --- Hugging Face weights out -----------------------------------------------------------------

    def hf_state_dict_iter(self, receivers: Collection[int] = (0,)) -> Iterator[tuple[str, Tensor]]:
        """Yield (HF name, full tensor) on every rank in `receivers` (rank 0 by default; under the ipc weight
        sync every rank that serves an engine), the same names in the same order on each; every rank must
        drain it (gathers are collective).

        Each stage gathers its tensors over TP, so every rank of the stage holds them; a receiver on another
        stage gets them point to point from the rank of that stage in its own pipeline group.
        """
        ps = self.ps
        params = dict(self.model.named_parameters())
        tp_group = ps.get_tensor_model_parallel_group()
        pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
        receives = self.rank in receivers
        for stage in range(self.shape.pp):
            mine = stage == self.pp_rank
            # The receivers of this pipeline on other stages: this rank hands them what its stage gathered.
            peers = [r for t, r in enumerate(pp_ranks) if t != stage and r in receivers] if mine else []
            for name in hf_megatron.exported_names(self.shape, stage):
                tensors: dict[str, Tensor] = {}
                if mine:
                    local = params[name].detach().contiguous()
                    shards = [torch.empty_like(local) for _ in range(self.shape.tp)]
                    dist.all_gather(shards, local, group=tp_group)
                    tensors = hf_megatron.megatron_to_hf(name, shards, self.shape, pp_rank=stage)
                for hf_name in hf_megatron.hf_names_of(name, self.shape, pp_rank=stage):
                    for peer in peers:
                        _send(tensors[hf_name], dst=peer)
                    if receives:
                        yield hf_name, (tensors[hf_name] if mine else
                                        _recv(src=pp_ranks[stage], dtype=self.dtype, device=self.device))

    @_on_device
    def export_hf(self, directory: str) -> None:
        """Write a plain HF checkpoint (config, model.safetensors, tokenizer files) from rank 0."""
        from safetensors.torch import save_file

        tensors = {n: t.cpu().contiguous() for n, t in self.hf_state_dict_iter()}
        if self.rank == 0:
            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            for f in self.model_path.iterdir():
                if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
                    shutil.copy(f, out / f.name)
            save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        dist.barrier()

    def _rendezvous(self, master_addr: str, master_port: int, rank: int, world_size: int, timeout_s: float,
                    secret: str = "") -> None:
        """Join the default process group at rank 0's (node address, port); rank 0's store listens there only,
        and every key is under the group's `secret`, so only ranks told it can join or read the rendezvous.

        Gloo (CPU groups, and Megatron's gloo side groups on GPU) is told the interface that reaches rank 0:
        by default it resolves the hostname, which on another node or in a container may not be an address
        of this network, and then falls back to loopback.
        """
        import os

        from cluster.network import gloo_interface_for, tcp_store

        interface = gloo_interface_for(master_addr)
        if interface is not None and "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
        store = tcp_store(master_addr, master_port, is_master=rank == 0, timeout_s=timeout_s, world_size=world_size)
        if secret:
            store = dist.PrefixStore(secret, store)
        dist.init_process_group("nccl" if self.use_gpu else "gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """(this node's address as Ray reports it, a port free on it): where rank 0 hosts the transfer group."""
        from cluster.network import node_endpoint

        return node_endpoint()

    def init_weight_sync(self, spec: TransferSpec) -> None:
        """Join the transfer group `spec` (actors.weight_sync.TransferSpec): a sending rank (rank 0; under
        ipc rank e for engine e) as a sender, blocking until its engines joined; the others only gather."""
        from actors.weight_sync import WeightSender

        if self._sender is not None:  # a group formed anew (an engine was replaced): the old one goes,
            self._sender.close()  # its NCCL communicator aborted (one alive per run, however many reloads)
        self._sender, self._sync_spec = None, spec
        if self.rank in spec.sender_ranks:
            self._sender = WeightSender(spec, self.rank)

    @_on_device
    def push_weights(self, version: int, bucket_bytes: int, checksums: bool = False) -> dict:
        """Stream HF-named tensors to the engines from the sending ranks as the gather produces them; all
        ranks must call it. With `checksums`, a sender also returns what its engines should report per
        parameter."""
        if self._sync_spec is None:
            raise RuntimeError("call init_weight_sync before push_weights")
        tensors = self.hf_state_dict_iter(receivers=self._sync_spec.sender_ranks)
        if self._sender is None:
            for _ in tensors:
                pass
            return {}
        try:
            return self._sender.send(tensors, bucket_bytes=bucket_bytes, version=version, checksums=checksums)
        finally:
            for _ in tensors:  # after a failed send: the other ranks are still gathering with this one
                pass

    # --- colocation: the state leaves the device while the engines generate --------------------------

    def _device_state(self) -> tuple[list[Tensor], list[Tensor]]:
        """(tensors whose bytes must survive an offload, gradient buffers that may be dropped).

        Parameters (views of DDP's param buffers), the DistributedOptimizer's fp32 main params and Adam
        state, and the colocated reference's parameters (on GPU it already waits on the host; only
        tensors on this rank's device are moved). Gradients are all zero between `optim_step` and the
        next `forward_backward`, so DDP's grad buffers are freed without a copy."""
        keep: list[Tensor] = [*self.model.parameters()]
        if self.ref_model is not None:
            keep += self.ref_model.parameters()
        discard: list[Tensor] = []
        if self.ddp is not None:
            for buffer in self.ddp.buffers + self.ddp.expert_parallel_buffers:
                keep.append(buffer.param_data)
                discard.append(buffer.grad_data)
        if self.optimizer is not None:
            for o in (o.optimizer for o in getattr(self.optimizer, "chained_optimizers", [self.optimizer])):
                keep += [p for g in o.param_groups for p in g["params"]]
                keep += [v for state in o.state.values() for v in state.values() if isinstance(v, Tensor)]
        return keep, discard

    def offload(self) -> dict[str, float]:
        """Move parameters, optimizer state (fp32 main params, Adam moments) and the reference to host
        memory (pinned on GPU), free the gradient buffers and the allocator's cache. Every verb that needs
        them is refused until `onload`. GiB freed on the device and held on the host."""
        if self._grads_reduced:
            raise RuntimeError(f"{self.role} learner rank {self.rank}: offload between forward_backward and "
                               "optim_step would drop the gradients")
        if self._offloader.active:
            return {"offloaded_gib": 0.0, "host_gib": self._offloader.host_bytes() / 2**30}
        keep, discard = self._device_state()
        freed = self._offloader.offload(keep, discard)
        return {"offloaded_gib": freed / 2**30, "host_gib": self._offloader.host_bytes() / 2**30}

    def onload(self) -> dict[str, float]:
        """Inverse of `offload`: every tensor comes back in place, bit for bit (gradients as zeros)."""
        return {"onloaded_gib": self._offloader.onload() / 2**30}

    def memory(self) -> dict[str, float]:
        """GiB this rank holds: allocated, reserved and peak-allocated CUDA memory since the last call (GPU),
        or its resident set (CPU); and the state parked in host memory while offloaded."""
        parked = {"offloaded_host_gib": self._offloader.host_bytes() / 2**30}
        if self.use_gpu:
            peak = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()  # the next call reports the next step's peak
            return {"allocated_gib": torch.cuda.memory_allocated() / 2**30,
                    "reserved_gib": torch.cuda.memory_reserved() / 2**30, "peak_allocated_gib": peak} | parked
        import psutil

        return {"host_rss_gib": psutil.Process().memory_info().rss / 2**30} | parked

    def shutdown(self) -> None:
        if self._sender is not None:
            self._sender.close()
        self.ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def old_logprobs_or_own(old_logprobs: Tensor, logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor,
                        num_tokens: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The micro-batch's old logprobs [b, s], or, when it carries none ([b, 0]: an exactly on-policy step,
    `trainer.steps.old_logprobs_from_update`), this forward's own, detached: the numbers a second forward
    pass would give (TRL does the same). The controller then has no old logprobs to compare with vLLM's,
    so the gap is measured here, as loss metrics (trainer.grpo's contract: normalised by `num_tokens`,
    summed over micro-batches; `_max` by max)."""
    if old_logprobs.shape[-1] != 0:
        return old_logprobs, {}
    own = logprobs.detach()  # [b, s]
    gap = (own - rollout_logprobs).abs()  # [b, s]
    return own, {"logprob_gap_mean": torch.where(response_mask, gap, 0.0).sum() / max(num_tokens, 1),
                 "logprob_gap_max": torch.where(response_mask, gap, -torch.inf).amax()}


def _trim(mb: TrainBatch) -> TrainBatch:
    """Cut the padding columns beyond the micro-batch's longest sequence."""
    length = int(mb.attention_mask.sum(1).max())
    cut = slice(None, length)
    return mb.replace(input_ids=mb.input_ids[:, cut], attention_mask=mb.attention_mask[:, cut],
                      response_mask=mb.response_mask[:, cut], old_logprobs=mb.old_logprobs[:, cut],
                      ref_logprobs=mb.ref_logprobs[:, cut], rollout_logprobs=mb.rollout_logprobs[:, cut])


def _send(t: Tensor, dst: int) -> None:
    header = torch.full((_MAX_NDIM + 1,), -1, dtype=torch.int64)
    header[0] = t.ndim
    header[1 : t.ndim + 1] = torch.tensor(t.shape)
    dist.send(header.to(t.device), dst=dst)
    dist.send(t.contiguous(), dst=dst)


def _recv(src: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    header = torch.empty(_MAX_NDIM + 1, dtype=torch.int64, device=device)
    dist.recv(header, src=src)
    shape = header[1 : int(header[0]) + 1].tolist()
    out = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(out, src=src)
    return out


@contextlib.contextmanager
def _safetensors(model_dir: Path):
    """A reader `name -> Tensor` over every *.safetensors file of a HF model directory."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        index = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            handle = stack.enter_context(safe_open(str(f), framework="pt"))
            index.update(dict.fromkeys(handle.keys(), handle))
        if not index:
            raise FileNotFoundError(f"no *.safetensors in {model_dir}")

        def read(name: str) -> Tensor:
            if name not in index:
                raise KeyError(f"{name!r} not in the checkpoint at {model_dir}")
            return index[name].get_tensor(name)

        yield read
