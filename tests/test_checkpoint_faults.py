"""The learner's own checkpoint files under faults, on the save path a run takes (`save_checkpoint` with
`LearnerWorker.save`, as Run.checkpoint calls it, minus Ray): a planted pickle is refused by the
learner itself, and a disk that fills up during a save (a small tmpfs) gives an error that names the
file and the cause, removes the partial save and keeps the previous checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_checkpoint import plant_pickle
from trainer.checkpoint import (
    CheckpointSaveError,
    ControllerState,
    CorruptCheckpoint,
    latest_checkpoint,
    save_checkpoint,
    validate_checkpoint,
)
from trainer.data import SamplerState

pytestmark = pytest.mark.slow  # each test starts a Megatron process group (world size 1, gloo)

LOSS_KWARGS = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=0.0, kl_coef=0.0, kl_estimator="k3",
                   kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=0.0)
TMPFS_BYTES = 32 << 20
"""The small disk: room for two checkpoints of the test model (about 8 MB each, optimizer state included)."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from examples.tiny_model import write_test_model

    return write_test_model(tmp_path_factory.mktemp("tiny"), seed=5, num_layers=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def worker(model_dir) -> Iterator:
    """One policy rank (AdamW, distributed optimizer) that took one step, so its optimizer holds state."""
    from transformers import AutoConfig

    from actors.learner import LearnerWorker, OptimizerSettings
    from examples.gpu_check import make_batch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=port, model_path=str(model_dir),
                      num_threads=2, optimizer=OptimizerSettings(lr=1e-3))
    try:
        batch = make_batch(6, 24, AutoConfig.from_pretrained(model_dir).vocab_size, seed=0)
        w.forward_backward(batch, "grpo", batch.num_tokens, batch.num_sequences, LOSS_KWARGS)
        w.optim_step()
        yield w
    finally:
        w.shutdown()


def _state(step: int) -> ControllerState:
    return ControllerState(step=step, policy_version=step, sampler=SamplerState(0, step), sampling_seed=7)


def _params(worker) -> dict:
    return {n: p.detach().clone() for n, p in worker.model.named_parameters()}


def test_the_learner_refuses_a_planted_pickle_and_keeps_its_state(worker, tmp_path):
    import torch

    checkpoint = save_checkpoint(tmp_path, _state(1), worker.save)
    before, step = _params(worker), worker.step
    marker = tmp_path / "marker"
    plant_pickle(checkpoint / "learner" / "rank_00000.pt", marker)
    with pytest.raises(CorruptCheckpoint, match=r"step_000001/learner/rank_00000.pt: refused"):
        worker.load(str(checkpoint / "learner"))
    assert not marker.exists()
    assert worker.step == step and all(torch.equal(p, before[n]) for n, p in _params(worker).items())


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_full_save_names_the_file_and_cause_and_keeps_the_previous_checkpoint(worker, small_disk):
    run_dir = small_disk / "run"
    first = save_checkpoint(run_dir, _state(1), worker.save)
    size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    assert 2 * size < TMPFS_BYTES - size, f"a checkpoint is {size} bytes: make the tmpfs larger"
    filler = small_disk / "filler"
    with filler.open("wb") as f:  # leave half a checkpoint free: the next save's shard cannot fit
        f.write(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - size // 2))

    with pytest.raises(CheckpointSaveError) as info:
        save_checkpoint(run_dir, _state(2), worker.save)
    message = str(info.value)
    assert str(run_dir / "checkpoints" / "step_000002.tmp" / "learner" / "rank_00000.pt") in message, message
    assert "no space left on device" in message and "step_000001 is kept" in message, message
    assert "inline_container" not in message.split("(")[0]  # the cause in words comes first
    assert not (run_dir / "checkpoints" / "step_000002.tmp").exists()  # the partial save no longer fills the disk
    assert latest_checkpoint(run_dir) == first and validate_checkpoint(first) == _state(1)
    assert json.loads((first / "learner" / "learner.json").read_text())["step"] == worker.step

    filler.unlink()  # with space again, the same save succeeds
    assert save_checkpoint(run_dir, _state(2), worker.save).name == "step_000002"
