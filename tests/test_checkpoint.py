"""Checkpoints that lose nothing: atomic commit, pruning by step, a broken `latest`, corrupt files with
fallback, refusal instead of a silent restart, fresh starts that set old outputs aside, shards loaded
with weights_only=True, and metrics that survive a partial line. Pure: checkpoint directories are
built on the spot with small tensors; no Ray, no vLLM."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    ControllerState,
    CorruptCheckpoint,
    latest_checkpoint,
    load_controller_state,
    load_tensors,
    resume_point,
    save_checkpoint,
    validate_checkpoint,
)
from trainer.data import SamplerState
from trainer.metrics import MetricsLogger, read_metrics

SHARD = "learner/rank_00000.pt"


def _state(step: int) -> ControllerState:
    return ControllerState(step=step, policy_version=step, sampler=SamplerState(0, step), sampling_seed=7)


def _learner_state(step: int) -> dict:
    """What `LearnerWorker.save` writes: a model shard, AdamW state, step and RNG states."""
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {"layout": (1, 1, 1), "model": {n: p.detach() for n, p in model.named_parameters()},
            "optimizer": optimizer.state_dict(), "step": step,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": None}}


def _save(run_dir: Path, step: int, keep: int = 2) -> Path:
    def save_learner(path: Path) -> None:
        path.mkdir(parents=True)
        torch.save(_learner_state(step), path / "rank_00000.pt")
        (path / "learner.json").write_text(json.dumps({"tp": 1, "pp": 1, "world_size": 1, "step": step}))

    return save_checkpoint(run_dir, _state(step), save_learner, keep=keep)


def _ckpts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


# --- saving --------------------------------------------------------------------------------------


def test_save_commits_with_a_manifest_and_pointer(tmp_path):
    path = _save(tmp_path, 3)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"controller.json", SHARD, "learner/learner.json"}
    assert manifest["files"][SHARD]["bytes"] == (path / SHARD).stat().st_size > 0
    assert len(manifest["files"][SHARD]["sha256"]) == 64
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000003"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert validate_checkpoint(path) == _state(3)


def test_prune_by_step_number_keeps_the_one_just_written(tmp_path):
    # Names sort wrongly past six digits: step_1000000 < step_999999 as strings.
    for step in (999_998, 999_999, 1_000_000):
        _save(tmp_path, step, keep=2)
    assert _ckpts(tmp_path) == ["step_1000000", "step_999999"]
    assert latest_checkpoint(tmp_path).name == "step_1000000"
    _save(tmp_path, 1_000_001, keep=1)
    assert _ckpts(tmp_path) == ["step_1000001"]
    _save(tmp_path, 1_000_002, keep=0)  # keep < 1 still keeps the checkpoint just written
    assert _ckpts(tmp_path) == ["step_1000002"]


def test_save_below_later_checkpoints_never_deletes_what_it_wrote(tmp_path):
    """The reported loss: later checkpoints in the directory made pruning delete the new one."""
    for step in (4, 5):
        _save(tmp_path, step)
    _save(tmp_path, 1, keep=2)
    assert _ckpts(tmp_path) == ["step_000001", "step_000004", "step_000005"]  # higher steps untouched
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000001"
    assert latest_checkpoint(tmp_path).name == "step_000001"


def test_resume_false_sets_the_earlier_run_aside_and_loses_nothing(tmp_path, caplog):
    for step in (4, 5):
        _save(tmp_path, step)
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(5, "train", {"accuracy": 0.5})
    (tmp_path / "config.json").write_text("{}")

    with caplog.at_level(logging.WARNING):
        assert resume_point(tmp_path, resume=False) is None
    assert "resume=false" in caplog.text
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    [previous] = (tmp_path / "previous").iterdir()
    assert sorted(p.name for p in (previous / "checkpoints").glob("step_*")) == ["step_000004", "step_000005"]
    assert read_metrics(previous)[0]["step"] == 5

    _save(tmp_path, 1)  # the new run's first checkpoint
    assert _ckpts(tmp_path) == ["step_000001"]
    assert latest_checkpoint(tmp_path).name == "step_000001"


class _Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` clean-up runs."""


