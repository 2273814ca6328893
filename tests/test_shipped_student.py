"""The shipped distillation student: its files are the ones recorded, installing it is exact, and it is what
its manifest says: half the base's layers, the base's tokenizer, pretrained (its weights are no longer the
base's layers). Fast: nothing is started, nothing is trained."""

from __future__ import annotations

import os
import shutil

import pytest

from examples import build_student, build_tiny
from examples.build_student import SHIPPED_STUDENT, STUDENT_MANIFEST


def test_shipped_files_match_their_recorded_digests():
    manifest = build_student.read_student_manifest()
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    build_tiny.verify_model_dir(SHIPPED_STUDENT, manifest, manifest_name=STUDENT_MANIFEST.name)
    assert manifest["build"]["base_model"] == build_tiny.model_id(build_tiny.read_manifest())


def test_a_changed_byte_is_named(tmp_path):
    model = tmp_path / "tiny-student"
    shutil.copytree(SHIPPED_STUDENT, model)
    weights = model / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(build_tiny.ShippedModelError, match="tiny-student.json: model.safetensors: expected"):
        build_tiny.verify_model_dir(model, build_student.read_student_manifest(), manifest_name=STUDENT_MANIFEST.name)


def test_install_copies_the_checked_student_once_and_replaces_a_different_one(tmp_path, capsys):
    model = build_student.install(tmp_path)
    manifest = build_student.read_student_manifest()
    build_tiny.verify_model_dir(model, manifest, manifest_name=STUDENT_MANIFEST.name)
    assert build_tiny.model_id(manifest) in capsys.readouterr().out
    stamp = os.stat(model / "model.safetensors").st_mtime_ns
    build_student.install(tmp_path)  # nothing to do: same files
    assert os.stat(model / "model.safetensors").st_mtime_ns == stamp
    (model / "model.safetensors").write_bytes(b"not a model")
    build_student.install(tmp_path)
    build_tiny.verify_model_dir(model, manifest, manifest_name=STUDENT_MANIFEST.name)


def test_the_student_is_half_the_base_pretrained_further_with_its_tokenizer():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples.build_tiny import SHIPPED_MODEL

    build = build_student.read_student_manifest()["build"]
    base = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(SHIPPED_STUDENT, dtype=torch.float32)
    keep = build["config"]["keep_every_layer"]
    assert student.config.num_hidden_layers == base.config.num_hidden_layers // keep == build["layers"]
    assert student.config.hidden_size == base.config.hidden_size
    assert AutoTokenizer.from_pretrained(SHIPPED_STUDENT).get_vocab() == AutoTokenizer.from_pretrained(
        SHIPPED_MODEL).get_vocab()
    # Pretrained after the cut: its layer 1 started as the base's layer 2 and has moved away from it.
    moved = student.model.layers[1].mlp.up_proj.weight - base.model.layers[keep].mlp.up_proj.weight
    assert moved.abs().max() > 1e-3
    assert build["config"]["pretrain_steps"] > 0 and 0 <= build["heldout_pass_at_1"] <= 1


def test_install_flags_need_from_scratch():
    with pytest.raises(SystemExit):
        build_student.main(["--steps", "3"])
