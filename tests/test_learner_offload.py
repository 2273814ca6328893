"""Colocation: the learner's state leaves the device and comes back bit for bit (actors/offload.py).

On CPU "device" and host are both host memory, but the code path is the GPU's: every storage is copied
out and resized to 0 bytes, then reallocated and refilled, so these tests see the state really go and
really come back in place (same tensor objects, views still sharing one storage).
"""

from __future__ import annotations

import pytest
import torch

from actors.offload import StorageOffloader
from cluster.network import free_port
from examples.gpu_check import LOSS_KWARGS


def test_offloader_frees_every_storage_once_and_restores_views_in_place():
    buffer = torch.randn(64)                       # a DDP-style flat buffer ...
    weight, bias = buffer[:48].view(6, 8), buffer[48:]  # ... and the params that view it
    moment = torch.randn(6, 8)                     # optimizer state with a storage of its own
    grads = torch.randn(64)                        # a grad buffer: dropped, comes back as zeros
    expected = {"weight": weight.clone(), "bias": bias.clone(), "moment": moment.clone()}
    offloader = StorageOffloader(torch.device("cpu"))

    freed = offloader.offload([weight, bias, buffer, moment], discard=[grads])
    assert freed == (64 + 48 + 64) * 4             # the shared buffer counted once
    assert offloader.active and offloader.host_bytes() == (64 + 48) * 4
    assert all(t.untyped_storage().nbytes() == 0 for t in (buffer, weight, bias, moment, grads))
    with pytest.raises(RuntimeError, match="twice"):
        offloader.offload([moment])

    assert offloader.onload() == freed and not offloader.active
    assert torch.equal(weight, expected["weight"]) and torch.equal(bias, expected["bias"])
    assert torch.equal(moment, expected["moment"]) and torch.equal(grads, torch.zeros(64))
    assert weight.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()  # still one buffer
    weight.add_(1.0)
    assert torch.equal(buffer[:48], expected["weight"].flatten() + 1)  # writes reach the buffer

    host = offloader._host_pool[0].data_ptr()
    offloader.offload([buffer, moment])            # the next round reuses the host buffers
    assert offloader._moved[0].host is not None and offloader._moved[0].host.data_ptr() == host
    offloader.onload()


def test_offloader_refuses_a_storage_it_cannot_free_and_frees_nothing():
    import numpy as np

    resizable, fixed = torch.ones(8), torch.from_numpy(np.ones(8, dtype=np.float32))
    offloader = StorageOffloader(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="1 storages cannot be resized"):
        offloader.offload([resizable, fixed])
    assert not offloader.active and torch.equal(resizable, torch.ones(8))  # nothing was freed


def test_offloader_ignores_tensors_on_other_devices():
    on_meta = torch.empty(4, device="meta")
    offloader = StorageOffloader(torch.device("cpu"))
    assert offloader.offload([on_meta]) == 0 and not offloader.active


# --- one LearnerWorker in this process ------------------------------------------------------------


def _state(worker) -> dict[str, torch.Tensor]:
    """Clones of everything an offload moves: params, fp32 main params, Adam state, the reference."""
    out = {f"param/{n}": p.detach().clone() for n, p in worker.model.named_parameters()}
    out |= {f"ref/{n}": p.detach().clone() for n, p in worker.ref_model.named_parameters()}
    out |= {f"main/{n}": m.detach().clone() for n, m in worker.master_weights().items()}
    inner = worker.optimizer.chained_optimizers[0].optimizer if hasattr(worker.optimizer, "chained_optimizers") \
        else worker.optimizer.optimizer
    for i, state in enumerate(inner.state.values()):
        out |= {f"adam/{i}/{k}": v.detach().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    return out


def _step(worker, batch) -> dict[str, float]:
    metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    return metrics | worker.optim_step()


@pytest.mark.slow
def test_offload_onload_round_trip_is_bit_identical(tmp_path):
    from transformers import AutoConfig

    from actors.learner import LearnerWorker, OptimizerSettings
    from examples.gpu_check import make_batch
    from examples.tiny_model import write_test_model

    model_dir = write_test_model(tmp_path / "tiny", seed=5, num_layers=2, tie_word_embeddings=True)
    batch = make_batch(6, 24, AutoConfig.from_pretrained(model_dir).vocab_size, seed=0)
    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), dtype="bfloat16", hold_reference=True, num_threads=2,
                           optimizer=OptimizerSettings(lr=1e-3))
    try:
        _step(worker, batch)                       # Adam state exists from here on
        worker.save(str(tmp_path / "ckpt"))
        straight = _step(worker, batch)            # the next update without an offload
        after_straight = _state(worker)

        worker.load(str(tmp_path / "ckpt"))
        before = _state(worker)
        params = list(worker.model.parameters())
        moved = worker.offload()
        assert moved["offloaded_gib"] > 0 and moved["host_gib"] > 0
        keep, discard = worker._device_state()
        assert all(t.untyped_storage().nbytes() == 0 for t in keep + discard)  # really gone from the device
        assert worker.memory()["offloaded_host_gib"] == pytest.approx(moved["host_gib"])
        with pytest.raises(RuntimeError, match="offloaded"):
            worker.compute_logprobs(batch)
        with pytest.raises(RuntimeError, match="offloaded"):
            worker.save(str(tmp_path / "refused"))
        assert worker.offload()["offloaded_gib"] == 0.0  # a second offload is a no-op

        worker.onload()
        assert list(worker.model.parameters()) == params  # the same objects, refilled in place
        buffer = worker.ddp.buffers[0].param_data.untyped_storage().data_ptr()
        assert all(p.untyped_storage().data_ptr() == buffer for p in params)  # still views of DDP's buffer
        restored = _state(worker)
        assert restored.keys() == before.keys() and any(k.startswith("adam/") for k in before)
        assert all(torch.equal(restored[k], before[k]) for k in before)
        assert all(torch.equal(g.main_grad, torch.zeros_like(g.main_grad)) for g in params)
        assert _step(worker, batch) == straight    # the next update is bit-identical ...
        after = _state(worker)
        assert all(torch.equal(after[k], after_straight[k]) for k in after_straight)  # ... and so is the state
    finally:
        worker.shutdown()