def test_a_save_killed_midway_keeps_the_previous_and_its_tmp_is_removed_at_start(tmp_path, caplog):
    _save(tmp_path, 3)

    def crash(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "rank_00000.pt").write_bytes(b"half a shard")
        raise _Killed("killed mid-save")

    with pytest.raises(_Killed):
        save_checkpoint(tmp_path, _state(4), crash)
    assert (tmp_path / "checkpoints" / "step_000004.tmp").is_dir()
    with caplog.at_level(logging.WARNING):
        assert resume_point(tmp_path, resume=True).name == "step_000003"
    assert "step_000004.tmp" in caplog.text
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


# --- a broken `latest` ---------------------------------------------------------------------------


@pytest.mark.parametrize("pointer", [None, "", "   \n", "step_000009", "../..", "../../etc",
                                     "/tmp", "step_000002/../..", "\x00\xff"])
def test_broken_pointer_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, pointer):
    for step in (2, 3):
        _save(tmp_path, step)
    latest = tmp_path / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer)
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step_000003"
    assert "scanning" in caplog.text


def test_broken_pointer_never_erases_metrics(tmp_path):
    """A dangling `latest` used to mean 'no checkpoint', a restart at step 0 and metrics truncated to nothing."""
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        logger.log(step, "train", {"accuracy": 0.1 * step})
        if step <= 2:
            _save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").write_text("step_000042")
    checkpoint = resume_point(tmp_path, resume=True)
    assert checkpoint is not None and load_controller_state(checkpoint).step == 2
    logger.truncate_after(load_controller_state(checkpoint).step)  # what Run.start does
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_checkpoints_newer_than_latest_are_set_aside_not_resumed(tmp_path, caplog):
    """`latest` is the commit point: a step directory past it (killed between rename and pointer)
    is moved to checkpoints/discarded/, so pruning of the resumed lineage never meets it."""
    for step in (2, 3):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").write_text("step_000002")
    with caplog.at_level(logging.WARNING):
        assert resume_point(tmp_path, resume=True).name == "step_000002"
    assert _ckpts(tmp_path) == ["step_000002"]
    [moved] = (tmp_path / "checkpoints" / "discarded").iterdir()
    assert moved.name.startswith("step_000003-") and (moved / SHARD).is_file()
    assert "moved the newer step_000003" in caplog.text


# --- corrupt checkpoints -------------------------------------------------------------------------


def _corrupt_shard_empty(ckpt: Path) -> None:
    (ckpt / SHARD).write_bytes(b"")


