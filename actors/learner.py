"""The learner: one Megatron-core rank of the policy (or of the frozen reference), TP x PP x DP.

`LearnerWorker` is a plain class; `cluster.learner_group.LearnerGroup` wraps it with `ray.remote`, one
actor per rank, and calls every verb on all ranks at once (the verbs are collective).

    TrainBatch (this rank's DP slice) -> micro-batches (balanced by tokens, padding cut)
        -> Megatron pipeline schedule (forward, loss from trainer.grpo.LOSSES[name], backward)
        -> grads summed over DP -> optim_step (global-norm clip across TP/PP, AdamW, LR schedule)

The learner knows nothing about GRPO: it computes per-token logprobs (vocab-parallel, padded vocab rows
masked) and hands them to the named loss with the batch's tensors and the caller's global counts.

Departures from a GPU Megatron setup, all on the CPU path (gloo): gradients are all-reduced over DP with
a plain all-reduce and the optimizer is torch AdamW over the local shards (Megatron's DDP and distributed
optimizer assume CUDA buffers). The GPU path currently uses the same plain code on CUDA tensors.
Weight decay applies to matrices only (not to norms or biases).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from actors import hf_megatron, megatron_cpu
from trainer.types import TrainBatch

_MAX_NDIM = 4
"""Header length for shipping a tensor's shape between pipeline stages (HF tensors have <= 2 dims)."""


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


COSINE_FLOOR = 0.1
"""Cosine decays to this fraction of the peak LR (LearnerConfig.lr_schedule's documented end point)."""


