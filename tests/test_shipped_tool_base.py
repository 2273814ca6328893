"""The shipped tool base (examples/build_tiny_tool.py): its files are the ones recorded, installing it is exact and
writes the data it was trained on, its completions fit the `tiny_cpu_tool` example's limits, and the calculator's
markers are single tokens, so a call ends on one token and the tool's output tokenised alone is the same ids as
in pretraining."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict

import pytest

from examples import build_tiny_tool
from examples.build_tiny import ShippedModelError, model_id, verify_model_dir
from examples.build_tiny_tool import (
    SHIPPED_TOOL_MODEL,
    TOOL_MANIFEST,
    TOOL_TOKENS,
    ToolBuildConfig,
    has_call,
    sample_completion,
    tool_completion,
)


def test_shipped_files_match_their_recorded_digests():
    manifest = build_tiny_tool.read_tool_manifest()
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    verify_model_dir(SHIPPED_TOOL_MODEL, manifest, manifest_name=TOOL_MANIFEST.name)
    assert sum((SHIPPED_TOOL_MODEL / name).stat().st_size for name in manifest["files"]) < 8 << 20


def test_the_recorded_base_calls_rarely_and_its_calls_pay():
    """What makes the example possible, as measured when it was built (128 prompts x 4 samples)."""
    build = build_tiny_tool.read_tool_manifest()["build"]
    assert build["after_phase_1"]["accuracy_with_call"] > 0.8  # the call and both copies were learned
    final = build["final"]
    assert final["call_rate"] < 0.10
    assert final["accuracy_with_call"] > final["accuracy_without_call"] + 0.2
    assert final["accuracy_without_call"] < 0.02
    assert build_tiny_tool.read_tool_manifest()["build"]["config"] == asdict(ToolBuildConfig())  # the defaults


def test_a_changed_byte_is_named(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(SHIPPED_TOOL_MODEL, model)
    raw = bytearray((model / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (model / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ShippedModelError, match="model.safetensors: expected"):
        verify_model_dir(model, build_tiny_tool.read_tool_manifest())


def test_install_copies_the_checked_base_once_and_writes_the_recorded_data(tmp_path, capsys):
    model = build_tiny_tool.install(tmp_path)
    manifest = build_tiny_tool.read_tool_manifest()
    verify_model_dir(model, manifest)
    assert build_tiny_tool.data_digests(tmp_path) == manifest["data"]
    assert "data written" in capsys.readouterr().out
    stamp = os.stat(model / "model.safetensors").st_mtime_ns
    build_tiny_tool.install(tmp_path)  # nothing to do: same files, same data
    assert os.stat(model / "model.safetensors").st_mtime_ns == stamp
    out = capsys.readouterr().out
    assert model_id(manifest) in out and "data written" not in out


def test_the_data_is_long_addition_with_no_heldout_question_in_train():
    train, heldout = build_tiny_tool.make_splits(2000, 200)
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    for e in train + heldout:
        a, b = (int(x) for x in e.prompt.removeprefix("What is ").removesuffix("?").split("+"))
        assert len(str(a)) == len(str(b)) == 5 and e.ground_truth == str(a + b)
        assert e.task == "arithmetic"  # the source the example routes to the calculator


def test_completions_fit_the_example_and_the_markers_are_single_tokens():
    from transformers import AutoTokenizer

    from examples.configs import tiny_cpu_tool
    from reward_server.rewards import format_reward
    from reward_server.tools import Calculator, find_call
    from reward_server.verifiers import extract_answer
    from trainer.templates import r1_zero

    cfg = tiny_cpu_tool()
    assert cfg.rollout.tool_settings().tools_for("arithmetic") == ("calculator",)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_TOOL_MODEL)
    longest = tool_completion(99_999, 99_999, guess=0, call=True)
    assert len(tokenizer(longest, add_special_tokens=False)["input_ids"]) < cfg.model.max_response_tokens
    assert len(tokenizer(r1_zero("What is 99999+99999?"))["input_ids"]) <= cfg.model.max_prompt_tokens
    for marker in TOOL_TOKENS:
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1, marker

    called = tool_completion(48213, 90537, guess=0, call=True)
    assert called == "<calc>48213+90537</calc><result>138750</result>138750</think><answer>138750</answer>"
    call_turn = called[: called.index("</calc>") + len("</calc>")]
    assert find_call(call_turn, {"calculator": Calculator}) == ("calculator", "48213+90537")
    output = "<result>138750</result>"  # as actors/rollout_tools.py appends it: each part tokenised alone
    parts = [tokenizer.encode(t, add_special_tokens=False) for t in ("<result>", "138750", "</result>")]
    whole = tokenizer.encode(called, add_special_tokens=False)
    start = len(tokenizer.encode(call_turn, add_special_tokens=False))
    assert whole[start:start + sum(map(len, parts))] == [i for p in parts for i in p]
    assert tokenizer.decode(whole[start:start + sum(map(len, parts))]) == output
    assert has_call(called) and extract_answer(called) == "138750"
    plain = tool_completion(48213, 90537, guess=138751, call=False)
    assert not has_call(plain) and extract_answer(plain) == "138751"
    assert format_reward("<think>" + called).value == format_reward("<think>" + plain).value == 1.0


def test_pretraining_completions_mix_as_the_recipe_says():
    train, _ = build_tiny_tool.make_splits(400, 1)
    rng = random.Random(0)
    texts = [sample_completion(e, rng, 0.5) for e in train]
    assert 150 < sum(map(has_call, texts)) < 250
    for t, e in zip(texts, train):  # both kinds answer the true sum
        assert t.split("<answer>")[1].removesuffix("</answer>") == e.ground_truth
    texts = [sample_completion(e, rng, 1.0, 0.5) for e in train]
    other = [t for t, e in zip(texts, train) if answer_of(t) != e.ground_truth]
    assert 0.3 < len(other) / len(texts) < 0.7
    for t in texts:  # the answer copies the output, whatever it reads
        assert answer_of(t) == t.split("<result>")[1].split("</result>")[0]


def test_pretraining_masks_the_calculators_output_out_of_the_loss():
    from transformers import AutoTokenizer

    from examples.build_tiny import IGNORE_INDEX
    from examples.build_tiny_tool import encode_masking_outputs

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_TOOL_MODEL)
    ids, labels = encode_masking_outputs(tokenizer, [1, 2], tool_completion(48213, 90537, guess=0, call=True))
    text = [tokenizer.decode([i]) for i in ids]
    masked = "".join(t for t, label in zip(text, labels) if label == IGNORE_INDEX)
    assert masked == tokenizer.decode([1, 2]) + "<result>138750</result>"
    ids, labels = encode_masking_outputs(tokenizer, [1, 2], tool_completion(48213, 90537, guess=5, call=False))
    assert labels[2:] == ids[2:]  # a guess is all loss


def answer_of(completion: str) -> str:
    return completion.split("<answer>")[1].removesuffix("</answer>")


def test_install_flags_need_from_scratch():
    with pytest.raises(SystemExit):
        build_tiny_tool.main(["--seed", "3"])
