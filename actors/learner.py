"""The learner: one Megatron-core rank of the policy (or of the frozen reference), TP x PP x DP.

`LearnerWorker` is a plain class; `actors.learner_group.LearnerGroup` wraps it with `ray.remote`, one
actor per rank, and calls every verb on all ranks at once (the verbs are collective). The GPU check
(`examples/gpu_check.py`) builds it directly, without Ray.

    TrainBatch (this rank's DP slice) -> micro-batches (by sequence count or by token budget; with
        `pack_sequences`, packed end to end to the token budget without padding: actors.packing)
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

`LearnerWorker` is the face the group calls; the work lives in one module per concern:

    actors.learner_parallel    rendezvous, Megatron's process groups, seeds, metric and "all ok" collectives
    actors.learner_model       a GPTModel stage filled from the HF checkpoint
    actors.learner_optim       DDP, DistributedOptimizer, LR schedule, the optimizer step
    actors.learner_schedule    micro-batch plan, Megatron's pipeline schedule, the loss function
    actors.learner_checkpoint  sharded save / load
    actors.learner_export      HF tensors out (weight sync, export_hf)
    actors.offload             the state that leaves the device while colocated engines generate
    actors.weight_sync         the sender that streams the HF tensors to the engines
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from actors import hf_megatron, megatron_cpu
from actors.learner_checkpoint import load_shard, save_shard
from actors.learner_export import hf_tensors, write_hf
from actors.learner_model import RECOMPUTE_MODES, load_model, visiting
from actors.learner_optim import (
    ADAM_EPS,
    FP16_HYSTERESIS,
    FP16_INITIAL_LOSS_SCALE,
    OptimizerSettings,
    finalize_grads,
    lr_at,
    make_optimizer,
    master_weights,
    optimizer_step,
    wrap_ddp,
)
from actors.learner_parallel import (
    collective_device,
    init_model_parallel,
    reduce_metrics_over,
    rendezvous,
    seed_everything,
)
from actors.learner_schedule import StageSchedule, old_logprobs_or_own, plan_microbatches
from actors.offload import StorageOffloader, megatron_state, memory_gib
from trainer.types import TrainBatch

if TYPE_CHECKING:
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.optimizer import MegatronOptimizer

    from actors.weight_sync import TransferSpec, WeightSender

__all__ = [  # names callers and tests import from here; they live in the modules above
    "ADAM_EPS", "FP16_HYSTERESIS", "FP16_INITIAL_LOSS_SCALE", "RECOMPUTE_MODES", "LearnerWorker",
    "OptimizerSettings", "collective_device", "lr_at", "old_logprobs_or_own", "plan_microbatches",
    "reduce_metrics_over",
]

P = ParamSpec("P")
R = TypeVar("R")


def _on_device(verb: Callable[Concatenate[LearnerWorker, P], R]) -> Callable[Concatenate[LearnerWorker, P], R]:
    """A verb that needs the state on the device: refused, with the reason, while it is offloaded."""

    @wraps(verb)
    def checked(self: LearnerWorker, *args: P.args, **kwargs: P.kwargs) -> R:
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
                 tokens_per_microbatch: int = 0, pack_sequences: bool = False, recompute: str = "none",
                 attention: str = "sdpa", role: str = "policy", temperature: float = 1.0,
                 hold_reference: bool = False, num_threads: int = 1, timeout_s: float = 600.0,
                 store_secret: str = ""):
        _check_arguments(role=role, recompute=recompute, world_size=world_size, tp=tp, pp=pp, dp=dp,
                         temperature=temperature)
        check_packing(pack_sequences, tokens_per_microbatch=tokens_per_microbatch, attention=attention)
        from actors.versions import check_megatron

        check_megatron(where=f"{role} learner rank {rank}")  # before anything is built on its internals
        torch.set_num_threads(num_threads)
        self.rank, self.role = rank, role
        self.use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        if not self.use_gpu:
            megatron_cpu.apply()
        rendezvous(master_addr, master_port, rank=rank, world_size=world_size, timeout_s=timeout_s,
                   backend="nccl" if self.use_gpu else "gloo", secret=store_secret)
        self.ps = init_model_parallel(tp, pp)  # Megatron's parallel_state: ranks and groups from here on
        self.tp_rank = self.ps.get_tensor_model_parallel_rank()
        self.pp_rank = self.ps.get_pipeline_model_parallel_rank()
        self.dp_rank = self.ps.get_data_parallel_rank()
        seed_everything(seed, use_gpu=self.use_gpu)
        self._build(model_path, dtype, tp=tp, pp=pp, recompute=recompute, attention=attention,
                    hold_reference=hold_reference)
        self.spm, self.tokens_per_microbatch = sequences_per_microbatch, tokens_per_microbatch
        self.schedule = StageSchedule(self.shape, tp_rank=self.tp_rank, pp_rank=self.pp_rank, device=self.device,
                                      temperature=temperature, tp_group=self.ps.get_tensor_model_parallel_group(),
                                      pack=pack_sequences)
        self.settings = optimizer or OptimizerSettings()
        self.step = 0
        self.ddp: DistributedDataParallel | None = wrap_ddp(self.model) if role == "policy" else None
        self.optimizer: MegatronOptimizer | None = (
            make_optimizer(self.ddp, self.settings, dtype=self.dtype) if self.ddp is not None else None)
        self._grads_reduced = False
        self._sender: WeightSender | None = None
        self._sync_spec: TransferSpec | None = None
        self._offloader = StorageOffloader(self.device)

    def _build(self, model_path: str, dtype: str, *, tp: int, pp: int, recompute: str, attention: str,
               hold_reference: bool) -> None:
        """This rank's stage of the model (and of the colocated reference), from the HF checkpoint."""
        from transformers import AutoConfig

        self.model_path = Path(model_path)
        self.shape = hf_megatron.shape_from_hf(AutoConfig.from_pretrained(model_path), tp=tp, pp=pp)
        self.dtype = getattr(torch, dtype)
        load = partial(load_model, self.model_path, self.shape, tp_rank=self.tp_rank, pp_rank=self.pp_rank,
                       dtype=self.dtype, device=self.device, recompute=recompute, attention=attention)
        self.model = load(trainable=self.role == "policy")
        self.ref_model = load(trainable=False) if hold_reference else None
        if self.ref_model is not None and self.use_gpu:
            self.ref_model.to("cpu")  # offloaded while idle (`visiting`)

    def coords(self) -> dict[str, int]:
        """This rank's place: rank, tp_rank, pp_rank, dp_rank, and whether it holds the model's output."""
        last = self.pp_rank == self.shape.pp - 1
        return dict(rank=self.rank, tp_rank=self.tp_rank, pp_rank=self.pp_rank, dp_rank=self.dp_rank,
                    is_output=int(last and self.tp_rank == 0))

    @property
    def fp16(self) -> bool:
        return self.dtype == torch.float16

    def master_weights(self) -> dict[str, Tensor]:
        """This rank's fp32 main copy of each parameter (its DP shard, flat; whole and shaped when DP = 1)."""
        return master_weights(self.model)

    # --- logprobs and training ------------------------------------------------------------------

    @_on_device
    def compute_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """[N, L] float32 logprobs aligned with input_ids (position 0 and padding are 0); None off the last stage."""
        return self.schedule.logprobs(self.model, batch, self._plan(batch))

    @_on_device
    def compute_ref_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """Logprobs of the colocated frozen reference (or of this worker's model when role='reference')."""
        if self.role == "policy" and self.ref_model is None:
            raise RuntimeError("this policy worker holds no colocated reference (hold_reference=False)")
        if self.ref_model is None:
            return self.schedule.logprobs(self.model, batch, self._plan(batch))
        with visiting(self.ref_model, self.device):
            return self.schedule.logprobs(self.ref_model, batch, self._plan(batch))

    def _plan(self, batch: TrainBatch) -> list[list[int]]:
        return plan_microbatches(batch.attention_mask.sum(1).tolist(), self.spm, self.tokens_per_microbatch,
                                 pack=self.schedule.pack)

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
        metrics = self.schedule.run(self.ddp, batch, self._plan(batch), loss=(loss, num_tokens))
        finalize_grads(self.ddp)
        self._grads_reduced = True
        if metrics is None:
            return {}
        reduced = reduce_metrics(metrics)
        return reduce_metrics_over(reduced, {n: metric_reduction(n) for n in reduced},
                                   self.ps.get_data_parallel_group())

    @_on_device
    def optim_step(self) -> dict[str, float]:
        """Clip by the global grad norm (across TP, PP, DP), AdamW step at the scheduled LR, zero grads. The
        LR schedule moves on after an fp16 step that overflowed, as the run's step count does."""
        if self.optimizer is None or self.ddp is None:
            raise RuntimeError("a reference worker has no optimizer")
        stats = optimizer_step(self.optimizer, self.ddp, lr=lr_at(self.step, self.settings), fp16=self.fp16)
        self._grads_reduced = False
        self.step += 1
        return stats

    # --- checkpoints and Hugging Face weights out -------------------------------------------------

    @_on_device
    def save(self, directory: str) -> None:
        """Sharded checkpoint: one file per rank with model shard, optimizer, step and RNG states. A rank
        whose write fails (a full disk) makes every rank raise CheckpointSaveError: none waits in a barrier."""
        save_shard(directory, rank=self.rank, shape=self.shape, model=self.model, optimizer=self.optimizer,
                   step=self.step, use_gpu=self.use_gpu)

    @_on_device
    def load(self, directory: str) -> None:
        """Resume from `save(directory)` written by the same layout; if any rank refuses its shard, every
        rank raises before changing anything (`actors.learner_checkpoint.load_shard`)."""
        self.step = load_shard(directory, rank=self.rank, shape=self.shape, model=self.model,
                               optimizer=self.optimizer, use_gpu=self.use_gpu)

    def hf_state_dict_iter(self, receivers: Collection[int] = (0,)) -> Iterator[tuple[str, Tensor]]:
        """Yield (HF name, full tensor) on every rank in `receivers` (rank 0 by default; under the ipc weight
        sync every rank that serves an engine), the same names in the same order on each; every rank must
        drain it (gathers are collective)."""
        return hf_tensors(self.model, self.shape, self.ps, rank=self.rank, pp_rank=self.pp_rank, dtype=self.dtype,
                          device=self.device, receivers=receivers)

    @_on_device
    def export_hf(self, directory: str) -> None:
        """Write a plain HF checkpoint (config, model.safetensors, tokenizer files) from rank 0."""
        tensors = {n: t.cpu().contiguous() for n, t in self.hf_state_dict_iter()}
        if self.rank == 0:
            write_hf(tensors, model_path=self.model_path, directory=directory)
        dist.barrier()

    # --- the sending half of weight sync (actors.weight_sync) -----------------------------------

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """(this node's address as Ray reports it, a port free on it): where rank 0 hosts the transfer group."""
        from cluster.network import node_endpoint

        return node_endpoint()

    def init_weight_sync(self, spec: TransferSpec) -> None:
        """Join the transfer group `spec`: a sending rank (rank 0; under ipc rank e for engine e) as a
        sender, blocking until its engines joined; the others only gather."""
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
        try:
            if self._sender is None:
                return {}
            return self._sender.send(tensors, bucket_bytes=bucket_bytes, version=version, checksums=checksums)
        finally:
            for _ in tensors:  # a rank that only gathers, or a failed send: the others still gather with it
                pass

    # --- colocation: the state leaves the device while the engines generate --------------------------

    def _device_state(self) -> tuple[list[Tensor], list[Tensor]]:
        """(tensors whose bytes must survive an offload, gradient buffers that may be dropped)."""
        models = [self.model] if self.ref_model is None else [self.model, self.ref_model]
        return megatron_state(models, self.ddp, self.optimizer)

    def offload(self) -> dict[str, float]:
        """Move parameters, optimizer state (fp32 main params, Adam moments) and the reference to host
        memory (pinned on GPU), free the gradient buffers and the allocator's cache. Every verb that needs
        them is refused until `onload`. GiB freed on the device and held on the host."""
        if self._grads_reduced:
            raise RuntimeError(f"{self.role} learner rank {self.rank}: offload between forward_backward and "
                               "optim_step would drop the gradients")
        freed = 0 if self._offloader.active else self._offloader.offload(*self._device_state())
        return {"offloaded_gib": freed / 2**30, "host_gib": self._offloader.host_bytes() / 2**30}

    def onload(self) -> dict[str, float]:
        """Inverse of `offload`: every tensor comes back in place, bit for bit (gradients as zeros)."""
        return {"onloaded_gib": self._offloader.onload() / 2**30}

    def memory(self) -> dict[str, float]:
        """GiB this rank holds: allocated, reserved and peak-allocated CUDA memory since the last call (GPU),
        or its resident set (CPU); and the state parked in host memory while offloaded."""
        return memory_gib(self.use_gpu) | {"offloaded_host_gib": self._offloader.host_bytes() / 2**30}

    def shutdown(self) -> None:
        if self._sender is not None:
            self._sender.close()
        self.ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def check_packing(pack_sequences: bool, *, tokens_per_microbatch: int, attention: str) -> None:
    """Packed sequences need a token budget to pack to and an attention that reads `PackedSeqParams`."""
    if not pack_sequences:
        return
    if tokens_per_microbatch <= 0:
        raise ValueError("pack_sequences needs tokens_per_microbatch > 0: the budget of real tokens each packed "
                         f"micro-batch is filled to (got {tokens_per_microbatch})")
    if attention != "sdpa":
        raise ValueError(f"pack_sequences needs attention='sdpa', not {attention!r}: Megatron's local "
                         "DotProductAttention refuses packed sequences")


def _check_arguments(*, role: str, recompute: str, world_size: int, tp: int, pp: int, dp: int,
                     temperature: float) -> None:
    """Refuse a bad construction before Megatron is checked or any process group is joined."""
    if role not in ("policy", "reference"):
        raise ValueError(f"role must be 'policy' or 'reference', not {role!r}")
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, not {recompute!r}")
    if tp * pp * dp != world_size:
        raise ValueError(f"tp x pp x dp = {tp * pp * dp} must equal world_size = {world_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
