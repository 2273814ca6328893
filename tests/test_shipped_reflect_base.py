"""The shipped reflection base (examples/build_tiny_reflect.py): its files are the ones recorded, installing it
is exact, the data it was trained on is the demo's addition data, its completions fit the `tiny_cpu_reflect`
example's limits, and the rewards and analytics read them as the self-evolution demo needs: a check counts as
reflection, and the answer graded is the one after the check."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict

import pytest

from examples import build_tiny_reflect, tasks
from examples.build_tiny import ShippedModelError, model_id, verify_model_dir
from examples.build_tiny_reflect import (
    REFLECT_MANIFEST,
    SHIPPED_REFLECT_MODEL,
    ReflectBuildConfig,
    has_check,
    reflect_completion,
    sample_completion,
)


def test_shipped_files_match_their_recorded_digests():
    manifest = build_tiny_reflect.read_reflect_manifest()
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    verify_model_dir(SHIPPED_REFLECT_MODEL, manifest, manifest_name=REFLECT_MANIFEST.name)
    assert sum((SHIPPED_REFLECT_MODEL / name).stat().st_size for name in manifest["files"]) < 8 << 20


def test_the_recorded_base_checks_rarely_and_its_checks_pay():
    """What makes the demo possible, as measured when it was built (128 prompts x 4 samples)."""
    final = build_tiny_reflect.read_reflect_manifest()["build"]["final"]
    assert final["reflection_frac"] < 0.10
    assert final["accuracy_with_check"] > final["accuracy_without_check"] + 0.5
    recorded = build_tiny_reflect.read_reflect_manifest()["build"]["config"]
    assert recorded == asdict(ReflectBuildConfig())  # built by the recipe's defaults


def test_a_changed_byte_is_named(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(SHIPPED_REFLECT_MODEL, model)
    raw = bytearray((model / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (model / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ShippedModelError, match="model.safetensors: expected"):
        verify_model_dir(model, build_tiny_reflect.read_reflect_manifest())


def test_install_copies_the_checked_base_once_and_writes_the_addition_data(tmp_path, capsys):
    model = build_tiny_reflect.install(tmp_path)
    manifest = build_tiny_reflect.read_reflect_manifest()
    verify_model_dir(model, manifest)
    assert build_tiny_reflect.data_digests(tmp_path) == manifest["data"]
    assert model_id(manifest) in capsys.readouterr().out
    stamp = os.stat(model / "model.safetensors").st_mtime_ns
    build_tiny_reflect.install(tmp_path)  # nothing to do: same files, same data
    assert os.stat(model / "model.safetensors").st_mtime_ns == stamp
    assert "data written" not in capsys.readouterr().out


def test_the_data_is_the_addition_demos():
    from examples.build_tiny import read_manifest

    addition = read_manifest()["data"]
    for rel, digest in build_tiny_reflect.read_reflect_manifest()["data"].items():
        assert addition[rel] == digest, rel


def test_completions_fit_the_example_and_a_check_is_reflection_graded_on_its_last_answer():
    from transformers import AutoTokenizer

    from examples.configs import tiny_cpu_reflect
    from reward_server.rewards import format_reward
    from reward_server.verifiers import extract_answer
    from trainer.analytics import reflection_count
    from trainer.templates import r1_zero

    cfg = tiny_cpu_reflect()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_REFLECT_MODEL)
    longest = reflect_completion(999, 999, guess=1999, check=True)
    assert len(tokenizer(longest, add_special_tokens=False)["input_ids"]) < cfg.model.max_response_tokens
    assert len(tokenizer(r1_zero("What is 999+999?"))["input_ids"]) <= cfg.model.max_prompt_tokens

    checked = reflect_completion(347, 86, guess=443, check=True)
    assert checked == "443,wait, check: 7+6+0=13,4+8+1=13,3+0+1=4 so 433</think><answer>433</answer>"
    assert has_check(checked) and reflection_count(checked) == 1
    assert extract_answer(checked) == "433"  # the check's answer, not the guess
    plain = reflect_completion(347, 86, guess=443, check=False)
    assert not has_check(plain) and reflection_count(plain) == 0 and extract_answer(plain) == "443"
    assert format_reward("<think>" + checked).value == format_reward("<think>" + plain).value == 1.0


def test_pretraining_completions_mix_as_the_recipe_says():
    train = tasks.generate_arithmetic(400, 0)
    rng = random.Random(0)
    texts = [sample_completion(e, rng, 0.5, 0.5) for e in train]
    checked = [t for t in texts if has_check(t)]
    assert 150 < len(checked) < 250
    wrong_guesses = [t for t in checked if t.split(",")[0] != answer_of(t)]
    assert 0.3 < len(wrong_guesses) / len(checked) < 0.7  # the answer must follow the columns, not the guess
    for t, e in zip(texts, train):  # a checked completion's answer is the true sum; so is an unchecked one's
        assert answer_of(t) == e.ground_truth


def answer_of(completion: str) -> str:
    return completion.split("<answer>")[1].removesuffix("</answer>")


def test_install_flags_need_from_scratch():
    with pytest.raises(SystemExit):
        build_tiny_reflect.main(["--seed", "3"])
