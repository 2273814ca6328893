"""fp16 training goes through Megatron's dynamic loss scaler: the schedule scales each loss before backward,
an overflowing step is skipped while the scale comes down, and the scale is checkpointed with the optimizer.
One real Megatron rank (gloo) in this process; the GPU check (examples/gpu_check.py) runs the same on CUDA."""

from __future__ import annotations

import pytest
import torch

from cluster.network import free_port

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=2.0)
OVERFLOW_ADVANTAGE = 1e3
"""Per-token gradients of about adv / tokens ~ 10: fine in fp16 as they are, beyond its 65504 once scaled by
2**16. So an overflow here proves the loss was scaled before backward."""


def _step(worker, batch) -> dict:
    metrics = worker.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
    return metrics | worker.optim_step()


@pytest.mark.slow
def test_fp16_steps_scale_the_loss_skip_overflows_and_checkpoint_the_scale(tmp_path):
    from transformers import AutoConfig

    from actors.learner import FP16_HYSTERESIS, FP16_INITIAL_LOSS_SCALE, LearnerWorker, OptimizerSettings
    from examples.gpu_check import make_batch
    from examples.tiny_model import write_test_model

    model_dir = write_test_model(tmp_path / "tiny", seed=3, num_layers=2)
    batch = make_batch(4, 24, AutoConfig.from_pretrained(model_dir).vocab_size, seed=0)
    worker = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(),
                           model_path=str(model_dir), dtype="float16", num_threads=2,
                           optimizer=OptimizerSettings(lr=1e-3, grad_clip=1.0))
    try:
        assert all(p.dtype == torch.float16 for p in worker.model.parameters())
        before = {n: t.clone() for n, t in worker.master_weights().items()}
        first = _step(worker, batch)
        assert torch.isfinite(torch.tensor(first["loss"])) and first["update_skipped"] == 0.0
        assert first["loss_scale"] == FP16_INITIAL_LOSS_SCALE and first["grad_norm"] > 0
        moved = {n: t.clone() for n, t in worker.master_weights().items()}
        assert any(not torch.equal(before[n], moved[n]) for n in before), "the fp16 step changed nothing"

        worker.save(str(tmp_path / "ckpt"))
        huge = batch.replace(advantages=torch.full_like(batch.advantages, OVERFLOW_ADVANTAGE))
        skipped = [_step(worker, huge) for _ in range(FP16_HYSTERESIS)]
        assert [m["update_skipped"] for m in skipped] == [1.0] * FP16_HYSTERESIS
        assert skipped[-1]["loss_scale"] == FP16_INITIAL_LOSS_SCALE / 2  # halved after `hysteresis` overflows
        for n, t in worker.master_weights().items():
            assert torch.equal(t, moved[n]), f"{n} changed in a skipped step"

        worker.load(str(tmp_path / "ckpt"))  # the scale and its trackers come back with the optimizer
        again = _step(worker, batch)
        assert again["loss_scale"] == FP16_INITIAL_LOSS_SCALE and again["update_skipped"] == 0.0
    finally:
        worker.shutdown()
