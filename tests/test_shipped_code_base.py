"""The shipped base of the code task (examples/build_tiny_code.py): its files are the ones recorded, installing
it is exact, the data the install generates is the data it was trained on, and its prompts and reference
completions fit the `tiny_cpu_code` example's token limits."""

from __future__ import annotations

import os
import shutil

import pytest

from examples import build_tiny_code, tasks
from examples.build_tiny import ShippedModelError, model_id, verify_model_dir
from examples.build_tiny_code import CODE_MANIFEST, SHIPPED_CODE_MODEL, CodeBuildConfig


def test_shipped_files_match_their_recorded_digests():
    manifest = build_tiny_code.read_code_manifest()
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    verify_model_dir(SHIPPED_CODE_MODEL, manifest, manifest_name=CODE_MANIFEST.name)
    assert sum((SHIPPED_CODE_MODEL / name).stat().st_size for name in manifest["files"]) < 8 << 20  # a few MB


def test_a_changed_byte_is_named(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(SHIPPED_CODE_MODEL, model)
    raw = bytearray((model / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (model / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ShippedModelError, match="model.safetensors: expected"):
        verify_model_dir(model, build_tiny_code.read_code_manifest())


def test_generated_data_is_the_data_the_base_was_trained_on(tmp_path):
    manifest = build_tiny_code.read_code_manifest()
    recorded = manifest["build"]["config"]
    build_tiny_code.write_data(CodeBuildConfig(seed=recorded["seed"], train=recorded["train"],
                                               heldout=recorded["heldout"]), tmp_path)
    assert build_tiny_code.data_digests(tmp_path) == manifest["data"]


def test_install_copies_the_checked_base_once(tmp_path, capsys):
    model = build_tiny_code.install(tmp_path)
    manifest = build_tiny_code.read_code_manifest()
    verify_model_dir(model, manifest)
    assert build_tiny_code.data_digests(tmp_path) == manifest["data"]
    assert model_id(manifest) in capsys.readouterr().out
    stamp = os.stat(model / "model.safetensors").st_mtime_ns
    build_tiny_code.install(tmp_path)  # nothing to do: same files, same data stamp
    assert os.stat(model / "model.safetensors").st_mtime_ns == stamp
    assert "data written" not in capsys.readouterr().out


def test_prompts_and_completions_fit_the_example_and_the_tokenizer_writes_programs():
    from transformers import AutoTokenizer

    from examples.configs import tiny_cpu_code
    from trainer.templates import r1_zero

    cfg = tiny_cpu_code()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_CODE_MODEL)
    examples = tasks.generate_function(2000, 0)
    assert max(len(tokenizer(r1_zero(e.prompt))["input_ids"]) for e in examples) <= cfg.model.max_prompt_tokens
    completions = [tasks.reference_completion(e) for e in examples]
    assert max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions) \
        < cfg.model.max_response_tokens
    for c in completions[:50]:  # every program round-trips through the tokenizer
        assert tokenizer.decode(tokenizer(c, add_special_tokens=False)["input_ids"]) == c


def test_install_flags_need_from_scratch():
    with pytest.raises(SystemExit):
        build_tiny_code.main(["--seed", "3"])
