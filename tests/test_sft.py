"""SFT's pure parts: reading and tokenising samples, the step schedule, batches and the loss split."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.config import ConfigError, SFTConfig, SFTDataConfig, apply_overrides
from trainer.sft import (
    SFTSample,
    encode_sample,
    load_sft_samples,
    read_sft_rows,
    response_nll,
    sft_batch,
    step_indices,
    steps_per_epoch,
    total_steps,
)


class CharTokenizer:
    """One token per character (ids 1..), EOS = 0: enough to check the alignment of masks."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_rows_checks_fields(tmp_path):
    ok = write_rows(tmp_path / "ok.jsonl", [{"prompt": "q", "response": "r"}])
    assert read_sft_rows(ok) == [{"prompt": "q", "response": "r"}]
    with pytest.raises(ValueError, match="string fields"):
        read_sft_rows(write_rows(tmp_path / "bad.jsonl", [{"prompt": "q"}]))
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "broken.jsonl").write_text("{nope\n")
        read_sft_rows(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError):
        read_sft_rows(tmp_path / "absent.jsonl")


def test_encode_appends_eos_to_the_response_only():
    s = encode_sample(CharTokenizer(), "ab", "cd")
    assert s.prompt_ids == (97, 98) and s.response_ids == (99, 100, 0) and s.length == 5


def test_load_renders_the_template_and_drops_long_samples(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "What is 1+2?", "response": "3"},
                                             {"prompt": "What is 1+2?", "response": "x" * 1000}])
    samples, dropped = load_sft_samples(path, tokenizer=CharTokenizer(), template="r1_zero", max_sample_tokens=600)
    assert dropped == 1 and len(samples) == 1
    prompt = "".join(map(chr, samples[0].prompt_ids))
    assert prompt.endswith("User: What is 1+2? Assistant: <think>")


# --- schedule ------------------------------------------------------------------------------------


def test_steps_and_epochs():
    assert steps_per_epoch(10, 4) == 3
    assert total_steps(10, samples_per_step=4, epochs=2) == 6
    assert total_steps(10, samples_per_step=4, epochs=2, max_steps=4) == 4


def test_every_sample_once_per_epoch_and_order_is_a_function_of_the_step():
    n, per = 10, 4
    seen = []
    for step in (1, 2, 3):
        epoch, idx = step_indices(step, n, samples_per_step=per, seed=7, shuffle=True)
        assert epoch == 0
        seen += idx
    assert sorted(seen) == list(range(n))
    assert len(step_indices(3, n, samples_per_step=per, seed=7, shuffle=True)[1]) == 2  # the leftovers
    epoch, second = step_indices(4, n, samples_per_step=per, seed=7, shuffle=True)
    assert epoch == 1 and second != seen[:4]  # reshuffled
    assert step_indices(4, n, samples_per_step=per, seed=7, shuffle=True) == (epoch, second)
    assert step_indices(1, n, samples_per_step=per, seed=0, shuffle=False) == (0, [0, 1, 2, 3])


# --- batches and the loss ------------------------------------------------------------------------


def test_batch_masks_only_response_tokens():
    samples = [SFTSample((1, 2), (3, 0)), SFTSample((1,), (4, 5, 0))]
    b = sft_batch(samples, pad_token_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 0], [1, 4, 5, 0]]
    assert b.response_mask.tolist() == [[False, False, True, True], [False, True, True, True]]
    assert b.attention_mask.all()
    assert b.num_tokens == 5


