"""SFT end to end on the tiny model: real Megatron learner actors under Ray. A few cold-start steps lower
the validation loss, the exported Hugging Face model scores the validation set as the learner did, and a
run resumed from a checkpoint repeats the uninterrupted run's next steps exactly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trainer.config import apply_overrides
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("GRPO_RAY_TINY_MODEL", ROOT / "artifacts" / "tiny-qwen2"))
"""The tiny base (`python -m examples.build_tiny`); the variable points the test at another model dir."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL / "config.json").exists(),
                       reason="run `python -m examples.build_tiny` (make test does) first"),
]


def sft_config(tmp_path: Path, name: str):
    from examples.build_sft_data import build
    from examples.configs import tiny_cpu_sft

    data = build(tmp_path / "artifacts", n_train=96, n_valid=24)
    return apply_overrides(tiny_cpu_sft(), [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", f"model.path={MODEL}",
        f"data.train_path={data['cold_start/train']}", f"data.valid_path={data['cold_start/valid']}",
        "samples_per_step=24", "epochs=1", "eval_every_steps=0", "checkpoint_every=2", "learner.lr=2e-3",
        "tokens_per_microbatch=2048", "cluster.num_cpus=2",
    ])


def hf_response_nll(model_dir: Path, cfg) -> float:
    """Mean NLL per response token of the validation set under the exported model, with plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.sft import load_sft_samples, response_nll, sft_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples, _ = load_sft_samples(cfg.data.valid_path, tokenizer=tokenizer, template=cfg.data.template,
                                  max_sample_tokens=cfg.data.max_sample_tokens, limit=cfg.data.valid_size)
    batch = sft_batch(samples, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask.long()).logits      # [N, L, V]
    logprobs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    logprobs = torch.nn.functional.pad(logprobs, (1, 0))                                       # [N, L]
    nll, count = response_nll(logprobs, batch.response_mask)
    return nll / count


def test_sft_lowers_validation_loss_exports_and_resumes_exactly(tmp_path):
    from trainer.sft import train_sft

    cfg = sft_config(tmp_path, "full")
    full = train_sft(cfg)                                   # 96 samples / 24 per step = 4 steps
    train_rows, valid_rows = read_metrics(full, "train"), read_metrics(full, "valid")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in valid_rows] == [0, 4]
    start, end = valid_rows[0]["valid_loss"], valid_rows[-1]["valid_loss"]
    assert end < 0.9 * start, (start, end)
    for row in train_rows:
        for key in ("loss", "nll", "grad_norm", "lr", "samples", "response_tokens", "time/step", "tokens_per_s"):
            assert key in row, key
        assert row["samples"] == 24
    assert hf_response_nll(full / "hf", cfg) == pytest.approx(end, rel=1e-4)

    # A run killed after its step-2 checkpoint resumes there and repeats steps 3 and 4 exactly.
    resumed_dir = tmp_path / "runs" / "resumed"
    shutil.copytree(full, resumed_dir)
    shutil.rmtree(resumed_dir / "hf")
    shutil.rmtree(resumed_dir / "checkpoints" / "step_000004")
    (resumed_dir / "checkpoints" / "latest").write_text("step_000002")
    resumed = train_sft(apply_overrides(cfg, ["name=resumed"]))
    again = read_metrics(resumed, "train")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for step in (2, 3):
        for key in ("loss", "nll", "grad_norm"):
            assert again[step][key] == pytest.approx(train_rows[step][key], rel=1e-6, abs=1e-8), (step, key)
    assert read_metrics(resumed, "valid")[-1]["valid_loss"] == pytest.approx(end, rel=1e-6)
