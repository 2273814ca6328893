"""Data loading: `max_prompt_tokens` enforced at load with the drop counted, errors that name the file and
line, and the inputs of a run (model directory, tokenizer, data files) checked before anything starts."""

from __future__ import annotations

import json
import logging
import time

import pytest

from trainer.config import TrainConfig, apply_overrides
from trainer.data import (
    DataError,
    check_run_inputs,
    drop_long_prompts,
    load_prompts,
    load_run_prompts,
    prompt_token_counts,
    read_rows,
)
from trainer.types import Prompt


class CharTokenizer:
    """One token per character, plus a BOS when `add_special_tokens` (as many tokenizers do)."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[0] * add_special_tokens + [ord(c) for c in t] for t in texts]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": "short", "ground_truth": "1"}, {"prompt": "x" * 50, "ground_truth": "2"},
        {"prompt": "mid", "ground_truth": "3"}, {"prompt": "y" * 80, "ground_truth": "4"}]


def test_token_count_is_the_rendered_prompt_with_special_tokens():
    prompt = Prompt(index=0, text="abc", ground_truth="1")
    assert prompt_token_counts([prompt], CharTokenizer()) == [4]  # BOS + 3 characters
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        prompt_token_counts([prompt], None)


def test_long_prompts_dropped_at_load_and_counted(tmp_path, caplog):
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    tok = CharTokenizer()
    # the template adds the same text to every prompt; measure it once
    base = len(tok([load_prompts(path, template="r1_zero")[0].text])["input_ids"][0]) - len("short")
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        prompts = load_prompts(path, template="r1_zero", tokenizer=tok, max_prompt_tokens=base + 50)
    assert [p.ground_truth for p in prompts] == ["1", "2", "3"]       # 50 characters fit exactly, 80 do not
    assert [p.index for p in prompts] == [0, 1, 2]
    (record,) = caplog.records
    assert f"dropped 1 of 4 prompts longer than model.max_prompt_tokens = {base + 50} tokens" in record.message
    assert f"(longest: {base + 80} tokens)" in record.message and "d.jsonl" in record.message
    # indices stay the row numbers, and `limit` counts the prompts that fit
    kept = load_prompts(path, template="r1_zero", tokenizer=tok, max_prompt_tokens=base + 10, limit=1)
    assert [(p.index, p.ground_truth) for p in kept] == [(0, "1")]
    kept = load_prompts(path, template="r1_zero", tokenizer=tok, max_prompt_tokens=base + 10)
    assert [p.index for p in kept] == [0, 2]


def test_every_prompt_too_long_is_an_error_with_the_setting_to_change(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"all 4 prompts are longer than model\.max_prompt_tokens = 5 tokens "
                                        r"\(the shortest has \d+\); raise it, e\.g\. --set model\.max_prompt_tokens="):
        load_prompts(path, template="r1_zero", tokenizer=CharTokenizer(), max_prompt_tokens=5)


def test_no_limit_without_max_prompt_tokens(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    assert len(load_prompts(path, template="r1_zero")) == 4


def test_drop_keeps_everything_that_fits_silently(caplog):
    prompts = [Prompt(index=i, text="a" * i, ground_truth="") for i in range(5)]
    with caplog.at_level(logging.WARNING):
        assert drop_long_prompts(prompts, CharTokenizer(), 5, source="s") == prompts
    assert not caplog.records


@pytest.mark.parametrize(("content", "message"), [
    (b'{"prompt": "caf\xe9", "ground_truth": "1"}\n', r"bad\.jsonl:1: not valid UTF-8 \(byte 0xe9 at column 16\)"),
    (b'{"prompt": "a", "ground_truth": "1"}\n\n{"prompt": "\xff"}\n', r"bad\.jsonl:3: not valid UTF-8"),
    (b'[1, 2]\n', r"bad\.jsonl:1: a JSON list, not an object"),
    (b'{"prompt": "", "ground_truth": "1"}\n', r"bad\.jsonl:1: an empty or non-text prompt"),
    # file line numbers, 1-based, blank lines counted: the same numbers as the JSON and UTF-8 errors
    (b'\n{"prompt": "a", "ground_truth": "1"}\n\n{"prompt": 7, "ground_truth": "1"}\n',
     r"bad\.jsonl:4: an empty or non-text prompt"),
    (b'{"prompt": "a", "ground_truth": "1"}\n\n{"prompt": "b"}\n', r"bad\.jsonl:3: lacks field\(s\) \['ground_truth'\]"),
    (b"\n\n", r"bad\.jsonl holds no rows"),
])
def test_unreadable_rows_name_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_rows(tmp_path / "bad.jsonl")


def test_unreadable_parquet_and_missing_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        read_rows(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"does not exist .*python -m examples\.prepare_data"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is a directory, not a file"):
        read_rows(tmp_path)


# --- a run's inputs, before anything starts ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model directory as far as the checks look: config.json, a weights file, a real tokenizer."""
    from examples.tiny_model import build_tokenizer, sample_corpus

    path = tmp_path_factory.mktemp("model")
    build_tokenizer(sample_corpus(200)).save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def _cfg(model, train, heldout, *extra):
    return apply_overrides(TrainConfig(), [f"model.path={model}", f"data.train_path={train}",
                                           f"data.eval_path={heldout}", *extra]).validate()


