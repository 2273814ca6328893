"""Hugging Face weights out of the Megatron shards: gathered over TP, handed across PP stages point to
point, renamed and re-laid out by `actors.hf_megatron`; streamed to the weight sync or written as a plain
HF checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist
from torch import Tensor

from actors import hf_megatron

_MAX_NDIM = 4
"""Header length for shipping a tensor's shape between pipeline stages (HF tensors have <= 2 dims)."""


def hf_tensors(model: torch.nn.Module, shape: hf_megatron.ModelShape, ps: ModuleType, *, rank: int, pp_rank: int,
               dtype: torch.dtype, device: torch.device,
               receivers: Collection[int] = (0,)) -> Iterator[tuple[str, Tensor]]:
    """Yield (HF name, full tensor) on every rank in `receivers`, the same names in the same order on each;
    every rank must drain it (gathers are collective). `ps` is Megatron's parallel_state.

    Each stage gathers its tensors over TP, so every rank of the stage holds them; a receiver on another
    stage gets them point to point from the rank of that stage in its own pipeline group.
    """
    params = dict(model.named_parameters())
    tp_group = ps.get_tensor_model_parallel_group()
    pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
    receives = rank in receivers
    for stage in range(shape.pp):
        mine = stage == pp_rank
        # The receivers of this pipeline on other stages: this rank hands them what its stage gathered.
        peers = [r for t, r in enumerate(pp_ranks) if t != stage and r in receivers] if mine else []
        for name in hf_megatron.exported_names(shape, stage):
            tensors: dict[str, Tensor] = {}
            if mine:
                local = params[name].detach().contiguous()
                shards = [torch.empty_like(local) for _ in range(shape.tp)]
                dist.all_gather(shards, local, group=tp_group)
                tensors = hf_megatron.megatron_to_hf(name, shards, shape, pp_rank=stage)
            for hf_name in hf_megatron.hf_names_of(name, shape, pp_rank=stage):
                for peer in peers:
                    _send(tensors[hf_name], dst=peer)
                if receives:
                    yield hf_name, (tensors[hf_name] if mine else
                                    _recv(src=pp_ranks[stage], dtype=dtype, device=device))


def write_hf(tensors: dict[str, Tensor], *, model_path: Path, directory: str) -> None:
    """A plain HF checkpoint: `tensors` as model.safetensors, beside the source model's config and tokenizer
    files (its own weight files left out)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for f in model_path.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy(f, out / f.name)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


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
