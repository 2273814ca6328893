"""The learner's sharded checkpoint: one file per rank (model shard, optimizer state, step, RNG states) and
rank 0's `learner.json` (the layout). A rank that fails to write or read its shard makes every rank raise,
decided by one collective (`all_ranks_ok`), so none is left waiting in a barrier."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from actors.hf_megatron import ModelShape
from actors.learner_optim import inner_optimizers
from actors.learner_parallel import all_ranks_ok
from trainer.checkpoint import CheckpointError, CheckpointSaveError, load_tensors, save_failure

if TYPE_CHECKING:
    from megatron.core.optimizer import MegatronOptimizer


def save_shard(directory: str, *, rank: int, shape: ModelShape, model: torch.nn.Module,
               optimizer: MegatronOptimizer | None, step: int, use_gpu: bool) -> None:
    """Write this rank's shard (and, on rank 0, learner.json); collective. Raises CheckpointSaveError on every
    rank when any rank's write failed (a full disk)."""
    out = Path(directory)
    path = out / f"rank_{rank:05d}.pt"
    state = {
        "layout": (shape.tp, shape.pp, dist.get_world_size()),
        "model": {n: p.detach().cpu() for n, p in model.named_parameters()},
        "optimizer": optimizer_state(optimizer) if optimizer is not None else None,
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state() if use_gpu else None},
    }
    error: CheckpointSaveError | None = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        if rank == 0:
            path = out / "learner.json"
            path.write_text(json.dumps({"tp": shape.tp, "pp": shape.pp, "world_size": dist.get_world_size(),
                                        "step": step}))
    except (OSError, RuntimeError) as exc:
        error = save_failure(path, exc)
    if not all_ranks_ok(error is None):
        raise error or CheckpointSaveError(out, "another learner rank's write failed (its error names the file)")


def load_shard(directory: str, *, rank: int, shape: ModelShape, model: torch.nn.Module,
               optimizer: MegatronOptimizer | None, use_gpu: bool) -> int:
    """Restore what `save_shard` wrote for the same layout; returns the step. The shard is read with
    weights_only (a pickle that would run code is refused, CorruptCheckpoint naming the file); if any rank
    refuses its shard, every rank raises before changing anything."""
    state, error = None, None
    try:
        state = load_tensors(Path(directory) / f"rank_{rank:05d}.pt")
        layout = (shape.tp, shape.pp, dist.get_world_size())
        if tuple(state["layout"]) != layout:
            raise ValueError(f"checkpoint layout (tp, pp, world) {state['layout']} != this group's {layout}")
    except (CheckpointError, ValueError, KeyError, TypeError) as exc:
        error = exc
    if not all_ranks_ok(error is None):
        raise error or CheckpointError(f"{directory}: another learner rank refused its shard; nothing loaded")
    assert state is not None, "all_ranks_ok was true, so this rank read its shard"
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state["model"][name])
    if optimizer is not None:
        load_optimizer_state(optimizer, state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if use_gpu and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    dist.barrier()
    return int(state["step"])


def optimizer_state(optimizer: MegatronOptimizer) -> dict:
    """The inner torch optimizers' state, the fp32 tensors they step (this rank's shards) and, under fp16,
    each loss scaler's scale and trackers."""
    megatron = inner_optimizers(optimizer)
    inner = [o.optimizer for o in megatron]
    scalers = [o.grad_scaler.state_dict() if o.grad_scaler is not None else None for o in megatron]
    return {"inner": [o.state_dict() for o in inner],
            "main": [[p.detach().cpu().clone() for g in o.param_groups for p in g["params"]] for o in inner],
            "grad_scalers": scalers}


def load_optimizer_state(optimizer: MegatronOptimizer, state: dict) -> None:
    """Inverse of `optimizer_state`, in place (the tensors stay the objects DDP and the offloader know)."""
    megatron = inner_optimizers(optimizer)
    for megatron_optimizer, scaler in zip(megatron, state.get("grad_scalers", [])):
        if scaler is not None and megatron_optimizer.grad_scaler is not None:
            megatron_optimizer.grad_scaler.load_state_dict(scaler)
    with torch.no_grad():
        for o, saved_state, saved_main in zip((o.optimizer for o in megatron), state["inner"], state["main"]):
            for p, saved in zip((p for g in o.param_groups for p in g["params"]), saved_main):
                p.copy_(saved)
            o.load_state_dict(saved_state)
            for moments in o.state.values():  # torch.load's storages cannot be resized, so not offloaded
                for k, v in moments.items():
                    if isinstance(v, Tensor) and not v.untyped_storage().resizable():
                        moments[k] = v.clone()