def test_check_run_inputs_counts_prompts_with_the_models_tokenizer(model_dir, tmp_path):
    rows = [{"prompt": f"What is {a}+{a}?", "ground_truth": str(2 * a)} for a in range(10, 30)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    heldout = _jsonl(tmp_path / "heldout.jsonl", rows[:5] + [{"prompt": "9" * 400, "ground_truth": "0"}])
    cfg = _cfg(model_dir, train, heldout, "data.eval_size=3")
    inputs = check_run_inputs(cfg)
    assert (len(inputs.train), len(inputs.heldout)) == (20, 3)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_prompts, eval_prompts = load_run_prompts(_cfg(model_dir, train, heldout, "data.eval_size=100"), tokenizer)
    assert len(train_prompts) == 20 and len(eval_prompts) == 5  # 400 digits: over 128 tokens, dropped
    n = len(tokenizer(train_prompts[0].text)["input_ids"])
    assert prompt_token_counts(train_prompts[:1], tokenizer) == [n] and n <= TrainConfig().model.max_prompt_tokens


@pytest.mark.parametrize(("what", "message"), [
    ("model", r"model\.path = '.*nowhere' is not a directory: point it at a local Hugging Face model directory"),
    ("config", r"has no config\.json: not a Hugging Face model directory"),
    ("weights", r"holds no \*\.safetensors weights"),
    ("train", r"data file .*missing_train\.jsonl does not exist"),
    ("eval", r"data file .*missing_eval\.jsonl does not exist"),
    ("utf8", r"train\.jsonl:2: not valid UTF-8"),
    ("tokenizer", r"the tokenizer does not load"),
])
def test_check_run_inputs_names_what_is_missing(model_dir, tmp_path, what, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    train = _jsonl(tmp_path / "train.jsonl", ROWS)
    heldout = train
    if what == "model":
        model = tmp_path / "nowhere"
    elif what == "config":
        (model / "config.json").unlink()
    elif what == "weights":
        (model / "model.safetensors").unlink()
    elif what == "train":
        train = tmp_path / "missing_train.jsonl"
    elif what == "eval":
        heldout = tmp_path / "missing_eval.jsonl"
    elif what == "utf8":
        train.write_bytes(b'{"prompt": "a", "ground_truth": "1"}\n{"prompt": "\xc3\x28", "ground_truth": "1"}\n')
    elif what == "tokenizer":
        for f in model.glob("tokenizer*"):
            f.write_text("{ not json")
    with pytest.raises(DataError, match=message):
        check_run_inputs(_cfg(model, train, heldout))


def test_train_command_stops_on_bad_inputs_before_starting_anything(model_dir, tmp_path, capsys):
    """The check runs in `python -m trainer train` before Ray or any actor: a missing data file costs
    well under the 49 s it took to start every actor first."""
    import ray

    from trainer.__main__ import main

    start = time.perf_counter()
    code = main(["train", "--example", "tiny_cpu", "--set", f"model.path={model_dir}",
                 "--set", f"data.train_path={tmp_path / 'absent.jsonl'}"])
    assert code == 2 and time.perf_counter() - start < 30
    assert f"error: data file {tmp_path / 'absent.jsonl'} does not exist" in capsys.readouterr().err
    assert not ray.is_initialized()
    code = main(["train", "--example", "tiny_cpu", "--set", f"model.path={tmp_path / 'no_model'}"])
    assert code == 2 and "is not a directory" in capsys.readouterr().err


# --- inputs that cannot work, refused by `python -m trainer train` before anything starts (issue 23) ---


def _train_args(model_dir, tmp_path, train, heldout, *extra):
    args = ["train", "--example", "tiny_cpu", "--set", f"model.path={model_dir}", "--set", f"data.train_path={train}",
            "--set", f"data.eval_path={heldout}", "--set", f"output_dir={tmp_path / 'runs'}"]
    for item in extra:
        args += ["--set", item]
    return args


class Started(Exception):
    """Raised by the stand-in `Run.start`: the start-up got as far as building the actors."""


@pytest.fixture
def run_start(monkeypatch):
    """Replace `Run.start` (the actor start-up) by a recorder of what the run was handed."""
    import trainer.controller as controller

    seen: list = []

    def start(cfg, run_dir, checkpoint, inputs):
        seen.append(inputs)
        raise Started

    monkeypatch.setattr(controller.Run, "start", start)
    return seen


@pytest.mark.parametrize(("extra", "message"), [
    (["learner.lr=1e308"], r"learner\.lr = 1e\+308 is out of range: allowed \(0, 1\]"),
    (["output_dir="], r"output_dir = '': must name a directory"),
    (["algorithm.prompts_per_step=32"], r"algorithm\.prompts_per_step = 32 is more than the 20 training prompts of "
                                        r".*train\.jsonl .*: a step would hold a prompt twice"),
])
def test_train_command_refuses_settings_that_cannot_work(model_dir, tmp_path, capsys, run_start, extra, message):
    import re

    from trainer.__main__ import main

    rows = [{"prompt": f"What is {a}+{a}?", "ground_truth": str(2 * a)} for a in range(10, 30)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    assert main(_train_args(model_dir, tmp_path, train, train, *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert run_start == [] and not (tmp_path / "runs").exists()


def test_a_run_without_the_command_line_check_refuses_a_data_set_smaller_than_a_step(model_dir, tmp_path, run_start):
    """`controller.train(cfg)` (the pipeline's GRPO stage) loads and checks the data itself, first."""
    from trainer.controller import train

    rows = [{"prompt": f"What is {a}+1?", "ground_truth": str(a + 1)} for a in range(5)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(model_dir, path, path, f"output_dir={tmp_path / 'runs'}", "algorithm.prompts_per_step=8")
    with pytest.raises(DataError, match=r"prompts_per_step = 8 is more than the 5 training prompts"):
        train(cfg)
    assert run_start == []


class GuardedTokenizer:
    """The model's tokenizer, refusing to tokenise any text over the character bound (a 20 MB line took
    48 s and 8 GB to tokenise before it was dropped), and counting its calls."""

    def __init__(self, tokenizer, max_prompt_tokens):
        from trainer.data import max_prompt_chars

        self.tokenizer, self.calls = tokenizer, 0
        self.bound = max_prompt_chars(tokenizer, max_prompt_tokens)

    def __call__(self, texts, **kwargs):
        self.calls += 1
        too_long = [len(t) for t in texts if len(t) > self.bound]
        assert not too_long, f"asked to tokenise texts of {too_long} characters"
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_line_is_dropped_unread_and_prompts_are_tokenised_once_before_the_actors(
        model_dir, tmp_path, monkeypatch, run_start, caplog):
    from transformers import AutoTokenizer

    from trainer.__main__ import main

    guards: list[GuardedTokenizer] = []
    load = AutoTokenizer.from_pretrained

    def guarded(*args, **kwargs):
        guards.append(GuardedTokenizer(load(*args, **kwargs), TrainConfig().model.max_prompt_tokens))
        return guards[-1]

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", guarded)
    rows = [{"prompt": f"What is {a}+{a}?", "ground_truth": str(2 * a)} for a in range(10, 30)]
    rows.insert(3, {"prompt": "7" * 2_000_000, "ground_truth": "0"})
    train = _jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trainer.data"), pytest.raises(Started):
        main(_train_args(model_dir, tmp_path, train, train, "model.max_prompt_tokens=128"))
    (inputs,) = run_start
    assert len(inputs.train) == 20 and 3 not in [p.index for p in inputs.train]
    assert [p.index for p in inputs.train][:4] == [0, 1, 2, 4]  # ids stay the rows' numbers
    assert len(guards) == 1 and guards[0].calls == 2  # one tokenizer, the training file and the held-out file once
    assert f"{train}:4" in caplog.text and "dropped 1 prompts of over" in caplog.text


def test_a_training_set_of_mostly_duplicates_is_warned_about(model_dir, tmp_path, caplog):
    rows = [{"prompt": "What is 2+2?", "ground_truth": "4"}] * 15 + [
        {"prompt": f"What is {a}+1?", "ground_truth": str(a + 1)} for a in range(5)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        check_run_inputs(_cfg(model_dir, train, train))
    assert "14 of 20 training prompts repeat an earlier prompt's text (70%)" in caplog.text
    caplog.clear()
    half = _jsonl(tmp_path / "half.jsonl", rows[5:])  # 9 repeats of 15: over half, warned
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        check_run_inputs(_cfg(model_dir, half, half))
    assert "9 of 15 training prompts repeat" in caplog.text
    caplog.clear()
    mixed = _jsonl(tmp_path / "mixed.jsonl", rows[10:] + [{"prompt": f"q{i}", "ground_truth": "1"} for i in range(5)])
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        check_run_inputs(_cfg(model_dir, mixed, mixed))  # 4 repeats of 15
    assert "repeat an earlier" not in caplog.text


def test_parquet_rows_are_named_from_1(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "ground_truth": "1"}, {"prompt": "", "ground_truth": "2"}]),
                   tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: row 2: an empty or non-text prompt"):
        read_rows(tmp_path / "d.parquet")
