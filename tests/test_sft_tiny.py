"""SFT end to end on real Megatron learner actors under Ray, on the SFT stages of the session's
`r1_tiny --quick` run (tests/pipeline_fixtures.py): the cold start's steps lower the validation loss and the
exported Hugging Face model scores the validation set as the learner did; a run resumed from the
distillation stage's mid-run checkpoint repeats that stage's next steps exactly."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from trainer.metrics import read_metrics

pytestmark = pytest.mark.slow


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


def test_sft_lowers_validation_loss_and_exports(r1_tiny_quick):
    cfg = r1_tiny_quick.stage_config("cold_start")
    full = r1_tiny_quick.stage_dir("cold_start")
    steps = cfg.max_steps                                   # 40 steps of 32 from 2,000 samples: one epoch
    train_rows, valid_rows = read_metrics(full, "train"), read_metrics(full, "valid")
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert [r["step"] for r in valid_rows] == list(range(0, steps + 1, cfg.eval_every_steps)) == [0, 20, 40]
    start, end = valid_rows[0]["valid_loss"], valid_rows[-1]["valid_loss"]
    assert end < 0.9 * start, (start, end)
    for row in train_rows:
        for key in ("loss", "nll", "grad_norm", "lr", "samples", "response_tokens", "time/step", "tokens_per_s"):
            assert key in row, key
        assert row["samples"] == cfg.samples_per_step == 32
    assert hf_response_nll(full / "hf", cfg) == pytest.approx(end, rel=1e-4)


def test_a_resumed_sft_run_repeats_the_next_steps_exactly(r1_tiny_quick, tmp_path):
    """A run killed after its step-4 checkpoint resumes there and repeats steps 5 and 6 exactly."""
    from trainer.sft import train_sft

    cfg = r1_tiny_quick.stage_config("distill")
    full = r1_tiny_quick.stage_dir("distill")
    train_rows = read_metrics(full, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6] and cfg.checkpoint_every == 4
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full, resumed_dir)
    shutil.rmtree(resumed_dir / "hf")
    shutil.rmtree(resumed_dir / "checkpoints" / "step_000006")
    (resumed_dir / "checkpoints" / "latest").write_text("step_000004")
    resumed = train_sft(replace(cfg, name="resumed", output_dir=str(tmp_path), resume=True,
                                cluster=replace(cfg.cluster, num_cpus=2)))
    again = read_metrics(resumed, "train")
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for step in (4, 5):
        for key in ("loss", "nll", "grad_norm"):
            assert again[step][key] == pytest.approx(train_rows[step][key], rel=1e-6, abs=1e-8), (step, key)
    assert read_metrics(resumed, "valid")[-1]["valid_loss"] == pytest.approx(read_metrics(full, "valid")[-1]["valid_loss"],
                                                                              rel=1e-6)
