"""The shipped tiny base model: its files are the ones recorded, installing it is exact, and the data the
build generates is identical to the data it was trained on (pure Python, the same on every machine)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from examples import build_tiny
from examples.build_tiny import MANIFEST, SHIPPED_MODEL, BuildConfig


def test_shipped_files_match_their_recorded_digests():
    manifest = build_tiny.read_manifest()
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    build_tiny.verify_model_dir(SHIPPED_MODEL, manifest)


def test_a_changed_byte_is_named(tmp_path):
    model = tmp_path / "tiny-qwen2"
    shutil.copytree(SHIPPED_MODEL, model)
    weights = model / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(build_tiny.ShippedModelError, match="model.safetensors: expected"):
        build_tiny.verify_model_dir(model, build_tiny.read_manifest())


def test_generated_data_is_the_data_the_base_was_trained_on(tmp_path):
    build_tiny.write_data(BuildConfig(out_dir=str(tmp_path)))
    assert build_tiny.data_digests(tmp_path) == json.loads(MANIFEST.read_text())["data"]


def test_install_copies_the_checked_base_once(tmp_path, capsys):
    cfg = BuildConfig(out_dir=str(tmp_path))
    build_tiny.install(cfg)
    model = tmp_path / "tiny-qwen2"
    build_tiny.verify_model_dir(model, build_tiny.read_manifest())
    assert build_tiny.model_id(build_tiny.read_manifest()) in capsys.readouterr().out
    stamp = os.stat(model / "model.safetensors").st_mtime_ns
    build_tiny.install(cfg)  # nothing to do: same files, same data stamp
    assert os.stat(model / "model.safetensors").st_mtime_ns == stamp
    assert "data written" not in capsys.readouterr().out


def test_install_replaces_a_different_model(tmp_path):
    cfg = BuildConfig(out_dir=str(tmp_path))
    model = tmp_path / "tiny-qwen2"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"not a model")
    build_tiny.install(cfg)
    build_tiny.verify_model_dir(model, build_tiny.read_manifest())


def test_shipped_base_loads_with_transformers():
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(SHIPPED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    build = build_tiny.read_manifest()["build"]["config"]
    assert model.config.hidden_size == build["hidden_size"]
    assert model.config.num_hidden_layers == build["num_layers"]
    assert tokenizer.eos_token_id == model.config.eos_token_id


def test_install_flags_need_from_scratch():
    with pytest.raises(SystemExit):
        build_tiny.main(["--seed", "3"])
