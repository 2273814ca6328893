"""Megatron-core on CPU: the three accommodations that let `GPTModel` run over gloo without CUDA.

megatron-core 0.16.1 assumes CUDA in a few places that the CPU path (CI, the tiny demo, debugging on a
laptop) reaches. Checked on the development machines, these are all a dense GPT with the local
(non-Transformer-Engine) layer spec needs for forward, backward, TP and PP over gloo:

1. `torch.cuda.current_device()` is used as the device for freshly allocated buffers (pipeline p2p
   receive buffers, the rotary cache, the tensor-parallel all-gather output). Answering "cpu" puts them
   on the CPU.
2. `CudaRNGStatesTracker.fork()` swaps CUDA RNG states around tensor-parallel dropout and init. With no
   CUDA there is no state to swap; a null context keeps the default CPU generator (dropout is 0 here and
   parameters come from checkpoints, so nothing depends on per-rank RNG streams).
3. The default causal mask is built on CUDA: callers pass an explicit mask (see `causal_mask`).
4. The pipeline schedules allocate their token counter with `torch.zeros(..., device="cuda")`: the
   schedules module sees a `torch` whose `zeros` maps device "cuda" to "cpu" (nothing else changes).
5. With PP > 1 and tied embeddings, `LanguageModule.setup_embeddings_and_output_layer` moves the
   shared weight with `.cuda()` before its all-reduce: during that call `.cuda()` is the identity.
6. Pipeline p2p calls `torch.cuda.synchronize()` around shape exchanges: a no-op without CUDA streams.

`apply()` is idempotent and does nothing when CUDA is available, so GPU runs use Megatron untouched.
"""

from __future__ import annotations

import contextlib

import torch

_APPLIED = False


def apply() -> bool:
    """Patch the process for CPU Megatron; returns True when the patches are (now) in place."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]

    from megatron.core.tensor_parallel import random as tp_random

    def _fork(self, name: str = tp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):  # noqa: ARG001
        return contextlib.nullcontext()

    tp_random.CudaRNGStatesTracker.fork = _fork  # type: ignore[method-assign]

    from megatron.core.pipeline_parallel import schedules

    schedules.torch = _TorchOnCpu()  # type: ignore[attr-defined]

    from megatron.core.models.common.language_module.language_module import LanguageModule

    setup = LanguageModule.setup_embeddings_and_output_layer

    def _setup_on_cpu(self) -> None:
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t  # type: ignore[method-assign]
        try:
            setup(self)
        finally:
            torch.Tensor.cuda = original  # type: ignore[method-assign]

    LanguageModule.setup_embeddings_and_output_layer = _setup_on_cpu  # type: ignore[method-assign]
    _APPLIED = True
    return True


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 1, S, S] bool, True where attention is masked (Megatron's convention: future positions).

    Right padding needs no extra masking: real tokens never attend to the pad tokens after them.
    """
    future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(diagonal=1)  # [S, S]
    return future[None, None]  # [1, 1, S, S]


class _TorchOnCpu:
    """`torch` as the pipeline schedules see it on CPU: identical except `zeros(device="cuda")`."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs) -> torch.Tensor:
        return torch.zeros(*args, device="cpu" if device == "cuda" else device, **kwargs)
