"""An exact resume of a multi-turn run: the demo's setup with a tool called at the "</think>" the model writes
(`tests.tool_fixtures:Answer`), whose output "<answer>" is masked out of the loss, through the user's path
(`trainer.controller.train`: engines, learner with its reference, reward actors, weight sync).

The tool's output is the text the base writes there itself, so the answers stay gradeable: groups have
mixed rewards, the steps have a real gradient (asserted: grad_norm > 0 and parameters moved from the base),
and the exactness checks compare a run that trains. (A tool whose output broke every answer would give
all-zero rewards and advantages, parameters that never move, and a comparison that proves nothing.)

The reference runs 2 steps with a checkpoint after each; a copy of it whose commit point is moved back to
step 1 resumes and runs step 2 again. Step 2's multi-turn rollouts (tool calls, masked tokens, rewards),
its loss and the final parameters must equal the reference's bit for bit.

Cost: two start-ups of a small system (1 engine, a TP=1 learner, 1 reward actor) and three steps of
4 prompts x 4 samples; about 3 minutes on the 2-core development machine.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first"),
]

COMPARED = ("reward", "accuracy", "response_length_mean", "loss", "pg_loss", "kl", "grad_norm",
            "tools/calls_per_response", "tools/masked_token_frac", "tools/turns_mean", "tools/errors")


def _config(out: Path):
    from examples.configs import tiny_cpu
    from trainer.config import apply_overrides

    return apply_overrides(tiny_cpu(), [
        f"model.path={MODEL}", f"data.train_path={DATA / 'train.jsonl'}", f"data.eval_path={DATA / 'heldout.jsonl'}",
        f"output_dir={out}", "name=tools", "total_steps=2", "checkpoint_every=1", "eval.every_steps=0",
        "data.eval_size=4", "eval.samples_per_prompt=1", "rollout.num_engines=1", "learner.tensor_parallel_size=1",
        "reward.num_actors=1", "algorithm.prompts_per_step=4", "algorithm.group_size=4",
        "rollout.tools=*:tests.tool_fixtures:Answer", "rollout.multi_turn.max_turns=3",
        "rollout.multi_turn.max_tool_output_tokens=4"])


def _parameters_sha256(run_dir: Path) -> str:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(run_dir / "model" / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _assert_moved_from_base(run_dir: Path) -> None:
    """The run's final parameters have the base's names and shapes, and training changed some of them."""
    import torch
    from safetensors.torch import load_file

    base = load_file(MODEL / "model.safetensors")
    final = load_file(run_dir / "model" / "model.safetensors")
    assert sorted(final) == sorted(base)
    assert any(not torch.equal(final[name], base[name]) for name in base)


def test_a_multi_turn_run_resumed_from_its_step_1_checkpoint_repeats_step_2_exactly(tmp_path):
    from trainer.controller import train

    ref_dir = train(_config(tmp_path / "ref"))
    ref_rows = read_metrics(ref_dir, "train")
    assert [r["step"] for r in ref_rows] == [1, 2]
    for row in ref_rows:  # the tool was called, its outputs masked, and nothing failed
        assert row["tools/calls_per_response"] > 0.5 and 0 < row["tools/masked_token_frac"] < 0.5, row
        assert row["tools/errors"] == 0 and row["tools/turns_mean"] > 1
        assert row["grad_norm"] > 0, row  # mixed rewards in some group: a real training signal
    _assert_moved_from_base(ref_dir)

    copy = tmp_path / "resumed" / "tools"
    shutil.copytree(ref_dir, copy)
    (copy / "checkpoints" / "latest").write_text("step_000001")  # the commit point back at step 1
    shutil.rmtree(copy / "model")
    resumed = train(_config(tmp_path / "resumed"))
    rows = read_metrics(resumed, "train")
    assert [r["step"] for r in rows] == [1, 2]
    for key in COMPARED:
        assert rows[1][key] == ref_rows[1][key], key
    assert _parameters_sha256(resumed) == _parameters_sha256(ref_dir)