def _corrupt_shard_truncated(ckpt: Path) -> None:
    data = (ckpt / SHARD).read_bytes()
    (ckpt / SHARD).write_bytes(data[: len(data) // 2])


def _corrupt_shard_flipped(ckpt: Path) -> None:
    data = bytearray((ckpt / SHARD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt / SHARD).write_bytes(bytes(data))


def _corrupt_controller_garbled(ckpt: Path) -> None:
    (ckpt / "controller.json").write_text('{"step": 3, "policy_ver')


def _corrupt_shard_missing(ckpt: Path) -> None:
    (ckpt / SHARD).unlink()


def _corrupt_manifest_missing(ckpt: Path) -> None:
    (ckpt / "manifest.json").unlink()


def _corrupt_manifest_garbled(ckpt: Path) -> None:
    (ckpt / "manifest.json").write_text("{not json")


@pytest.mark.parametrize("corrupt, bad_file, why", [
    (_corrupt_shard_empty, SHARD, "empty: 0 bytes"),
    (_corrupt_shard_truncated, SHARD, "truncated"),
    (_corrupt_shard_flipped, SHARD, "sha256 differs"),
    (_corrupt_controller_garbled, "controller.json", "truncated"),
    (_corrupt_shard_missing, SHARD, "missing"),
    (_corrupt_manifest_missing, "manifest.json", "missing"),
    (_corrupt_manifest_garbled, "manifest.json", "unreadable"),
])
def test_corrupt_checkpoint_falls_back_to_the_previous_one_and_names_the_file(tmp_path, caplog, corrupt,
                                                                             bad_file, why):
    for step in (2, 3):
        _save(tmp_path, step)
    corrupt(tmp_path / "checkpoints" / "step_000003")
    with pytest.raises(CorruptCheckpoint, match=why) as info:
        validate_checkpoint(tmp_path / "checkpoints" / "step_000003")
    assert info.value.file == tmp_path / "checkpoints" / "step_000003" / bad_file

    with caplog.at_level(logging.WARNING):
        checkpoint = resume_point(tmp_path, resume=True)
    assert checkpoint is not None and checkpoint.name == "step_000002"
    assert f"step_000003/{bad_file}" in caplog.text and why in caplog.text
    assert load_tensors(checkpoint / SHARD)["step"] == 2
    # The bad one is set aside for inspection, not deleted, and not pruned with this lineage.
    assert _ckpts(tmp_path) == ["step_000002"]
    assert len(list((tmp_path / "checkpoints" / "discarded").iterdir())) == 1


def test_a_checkpoint_missing_a_rank_shard_is_not_intact(tmp_path):
    """learner.json says two ranks, but only rank 0 was saved (and hashed): the save was incomplete."""
    def save_learner(path: Path) -> None:
        path.mkdir(parents=True)
        torch.save(_learner_state(1), path / "rank_00000.pt")
        (path / "learner.json").write_text(json.dumps({"tp": 2, "pp": 1, "world_size": 2, "step": 1}))

    path = save_checkpoint(tmp_path, _state(1), save_learner)
    with pytest.raises(CorruptCheckpoint, match="rank_00001.pt: missing from the manifest"):
        validate_checkpoint(path)
    save_checkpoint(tmp_path, _state(2), lambda p: p.mkdir())  # a learner that wrote nothing
    with pytest.raises(CorruptCheckpoint, match="learner: missing from the manifest"):
        validate_checkpoint(tmp_path / "checkpoints" / "step_000002")


def test_checkpoints_of_which_none_is_intact_refuse_instead_of_restarting(tmp_path):
    for step in (2, 3):
        _save(tmp_path, step)
    _corrupt_shard_empty(tmp_path / "checkpoints" / "step_000003")
    _corrupt_controller_garbled(tmp_path / "checkpoints" / "step_000002")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n')
    with pytest.raises(CheckpointError, match="none is intact") as info:
        resume_point(tmp_path, resume=True)
    message = str(info.value)
    assert "step_000003/learner/rank_00000.pt: empty" in message and "step_000002/controller.json" in message
    assert "resume=false" in message
    # Nothing was moved or erased.
    assert _ckpts(tmp_path) == ["step_000002", "step_000003"] and (tmp_path / "metrics.jsonl").stat().st_size


def test_garbled_controller_json_names_the_file(tmp_path):
    (tmp_path / "controller.json").write_text('{"step": "x"}')
    with pytest.raises(CorruptCheckpoint, match=r"controller.json: unreadable \(ValueError"):
        load_controller_state(tmp_path)


def test_no_checkpoints_is_a_fresh_start(tmp_path):
    assert resume_point(tmp_path / "new", resume=True) is None
    assert latest_checkpoint(tmp_path) is None
    assert not (tmp_path / "new" / "previous").exists()


def test_corrupt_checkpoint_error_survives_pickling():
    """Raised inside a Ray actor, it must travel to the driver with its file and reason."""
    exc = pickle.loads(pickle.dumps(CorruptCheckpoint(Path("/x/rank_00000.pt"), "empty (0 bytes)")))
    assert str(exc) == "/x/rank_00000.pt: empty (0 bytes)" and exc.file == Path("/x/rank_00000.pt")


# --- learner shards: weights_only ----------------------------------------------------------------


def test_learner_state_round_trips_with_weights_only(tmp_path):
    state = _learner_state(5)
    torch.save(state, tmp_path / "rank_00000.pt")
    loaded = load_tensors(tmp_path / "rank_00000.pt")
    assert loaded["layout"] == (1, 1, 1) and loaded["step"] == 5
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    random.setstate(loaded["rng"]["python"])  # the tuple comes back as a tuple
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.load_state_dict(loaded["optimizer"])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def test_bad_shards_raise_errors_that_name_the_file(tmp_path):
    shard = tmp_path / "rank_00001.pt"
    shard.write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match=r"rank_00001.pt: empty \(0 bytes\)"):
        load_tensors(shard)
    torch.save(_learner_state(1), shard)
    shard.write_bytes(shard.read_bytes()[:300])
    with pytest.raises(CorruptCheckpoint, match=r"rank_00001.pt: unreadable, truncated"):
        load_tensors(shard)
    with pytest.raises(CorruptCheckpoint, match=r"rank_00002.pt: missing"):
        load_tensors(tmp_path / "rank_00002.pt")


class _Payload:
    """A pickle that runs code when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def plant_pickle(shard: Path, marker: Path) -> None:
    """What an attacker with write access produces: the real shard's state with a payload that writes
    `marker` when unpickled without weights_only, and the manifest re-hashed so its check passes."""
    state = load_tensors(shard)
    state["step"] = _Payload(marker)
    torch.save(state, shard)
    checkpoint = shard.parent.parent
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = shard.read_bytes()
    import hashlib

    manifest["files"][shard.relative_to(checkpoint).as_posix()] = {"bytes": len(data),
                                                                   "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_a_planted_pickle_with_a_rehashed_manifest_is_refused_and_the_previous_checkpoint_resumed(tmp_path,
                                                                                                  caplog):
    for step in (2, 3):
        _save(tmp_path, step)
    marker = tmp_path / "marker"
    plant_pickle(tmp_path / "checkpoints" / "step_000003" / SHARD, marker)
    with caplog.at_level(logging.WARNING):
        checkpoint = resume_point(tmp_path, resume=True)
    assert checkpoint is not None and checkpoint.name == "step_000002"
    assert f"step_000003/{SHARD}: refused" in caplog.text
    assert not marker.exists()
    [moved] = (tmp_path / "checkpoints" / "discarded").iterdir()
    assert moved.name.startswith("step_000003-")


def test_a_failed_save_names_the_file_and_cause_and_removes_the_partial_save(tmp_path):
    import errno

    from trainer.checkpoint import CheckpointSaveError

    _save(tmp_path, 3)

    def disk_full(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "rank_00000.pt").write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "rank_00000.pt"))

    with pytest.raises(CheckpointSaveError) as info:
        save_checkpoint(tmp_path, _state(4), disk_full)
    message = str(info.value)
    assert "step_000004.tmp" in message and "no space left on device" in message
    assert "step_000003 is kept" in message
    assert not (tmp_path / "checkpoints" / "step_000004.tmp").exists()
    assert latest_checkpoint(tmp_path).name == "step_000003"

    def broken(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with pytest.raises(CheckpointSaveError, match="PermissionError") as info:
        save_checkpoint(tmp_path, _state(5), broken)
    assert "no space" not in str(info.value) and not (tmp_path / "checkpoints" / "step_000005.tmp").exists()


def test_a_planted_pickle_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    shard = tmp_path / "rank_00000.pt"
    torch.save({"model": {}, "evil": _Payload(marker)}, shard)
    with pytest.raises(CorruptCheckpoint, match="rank_00000.pt: refused"):
        load_tensors(shard)
    assert not marker.exists()


# --- metrics.jsonl -------------------------------------------------------------------------------


def test_partial_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        logger.log(step, "train", {"accuracy": 0.5})
    with logger.path.open("a") as f:
        f.write('{"step": 4, "kind": "tr')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        logger.truncate_after(2)
    assert "metrics.jsonl:4" in caplog.text and "partial last line" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert logger.path.read_text().endswith("\n")
    logger.log(3, "train", {"accuracy": 0.6})  # the resumed run appends cleanly
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_read_metrics_skips_a_garbled_line(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n\x00garbage\n{"step": 2, "kind": "eval"}\n')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "metrics.jsonl:2" in caplog.text


# --- the controller ------------------------------------------------------------------------------


def test_train_refuses_an_unusable_checkpoint_directory_before_starting_anything(tmp_path, monkeypatch):
    from dataclasses import replace

    import trainer.controller as controller
    from examples.configs import tiny_cpu
    from trainer.config import TrainConfig

    def no_actors(*args, **kwargs):
        raise AssertionError("Run.start must not be reached")

    monkeypatch.setattr(controller.Run, "start", no_actors)
    monkeypatch.setattr(TrainConfig, "validate", lambda self: self)  # no data files needed here
    cfg = replace(tiny_cpu(), output_dir=str(tmp_path), name="run")
    _save(tmp_path / "run", 2)
    _corrupt_shard_truncated(tmp_path / "run" / "checkpoints" / "step_000002")
    with pytest.raises(CheckpointError, match="rank_00000.pt: truncated"):
        controller.train(cfg)


def test_train_resumes_from_the_previous_intact_checkpoint(tmp_path, monkeypatch, caplog):
    """The controller hands Run.start the checkpoint resume_point chose; with resume=false, nothing."""
    from dataclasses import replace

    import trainer.controller as controller
    from examples.configs import tiny_cpu
    from trainer.config import TrainConfig
    from trainer.data import RunInputs

    started: list = []

    class Started(Exception):
        pass

    def capture(cfg, run_dir, checkpoint, inputs):
        started.append(checkpoint)
        raise Started

    monkeypatch.setattr(controller.Run, "start", capture)
    monkeypatch.setattr(TrainConfig, "validate", lambda self: self)
    cfg = replace(tiny_cpu(), output_dir=str(tmp_path), name="run", total_steps=10)
    for step in (2, 4):
        _save(tmp_path / "run", step)
    _corrupt_shard_empty(tmp_path / "run" / "checkpoints" / "step_000004")
    no_data = RunInputs(train=[], heldout=[])
    with caplog.at_level(logging.WARNING), pytest.raises(Started):
        controller.train(cfg, no_data)
    assert started[-1].name == "step_000002" and "rank_00000.pt: empty" in caplog.text

    with pytest.raises(Started):
        controller.train(replace(cfg, resume=False), no_data)
    assert started[-1] is None and not (tmp_path / "run" / "checkpoints").exists()
    assert len(list((tmp_path / "run" / "previous").iterdir())) == 1


def test_a_learner_ranks_save_error_comes_through_rays_wrappers(tmp_path):
    """LearnerGroup.save raises RemoteCallError from Ray's wrapper of the rank's CheckpointSaveError; the
    run's error must still name the rank's file and the cause."""
    import ray.exceptions

    from cluster.calls import RemoteCallError
    from trainer.checkpoint import CheckpointSaveError, save_failure

    shard = tmp_path / "step_000004.tmp" / "learner" / "rank_00001.pt"
    inner = pickle.loads(pickle.dumps(CheckpointSaveError(shard, "no space left on device (0 bytes free)")))
    wrapped = ray.exceptions.RayTaskError("save", "Traceback ...", inner).as_instanceof_cause()
    try:
        raise RemoteCallError("save: learner rank 1 failed") from wrapped
    except RemoteCallError as exc:
        error = save_failure(tmp_path / "step_000004.tmp", exc)
    assert error.path == shard and error.reason == "no space left on device (0 bytes free)"
