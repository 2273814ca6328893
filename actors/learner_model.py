"""One pipeline stage of the policy (or reference) as a Megatron `GPTModel`, filled with this rank's TP shard
of a Hugging Face checkpoint (`actors.hf_megatron` holds the name and layout conversion)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from actors import hf_megatron

if TYPE_CHECKING:
    from megatron.core.models.gpt import GPTModel

RECOMPUTE_MODES = ("none", "selective", "full")
"""Activation recomputation: none; selective (attention core only); full (every layer's input kept)."""


def load_model(model_path: Path, shape: hf_megatron.ModelShape, *, tp_rank: int, pp_rank: int,
               dtype: torch.dtype, device: torch.device, recompute: str, attention: str,
               trainable: bool) -> GPTModel:
    """This rank's stage, every parameter in `dtype` on `device`; in train mode only when `trainable`.

    The parameter names are checked against the conversion table first, so a Megatron release that renames
    a parameter fails here rather than loading a model with a layer left at its random init."""
    config = hf_megatron.transformer_config(shape, dtype=dtype, use_cpu=device.type == "cpu",
                                            recompute=recompute if trainable else "none")
    model = hf_megatron.build_gpt_model(shape, config, pre_process=pp_rank == 0,
                                        post_process=pp_rank == shape.pp - 1, attention=attention)
    params = dict(model.named_parameters())
    expected = hf_megatron.stage_param_names(shape, pp_rank)
    if set(params) != set(expected):
        raise RuntimeError(f"Megatron parameters {sorted(set(params) ^ set(expected))} do not match the "
                           "conversion table in actors/hf_megatron.py")
    with safetensors_reader(model_path) as read, torch.no_grad():
        for name in expected:
            shard = hf_megatron.hf_to_megatron(name, read, shape, tp_rank=tp_rank, pp_rank=pp_rank)
            params[name].copy_(shard.to(dtype))
    # All params in the model dtype, norms included (what Megatron's Float16Module does to the model).
    model.to(device=device, dtype=dtype)
    model.requires_grad_(trainable)
    return model.train(trainable)


@contextlib.contextmanager
def visiting(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """`model` on `device` for the block, back on the CPU after it: on GPU the colocated reference lives on
    the CPU and visits the GPU only while it computes (a no-op on CPU)."""
    visits = device.type != "cpu"
    if visits:
        model.to(device)
    try:
        yield
    finally:
        if visits:
            model.to("cpu")


@contextlib.contextmanager
def safetensors_reader(model_dir: Path) -> Iterator[Callable[[str], Tensor]]:
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