def test_tool_outputs_of_a_rejection_row_stay_in_the_text_and_out_of_the_loss(tmp_path):
    """A `trainer reject` row of a multi-turn response: its `tool_spans` (from `Completion.tool_spans`) mask
    the tool outputs' tokens out of the SFT loss; the policy's text and EOS stay in it."""
    from trainer.types import Completion

    output = "[12]"
    c = Completion(token_ids=(1,) * 9, text=f"ab+{output}cd", rollout_logprobs=(0.0,) * 9, finish_reason="stop",
                   loss_mask=(True,) * 3 + (False,) * 4 + (True,) * 2, tool_outputs=(output,))
    assert c.tool_spans() == ((3, 7),) and c.policy_text() == "ab+cd"
    path = write_rows(tmp_path / "rows.jsonl", [{"prompt": "q", "response": c.text,
                                                 "tool_spans": [list(x) for x in c.tool_spans()]},
                                                {"prompt": "q", "response": "xy"}])
    [tool, plain], _ = load_sft_samples(path, tokenizer=CharTokenizer(), template="r1_zero", max_sample_tokens=600)
    assert tool.response_ids == tuple(ord(ch) for ch in c.text) + (0,)
    assert tool.loss_mask == (True,) * 3 + (False,) * 4 + (True,) * 3
    assert plain.loss_mask == ()
    b = sft_batch([SFTSample((1,), (5, 6, 7, 0), (True, False, False, True)), SFTSample((1,), (8, 0))],
                  pad_token_id=0)
    assert b.response_mask.tolist() == [[False, True, False, False, True], [False, True, True, False, False]]
    with pytest.raises(ValueError, match="tool_spans"):
        encode_sample(CharTokenizer(), "q", "abc", [[2, 1]])


def test_batch_rows_padded_to_the_data_parallel_size():
    b = sft_batch([SFTSample((1,), (2, 0))] * 3, pad_token_id=9, row_multiple=2)
    assert b.num_sequences == 4
    assert b.response_mask[3].sum() == 0 and b.attention_mask[3].tolist() == [True, False, False]


def test_sft_loss_over_packed_microbatches_equals_the_whole_step():
    """The learner's contract: micro-batch losses normalised by the step's token count sum to the step's."""
    from trainer.grpo import sft_loss

    torch.manual_seed(0)
    samples = [SFTSample(tuple(range(1, 1 + p)), tuple(range(1, 1 + r)) + (0,)) for p, r in
               [(3, 4), (2, 9), (5, 1), (1, 6), (4, 4)]]
    whole = sft_batch(samples, pad_token_id=0)
    logprobs = -torch.rand(whole.input_ids.shape)
    num_tokens = whole.num_tokens
    full, _ = sft_loss(logprobs, response_mask=whole.response_mask, num_tokens=num_tokens, num_sequences=5)
    parts = 0.0
    for rows in ([1, 3], [0, 4], [2]):  # any split into micro-batches
        mb = sft_batch([samples[i] for i in rows], pad_token_id=0)
        lp = torch.zeros(mb.input_ids.shape)
        for j, i in enumerate(rows):
            lp[j, :samples[i].length] = logprobs[i, :samples[i].length]
        loss, _ = sft_loss(lp, response_mask=mb.response_mask, num_tokens=num_tokens, num_sequences=5)
        parts += float(loss)
    assert parts == pytest.approx(float(full), rel=1e-6)
    nll, count = response_nll(logprobs, whole.response_mask)
    assert nll / count == pytest.approx(float(full), rel=1e-6)


# --- config --------------------------------------------------------------------------------------


def test_sft_config_validates_and_takes_overrides():
    cfg = apply_overrides(SFTConfig(), ["epochs=3", "data.template=r1_cold_start", "learner.lr=1e-4"]).validate()
    assert cfg.epochs == 3 and cfg.data.template == "r1_cold_start"
    with pytest.raises(ConfigError, match="tokens_per_microbatch"):
        SFTConfig(tokens_per_microbatch=10, data=SFTDataConfig(max_sample_tokens=20)).validate()
    with pytest.raises(ConfigError, match="data.template"):
        SFTConfig(data=SFTDataConfig(template="nope")).validate()
    with pytest.raises(ConfigError, match="epochs"):
        SFTConfig(epochs=0).validate()


def test_commands_refuse_bad_input_before_starting_anything(capsys, tmp_path):
    from trainer.__main__ import main

    assert main(["sft", "--example", "nope"]) == 2
    assert "unknown SFT example" in capsys.readouterr().err
    assert main(["sft", "--example", "tiny_cpu_sft", "--set", "epochs=0"]) == 2
    assert "epochs = 0" in capsys.readouterr().err
    assert main(["reject", "--example", "tiny_cpu_reject", "--checkpoint", str(tmp_path)]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    assert main(["reject", "--example", "nope"]) == 2
