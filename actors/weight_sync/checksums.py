"""Checksums: what every engine must report after loading what the sender sent.

The sender hashes each tensor as it sends it (`ChecksumStream`), the way vLLM's `compute_weight_checksums`
will hash the parameter it lands in (fused projections, padded vocabulary rows); the owner then compares
the two (`compare_checksums`) every `rollout.weight_sync_checksum_every` versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor

# vLLM fuses these Hugging Face projections into one parameter (its `stacked_params_mapping`).
_STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
VOCAB_PADDING = 64
"""vLLM pads embedding and lm_head rows with zeros to a multiple of this (DEFAULT_VOCAB_PADDING_SIZE)."""
_VOCAB_PARAMS = ("model.embed_tokens.weight", "lm_head.weight")


def _bytes(tensor: Tensor) -> memoryview:
    array = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    return memoryview(array)  # type: ignore[arg-type]  # an ndarray is a buffer; numpy declares it only for Python >= 3.12


def digest(tensor: Tensor) -> str:
    """sha256 of a tensor's bytes, as vLLM's `compute_weight_checksums` computes it."""
    return hashlib.sha256(_bytes(tensor)).hexdigest()


class ChecksumStream:
    """Checksums a TP=1 vLLM engine should report after loading a stream of HF tensors (Llama/Qwen2).

    Fed tensor by tensor as they are sent: fused projections hash their parts in vLLM's order (the
    digest of `cat(parts, dim=0)` is the digest of the parts' bytes back to back), so only the parts
    of one fused parameter wait; vocabulary rows are zero-padded to a multiple of VOCAB_PADDING.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.checksums: dict[str, str] = {}
        self._parts: dict[str, dict[str, Tensor]] = {}

    def add(self, name: str, tensor: Tensor) -> None:
        parent, _, leaf = name.rpartition(".")
        module_path, _, proj = parent.rpartition(".")
        fused = next((f for f, parts in _STACKED.items() if proj in parts), None)
        if fused is None:
            h = hashlib.sha256(_bytes(tensor))
            if name in _VOCAB_PARAMS and tensor.shape[0] % VOCAB_PADDING:
                pad_rows = -tensor.shape[0] % VOCAB_PADDING
                h.update(bytes(pad_rows * tensor[0].numel() * tensor.element_size()))
            self.checksums[self.prefix + name] = h.hexdigest()
            return
        target = f"{module_path}.{fused}.{leaf}"
        parts = self._parts.setdefault(target, {})
        parts[proj] = tensor.detach().cpu()
        if len(parts) == len(_STACKED[fused]):
            h = hashlib.sha256()
            for p in _STACKED[fused]:
                h.update(_bytes(parts[p]))
            self.checksums[self.prefix + target] = h.hexdigest()
            del self._parts[target]


def expected_vllm_checksums(named_tensors: Iterable[tuple[str, Tensor]], *, prefix: str = "",
                            tie_word_embeddings: bool = False) -> dict[str, str]:
    """Checksums a TP=1 vLLM engine should report after loading these HF tensors (see ChecksumStream).
    With tied embeddings vLLM has no lm_head."""
    stream = ChecksumStream(prefix)
    for name, tensor in named_tensors:
        if not (tie_word_embeddings and name == "lm_head.weight"):
            stream.add(name, tensor)
    return stream.checksums


def compare_checksums(expected: dict[str, str], reported: dict[str, str], *, tp_size: int
                      ) -> tuple[int, list[str]]:
    """(number of parameters compared, names that differ) between the sender's checksums and one
    engine's (`dp0:pp0:pcp0:tp<k>:<name>` keys). With TP > 1 an engine holds shards of split
    parameters, so only replicated ones (norms) compare; names the sender did not send are skipped."""
    compared, differ = 0, []
    for key, value in sorted(reported.items()):
        name = key.split(":")[-1]
        if name not in expected or (tp_size > 1 and "norm" not in name):
            continue
        compared += 1
        if expected[name] != value:
            differ.append(key)
    return compared, differ