def lr_at(step: int, s: OptimizerSettings) -> float:
    """LR of optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def plan_microbatches(lengths: list[int], sequences_per_microbatch: int) -> list[list[int]]:
    """Split sequence indices into ceil(N / spm) micro-batches of at most spm with balanced token counts.

    Longest first, each to the lightest micro-batch with room (greedy LPT); similar lengths end up
    together, so cutting each micro-batch to its longest sequence wastes little.
    """
    n = len(lengths)
    count = max(1, -(-n // sequences_per_microbatch))
    bins: list[list[int]] = [[] for _ in range(count)]
    tokens = [0] * count
    for i in sorted(range(n), key=lambda i: -lengths[i]):
        b = min((b for b in range(count) if len(bins[b]) < sequences_per_microbatch), key=lambda b: tokens[b])
        bins[b].append(i)
        tokens[b] += lengths[i]
    return [sorted(b) for b in bins if b]


def vocab_parallel_logprobs(logits: Tensor, targets: Tensor, *, vocab_start: int, vocab_size: int,
                            group) -> tuple[Tensor, Tensor]:
    """Log p(target) and entropy from this TP rank's vocab slice of the logits.

    logits [B, S, V/tp] (rows >= vocab_size are padding and get probability 0), targets [B, S] int64.
    Returns logprobs [B, S] (differentiable) and entropy [B, S] (detached).
    """
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region as tp_sum

    logits = logits.float()
    local_vocab = logits.shape[-1]
    ids = torch.arange(vocab_start, vocab_start + local_vocab, device=logits.device)  # [V/tp]
    padding = ids >= vocab_size  # [V/tp]
    logits = logits.masked_fill(padding, float("-inf"))  # [B, S, V/tp]
    peak = logits.detach().amax(dim=-1, keepdim=True)  # [B, S, 1]
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - peak  # [B, S, V/tp]
    log_norm = tp_sum(shifted.exp().sum(dim=-1), group=group).log()  # [B, S]
    local = targets - vocab_start  # [B, S]
    here = (local >= 0) & (local < local_vocab)  # [B, S]
    picked = shifted.gather(-1, local.clamp(0, local_vocab - 1).unsqueeze(-1)).squeeze(-1)  # [B, S]
    target_logit = tp_sum(torch.where(here, picked, torch.zeros_like(picked)), group=group)  # [B, S]
    logprobs = target_logit - log_norm  # [B, S]
    with torch.no_grad():
        probs = (shifted - log_norm.unsqueeze(-1)).exp()  # [B, S, V/tp], 0 on padding
        finite = torch.where(padding, torch.zeros_like(shifted), shifted)
        expected = (probs * finite).sum(-1)  # [B, S]
        dist.all_reduce(expected, group=group)
        entropy = log_norm.detach() - expected  # [B, S]
    return logprobs, entropy


class LearnerWorker:
    """One Megatron rank. Every verb is collective: call it on all ranks of the group together."""

    def __init__(self, *, rank: int, world_size: int, master_addr: str, master_port: int, tp: int = 1,
                 pp: int = 1, dp: int = 1, model_path: str, dtype: str = "float32", seed: int = 0,
                 optimizer: OptimizerSettings | None = None, sequences_per_microbatch: int = 16,
                 role: str = "policy", hold_reference: bool = False, num_threads: int = 1,
                 timeout_s: float = 600.0):
        if role not in ("policy", "reference"):
            raise ValueError(f"role must be 'policy' or 'reference', not {role!r}")
        if tp * pp * dp != world_size:
            raise ValueError(f"tp x pp x dp = {tp * pp * dp} must equal world_size = {world_size}")
        torch.set_num_threads(num_threads)
        self.rank, self.role = rank, role
        self.use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        if not self.use_gpu:
            megatron_cpu.apply()
        dist.init_process_group("nccl" if self.use_gpu else "gloo", init_method=f"tcp://{master_addr}:{master_port}",
                                rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
        from megatron.core import parallel_state as ps

        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        self.ps = ps
        self.tp_rank, self.pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        self.dp_rank = ps.get_data_parallel_rank()
        torch.manual_seed(seed)
        random.seed(seed)

        from transformers import AutoConfig

        self.model_path = Path(model_path)
        self.shape = hf_megatron.shape_from_hf(AutoConfig.from_pretrained(model_path), tp=tp, pp=pp)
        self.dtype = getattr(torch, dtype)
        self.spm = sequences_per_microbatch
        self.model = self._load_model(trainable=role == "policy")
        self.ref_model = self._load_model(trainable=False) if hold_reference else None
        if self.ref_model is not None and self.use_gpu:
            self.ref_model.to("cpu")  # offloaded while idle
        self.settings = optimizer or OptimizerSettings()
        self.step = 0
        self.optimizer = self._make_optimizer() if role == "policy" else None
        self._sender = None

    # --- construction ---------------------------------------------------------------------------

    def coords(self) -> dict[str, int]:
        """This rank's place: rank, tp_rank, pp_rank, dp_rank, and whether it holds the model's output."""
        last = self.pp_rank == self.shape.pp - 1
        return dict(rank=self.rank, tp_rank=self.tp_rank, pp_rank=self.pp_rank, dp_rank=self.dp_rank,
                    is_output=int(last and self.tp_rank == 0))

    def _load_model(self, *, trainable: bool) -> torch.nn.Module:
        config = hf_megatron.transformer_config(self.shape, dtype=self.dtype, use_cpu=not self.use_gpu)
        model = hf_megatron.build_gpt_model(self.shape, config, pre_process=self.pp_rank == 0,
                                            post_process=self.pp_rank == self.shape.pp - 1)
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
        model.to(self.device)
        model.requires_grad_(trainable)
        return model.train(trainable)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr_at(0, s), betas=(s.beta1, s.beta2))

    # --- logprobs -------------------------------------------------------------------------------

    def compute_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """[N, L] float32 logprobs aligned with input_ids (position 0 and padding are 0); None off the last stage."""
        return self._forward_only(self.model, batch)

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

    def _forward_only(self, model: torch.nn.Module, batch: TrainBatch) -> Tensor | None:
        plan = plan_microbatches(batch.attention_mask.sum(1).tolist(), self.spm)
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

    def forward_backward(self, batch: TrainBatch, loss_name: str, num_tokens: int, num_sequences: int,
                         loss_kwargs: dict) -> dict[str, float]:
        """Accumulate gradients of LOSSES[loss_name] over this rank's batch; metrics reduced over DP.

        `num_tokens` / `num_sequences` count the whole update (all DP ranks); the loss is normalised
        by them, so summed gradients are the update's gradient. Returns {} off the last stage.
        """
        from trainer.grpo import LOSSES, reduce_metrics

        loss = partial(LOSSES[loss_name], num_tokens=num_tokens, num_sequences=num_sequences, **loss_kwargs)
        plan = plan_microbatches(batch.attention_mask.sum(1).tolist(), self.spm)
        metrics = self._run_schedule(self.model, batch, plan, loss=(loss, num_tokens), forward_only=False)
        self._sync_grads()
        if metrics is None:
            return {}
        return self._reduce_over_dp(reduce_metrics(metrics))

    def _run_schedule(self, model, batch: TrainBatch, plan: list[list[int]], *, loss, forward_only: bool):
        """Megatron's forward/backward schedule over the micro-batches `plan`; per-micro-batch dicts or None."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        micro = [_trim(batch.select(torch.tensor(rows))) for rows in plan]
        step = partial(self._forward_step, loss=loss)
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(micro), model=[model], num_microbatches=len(micro),
            seq_length=max(m.input_ids.shape[1] for m in micro), micro_batch_size=self.spm,
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
        # logits at t predict token t + 1; position 0 has no prediction and stays 0.
        lp, entropy = vocab_parallel_logprobs(logits[:, :-1], ids[:, 1:], vocab_start=vocab_start,
                                              vocab_size=self.shape.vocab_size,
                                              group=self.ps.get_tensor_model_parallel_group())  # [b, s-1]
        logprobs = torch.nn.functional.pad(lp, (1, 0))  # [b, s]
        count = torch.tensor(1, dtype=torch.int)
        if loss is None:
            return logprobs.sum() * 0, count, {"logprobs": logprobs.detach()}
        loss_fn, num_tokens = loss
        mask = mb.response_mask.to(self.device)  # [b, s]
        value, metrics = loss_fn(
            logprobs, old_logprobs=mb.old_logprobs.to(self.device), ref_logprobs=mb.ref_logprobs.to(self.device),
            rollout_logprobs=mb.rollout_logprobs.to(self.device), advantages=mb.advantages.to(self.device),
            response_mask=mask)
        token_entropy = torch.nn.functional.pad(entropy, (1, 0))  # [b, s]
        metrics = dict(metrics, entropy=(token_entropy * mask).sum() / max(num_tokens, 1))
        return value, count, metrics

    def _sync_grads(self) -> None:
        """Sum gradients over DP; with PP and tied embeddings also over the embedding's two copies."""
        ps = self.ps
        params = [p for p in self.model.parameters() if p.grad is not None]
        if ps.get_data_parallel_world_size() > 1:
            for p in params:
                dist.all_reduce(p.grad, group=ps.get_data_parallel_group())
        if self.shape.tied_embeddings and self.shape.pp > 1 and ps.is_rank_in_embedding_group():
            named = dict(self.model.named_parameters())
            name = "embedding.word_embeddings.weight" if self.pp_rank == 0 else "output_layer.weight"
            dist.all_reduce(named[name].grad, group=ps.get_embedding_group())

    def _reduce_over_dp(self, metrics: dict[str, float]) -> dict[str, float]:
        from trainer.grpo import metric_reduction

        if self.ps.get_data_parallel_world_size() == 1:
            return metrics
        names = sorted(metrics)
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        out = {}
        for name in names:
            value = torch.tensor(metrics[name], dtype=torch.float64)
            dist.all_reduce(value, op=ops[metric_reduction(name)], group=self.ps.get_data_parallel_group())
            out[name] = float(value)
        return out

    def optim_step(self) -> dict[str, float]:
        """Clip by the global grad norm (across TP and PP), AdamW step at the scheduled LR, zero grads."""
        if self.optimizer is None:
            raise RuntimeError("a reference worker has no optimizer")
        norm = self._global_grad_norm()
        clip = self.settings.grad_clip
        if clip > 0:
            # torch.nn.utils.clip_grad_norm_'s rule, so single-process HF runs match exactly.
            coef = min(1.0, clip / (norm + 1e-6))
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(coef)
        lr = lr_at(self.step, self.settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"grad_norm": norm, "lr": lr}

    def _global_grad_norm(self) -> float:
        """L2 norm of the full model's gradient: replicated tensors (norms, the tied output copy) count once."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            if not hf_megatron.is_tensor_parallel(name) and self.tp_rank != 0:
                continue
            if name == "output_layer.weight" and self.shape.tied_embeddings:
                continue  # the last stage's copy of the embedding: its grad was summed into the first's
            total += p.grad.double().pow(2).sum()
        dist.all_reduce(total, group=self.ps.get_model_parallel_group())
        return float(total.sqrt())

    # --- checkpoints ----------------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Sharded checkpoint: one file per rank with model shard, optimizer, step and RNG states."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            "layout": (self.shape.tp, self.shape.pp, dist.get_world_size()),
            "model": {n: p.detach().cpu() for n, p in self.model.named_parameters()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state() if self.use_gpu else None},
        }
        torch.save(state, out / f"rank_{self.rank:05d}.pt")
        if self.rank == 0:
            (out / "learner.json").write_text(json.dumps({"tp": self.shape.tp, "pp": self.shape.pp,
                                                          "world_size": dist.get_world_size(),
                                                          "step": self.step}))
        dist.barrier()

    def load(self, directory: str) -> None:
        """Resume from `save(directory)` written by the same layout. Plain tensors only
        (`weights_only=True`): a planted pickle is refused; a bad shard raises an error naming it."""
        from trainer.checkpoint import load_tensors

        state = load_tensors(Path(directory) / f"rank_{self.rank:05d}.pt")
        layout = (self.shape.tp, self.shape.pp, dist.get_world_size())
        if tuple(state["layout"]) != layout:
            raise ValueError(f"checkpoint layout (tp, pp, world) {state['layout']} != this group's {layout}")
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state["model"][name])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if self.use_gpu and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        dist.barrier()

    # --- Hugging Face weights out -----------------------------------------------------------------

    def hf_state_dict_iter(self) -> Iterator[tuple[str, Tensor]]:
        """Yield (HF name, full tensor) on rank 0; every rank must drain it (gathers are collective).

        Each stage gathers its tensors over TP; stage s > 0 ships them to rank 0 point to point.
        """
        ps = self.ps
        params = dict(self.model.named_parameters())
        tp_group = ps.get_tensor_model_parallel_group()
        pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
        sends = self.tp_rank == 0 and self.dp_rank == 0
        for stage in range(self.shape.pp):
            for name in hf_megatron.exported_names(self.shape, stage):
                tensors: dict[str, Tensor] = {}
                if stage == self.pp_rank:
                    local = params[name].detach().contiguous()
                    shards = [torch.empty_like(local) for _ in range(self.shape.tp)]
                    dist.all_gather(shards, local, group=tp_group)
                    tensors = hf_megatron.megatron_to_hf(name, shards, self.shape, pp_rank=stage)
                if stage == 0:
                    if self.rank == 0:
                        yield from tensors.items()
                    continue
                for hf_name in hf_megatron.hf_names_of(name, self.shape, pp_rank=stage):
                    if stage == self.pp_rank and sends:
                        _send(tensors[hf_name], dst=pp_ranks[0])
                    elif self.rank == 0:
                        yield hf_name, _recv(src=pp_ranks[stage], dtype=self.dtype, device=self.device)

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

    def init_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 joins the transfer group as its sender (blocks until every engine joined)."""
        if self.rank == 0:
            from actors.weight_sync import WeightSender

            self._sender = WeightSender(host, port, world_size, timeout_s)

    def push_weights(self, version: int, bucket_bytes: int) -> dict:
        """Gather HF-named tensors and stream them to the engines from rank 0; all ranks must call it."""
        if self.rank != 0:
            for _ in self.hf_state_dict_iter():
                pass
            return {}
        if self._sender is None:
            raise RuntimeError("call init_weight_sync before push_weights")
        return self._sender.send(self.hf_state_dict_iter(), bucket_bytes=bucket_bytes, version=version)

    def shutdown(self) -> None:
        self.ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


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
