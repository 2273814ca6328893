"""A learner rank's process groups: the rendezvous at rank 0, Megatron's TP x PP x DP groups, the seeds, and
the few collectives the learner runs outside Megatron (metrics over DP, "did every rank succeed")."""

from __future__ import annotations

import os
import random
from datetime import timedelta
from types import ModuleType

import torch
import torch.distributed as dist


def rendezvous(master_addr: str, master_port: int, *, rank: int, world_size: int, backend: str, timeout_s: float,
               secret: str = "") -> None:
    """Join the default process group at rank 0's (node address, port); rank 0's store listens there only,
    and every key is under the group's `secret`, so only ranks told it can join or read the rendezvous.

    Gloo (CPU groups, and Megatron's gloo side groups on GPU) is told the interface that reaches rank 0:
    by default it resolves the hostname, which on another node or in a container may not be an address
    of this network, and then falls back to loopback.
    """
    from cluster.network import gloo_interface_for, tcp_store

    interface = gloo_interface_for(master_addr)
    if interface is not None and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    store: dist.Store = tcp_store(master_addr, master_port, is_master=rank == 0, timeout_s=timeout_s,
                                  world_size=world_size)
    if secret:
        store = dist.PrefixStore(secret, store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def init_model_parallel(tp: int, pp: int) -> ModuleType:
    """Megatron's TP x PP x DP groups over the default group; returns its `parallel_state` module (which
    answers every rank and group question from then on)."""
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    return ps


def seed_everything(seed: int, *, use_gpu: bool) -> None:
    """Seed torch and Python; on GPU also the tracker whose "model-parallel-rng" state Megatron's attention
    and TP layers fork (there is no CUDA generator to seed on CPU)."""
    torch.manual_seed(seed)
    random.seed(seed)
    if use_gpu:
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def collective_device(backend: str) -> torch.device:
    """Where a tensor must live for a collective on a group of this backend: NCCL needs CUDA, gloo CPU."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_metrics_over(metrics: dict[str, float], reductions: dict[str, str],
                        group: dist.ProcessGroup | None) -> dict[str, float]:
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


def all_ranks_ok(ok: bool) -> bool:
    """Whether every rank got `ok` (a collective, also the barrier): a rank that failed to read or write
    its shard must not leave the others waiting for it."""
    flag = torch.tensor([int(ok)], dtype=torch.int, device=collective_device(dist.get_backend()))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
