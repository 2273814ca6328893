"""Megatron-core on CPU: the accommodations that let `GPTModel`, its DDP and distributed optimizer run over gloo.

megatron-core 0.16.1 assumes CUDA in a few places that the CPU path (CI, the tiny demo, debugging on a
laptop) reaches. Checked on the development machines, these are all a dense GPT with the local
(non-Transformer-Engine) layer spec needs for forward, backward, TP, PP and DP over gloo, wrapped in
Megatron's `DistributedDataParallel` with its `DistributedOptimizer` (fp32 main parameters, sharded
over DP), exactly the classes the GPU path uses:

1. `torch.cuda.current_device()` is used as the device for freshly allocated buffers (pipeline p2p
   receive buffers, the rotary cache, the tensor-parallel all-gather output, DDP's contiguous param and
   grad buffers). Answering "cpu" puts them on the CPU.
2. `CudaRNGStatesTracker.fork()` swaps CUDA RNG states around tensor-parallel dropout and init. With no
   CUDA there is no state to swap; a null context keeps the default CPU generator (dropout is 0 here and
   parameters come from checkpoints, so nothing depends on per-rank RNG streams).
3. The default causal mask is built on CUDA: callers pass an explicit mask (see `causal_mask`).
4. The pipeline schedules allocate their token counter with `torch.zeros(..., device="cuda")`: the
   schedules module sees a `torch` whose tensor factories map device "cuda" to "cpu" (nothing else changes).
5. With PP > 1 and tied embeddings, `LanguageModule.setup_embeddings_and_output_layer` moves the
   shared weight with `.cuda()` before its all-reduce: during that call `.cuda()` is the identity.
6. Pipeline p2p calls `torch.cuda.synchronize()` around shape exchanges: a no-op without CUDA streams.
7. The optimizer modules (mixed-precision optimizer, distributed optimizer, grad clipping) and
   `megatron.core.utils` (the fallback multi-tensor L2 norm) allocate scalars with `device="cuda"`: they
   see the same `torch` as 4.
8. `DistributedOptimizer` and `Float16OptimizerWithFloat16Params` sort parameters by the type string
   `'torch.cuda.BFloat16Tensor'` etc., and `clip_grad_by_total_norm_fp32` asserts `'torch.cuda.FloatTensor'`.
   While those run, `Tensor.type()` (no arguments) answers a CPU tensor's type with the CUDA name of the
   same dtype; afterwards it is Torch's own again.
9. fp16's dynamic loss scaler (`grad_scaler`) holds its scale with `device="cuda"` (it sees the same
   `torch` as 4) and `load_state_dict` moves a saved scale with `.cuda()`: during that call `.cuda()` is the
   identity, as in 5.
10. Activation recomputation (`tensor_parallel.checkpoint`) saves and restores the CUDA RNG state next to
   the CPU one: without CUDA the CUDA state is an empty tensor and restoring it is a no-op.

DDP's gradient reduction needs nothing: gloo runs the coalesced all-reduce / reduce-scatter and the
parameter all-gather (checked with DP = 2). Overlap of gradient reduction with backward is asynchronous
on gloo too, only slower. Everything stays fp32 on CPU unless a test asks for bf16 or fp16 (CPU bf16 and fp16
matmuls work).

`apply()` is idempotent and does nothing when CUDA is available, so GPU runs use Megatron untouched.
"""

from __future__ import annotations

import contextlib
import functools

import torch

_APPLIED = False


def apply() -> bool:
    """Patch the process for CPU Megatron; returns True when the patches are (now) in place."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]

    from megatron.core.tensor_parallel import random as tp_random

    def _fork(self, name: str = tp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):  # noqa: ARG001
        return contextlib.nullcontext()

    tp_random.CudaRNGStatesTracker.fork = _fork  # type: ignore[method-assign]
    tp_random._get_cuda_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)  # type: ignore[assignment]
    tp_random._set_cuda_rng_state = lambda *a, **k: None  # type: ignore[assignment]

    import megatron.core.utils as core_utils
    from megatron.core.optimizer import clip_grads, distrib_optimizer, grad_scaler, optimizer
    from megatron.core.pipeline_parallel import schedules

    for module in (schedules, optimizer, clip_grads, distrib_optimizer, core_utils, grad_scaler):
        module.torch = _TorchOnCpu()  # type: ignore[attr-defined]
    load_scale = grad_scaler.DynamicGradScaler.load_state_dict
    grad_scaler.DynamicGradScaler.load_state_dict = _without_cuda_moves(load_scale)  # type: ignore[method-assign]

    for cls in (distrib_optimizer.DistributedOptimizer, optimizer.Float16OptimizerWithFloat16Params):
        cls.__init__ = _with_cuda_type_names(cls.__init__)  # type: ignore[method-assign]
    clip = _with_cuda_type_names(clip_grads.clip_grad_by_total_norm_fp32)
    clip_grads.clip_grad_by_total_norm_fp32 = clip  # type: ignore[assignment]
    optimizer.clip_grad_by_total_norm_fp32 = clip  # type: ignore[attr-defined]  # imported by name there

    from megatron.core.models.common.language_module.language_module import LanguageModule

    setup = LanguageModule.setup_embeddings_and_output_layer
    LanguageModule.setup_embeddings_and_output_layer = _without_cuda_moves(setup)  # type: ignore[method-assign]
    _APPLIED = True
    return True


def _without_cuda_moves(function):
    """Wrap `function` so that, while it runs, `Tensor.cuda()` returns the tensor itself (it stays on the CPU)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t  # type: ignore[method-assign]
        try:
            return function(*args, **kwargs)
        finally:
            torch.Tensor.cuda = original  # type: ignore[method-assign]

    return wrapped


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 1, S, S] bool, True where attention is masked (Megatron's convention: future positions).

    Right padding needs no extra masking: real tokens never attend to the pad tokens after them.
    """
    future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(diagonal=1)  # [S, S]
    return future[None, None]  # [1, 1, S, S]


def _on_cpu(device):
    """Device "cuda" (a string or a torch.device) becomes "cpu"; anything else is kept."""
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
        return "cpu"
    return device


def _factory(name: str):
    make = getattr(torch, name)

    def call(*args, device=None, **kwargs):
        return make(*args, device=_on_cpu(device), **kwargs)

    return staticmethod(call)


class _TorchOnCpu:
    """`torch` as some Megatron modules see it on CPU: identical except tensor factories on device "cuda"."""

    tensor = _factory("tensor")
    zeros = _factory("zeros")
    ones = _factory("ones")
    empty = _factory("empty")
    full = _factory("full")

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _with_cuda_type_names(function):
    """Wrap `function` so that, while it runs, `Tensor.type()` reports CPU tensors with CUDA type names."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        original = torch.Tensor.type

        def cuda_type(t, *a, **k):
            name = original(t, *a, **k)
            if a or k or not isinstance(name, str) or not name.startswith("torch.") or "cuda" in name:
                return name
            return "torch.cuda." + name.removeprefix("torch.")

        torch.Tensor.type = cuda_type  # type: ignore[method-assign]
        try:
            return function(*args, **kwargs)
        finally:
            torch.Tensor.type = original  # type: ignore[method-assign]

    return wrapped
