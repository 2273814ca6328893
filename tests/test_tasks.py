"""The demo tasks: generators, splits, reference completions, the tokenizer, and the build's helpers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from examples import build_tiny, tasks
from examples.tasks import ARITHMETIC, COUNTDOWN
from reward_server.verifiers import extract_answer, verify_arithmetic, verify_countdown
from trainer.templates import r1_zero

STEP = re.compile(r"(\d)\+(\d)\+([01])=(\d{1,2})")
ARITHMETIC_COMPLETION = re.compile(r"^(\d\+\d\+[01]=\d{1,2},){1,2}\d\+\d\+[01]=\d{1,2}</think><answer>\d+</answer>$")


@pytest.fixture(scope="module")
def arithmetic_splits():
    return tasks.make_splits(ARITHMETIC, 2000, 200, seed=0)


@pytest.fixture(scope="module")
def countdown_splits():
    return tasks.make_splits(COUNTDOWN, 1000, 200, seed=0)


@pytest.fixture(scope="module")
def tokenizer(arithmetic_splits, countdown_splits):
    from examples.tiny_model import build_tokenizer

    cfg = build_tiny.BuildConfig(tokenizer_corpus=500)
    splits = {ARITHMETIC: arithmetic_splits, COUNTDOWN: countdown_splits}
    return build_tokenizer(build_tiny.tokenizer_corpus(splits, cfg), vocab_size=cfg.vocab_size)


# ------------------------------------------------------------------------------------ generators


@pytest.mark.parametrize("task", [ARITHMETIC, COUNTDOWN])
def test_generators_are_deterministic_for_a_seed(task):
    generate = tasks.GENERATORS[task]
    assert generate(300, 7) == generate(300, 7)
    assert generate(300, 7) != generate(300, 8)
    assert tasks.make_splits(task, 300, 50, 7) == tasks.make_splits(task, 300, 50, 7)


def test_splits_do_not_overlap(arithmetic_splits, countdown_splits):
    for (train, heldout), key in ((arithmetic_splits, tasks.arithmetic_key), (countdown_splits, tasks.countdown_key)):
        train_keys, heldout_keys = {key(e) for e in train}, {key(e) for e in heldout}
        assert len(train_keys) == len(train) and len(heldout_keys) == len(heldout), "duplicates in a split"
        assert not train_keys & heldout_keys
        assert not {e.prompt for e in train} & {e.prompt for e in heldout}


def test_heldout_split_does_not_move_when_train_grows():
    _, small = tasks.make_splits(ARITHMETIC, 100, 50, seed=1)
    _, large = tasks.make_splits(ARITHMETIC, 1000, 50, seed=1)
    assert small == large


def test_arithmetic_rows(arithmetic_splits):
    for e in arithmetic_splits[0][:500]:
        a, b = tasks.parse_arithmetic_question(e.prompt)
        assert e.prompt == f"What is {a}+{b}?" and e.ground_truth == str(a + b) and e.task == ARITHMETIC
        assert 10 <= a <= 999 and 10 <= b <= 999


def test_every_reference_completion_verifies(arithmetic_splits, countdown_splits):
    for e in arithmetic_splits[0] + arithmetic_splits[1]:
        assert verify_arithmetic(extract_answer(tasks.reference_completion(e)), e.ground_truth), e
    for e in countdown_splits[0] + countdown_splits[1]:
        assert verify_countdown(extract_answer(tasks.reference_completion(e)), e.ground_truth), e


def test_chain_of_thought_has_the_documented_shape():
    assert tasks.arithmetic_completion(347, 86) == "7+6+0=13,4+8+1=13,3+0+1=4</think><answer>433</answer>"
    assert tasks.arithmetic_completion(999, 999) == "9+9+0=18,9+9+1=19,9+9+1=19</think><answer>1998</answer>"
    assert tasks.arithmetic_completion(10, 10) == "0+0+0=0,1+1+0=2</think><answer>20</answer>"


def test_chain_of_thought_steps_are_column_sums(arithmetic_splits):
    for e in arithmetic_splits[1]:
        a, b = tasks.parse_arithmetic_question(e.prompt)
        text = tasks.reference_completion(e)
        assert ARITHMETIC_COMPLETION.match(text), text
        steps = STEP.findall(text.split("</think>")[0])
        da, db = str(a)[::-1], str(b)[::-1]
        assert len(steps) == max(len(da), len(db))
        carry = 0
        for i, (x, y, c, s) in enumerate(steps):
            assert x == (da[i] if i < len(da) else "0") and y == (db[i] if i < len(db) else "0")
            assert int(c) == carry and int(s) == int(x) + int(y) + carry
            carry = int(s) // 10


@pytest.mark.parametrize("delta", tasks.WRONG_SUM_DELTAS)
def test_a_wrong_step_changes_one_sum_and_the_answer(delta):
    for a, b in [(347, 86), (999, 999), (10, 10), (505, 495), (19, 981)]:
        n_steps = max(len(str(a)), len(str(b)))
        right, _ = tasks.arithmetic_steps(a, b)
        for i in range(n_steps):
            text = tasks.arithmetic_completion(a, b, wrong_step=i, wrong_delta=delta)
            assert ARITHMETIC_COMPLETION.match(text), text
            wrong = STEP.findall(text)
            assert all(x == y for x, y in zip(wrong[:i], [STEP.match(s).groups() for s in right[:i]]))
            x, y, c, s = map(int, wrong[i])
            assert s != x + y + c and abs(s - (x + y + c)) == abs(delta)
            assert not verify_arithmetic(extract_answer(text), str(a + b))


def test_noisy_completions_are_wrong_at_the_requested_rate(arithmetic_splits):
    import random

    rng = random.Random(0)
    rows = arithmetic_splits[0][:1000]
    wrong = sum(not verify_arithmetic(extract_answer(tasks.noisy_arithmetic_completion(e, rng, 0.3)), e.ground_truth)
                for e in rows)
    assert 240 <= wrong <= 360


def test_countdown_instances_are_solvable_with_the_stored_solution(countdown_splits):
    for e in countdown_splits[0] + countdown_splits[1]:
        truth = json.loads(e.ground_truth)
        assert e.task == COUNTDOWN and len(truth["numbers"]) in tasks.COUNTDOWN_SIZES
        assert tasks.COUNTDOWN_TARGET_MIN <= truth["target"] <= tasks.COUNTDOWN_TARGET_MAX
        assert str(truth["numbers"]) in e.prompt and str(truth["target"]) in e.prompt
        assert verify_countdown(e.solution, e.ground_truth), e
        used = sorted(int(n) for n in re.findall(r"\d+", e.solution))
        assert used == sorted(truth["numbers"])


def test_countdown_uses_all_operations(countdown_splits):
    ops = "".join(e.solution for e in countdown_splits[0])
    assert all(ops.count(op) > 20 for op in "+-*/()")


def test_countdown_reference_steps_chain_to_the_target(countdown_splits):
    for e in countdown_splits[1]:
        think = tasks.reference_completion(e).split("</think>")[0]
        steps = [re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", s) for s in think.split(",")]
        assert all(steps), think
        for m in steps:
            x, op, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y and x % y == 0 else None}[op] == z
        assert int(steps[-1][4]) == json.loads(e.ground_truth)["target"]


def test_jsonl_round_trip(tmp_path, countdown_splits):
    rows = countdown_splits[1][:20] + tasks.generate_arithmetic(20, 3)
    path = tasks.write_jsonl(tmp_path / "d" / "x.jsonl", rows)
    assert list(tasks.read_jsonl(path)) == rows
    first = json.loads(path.read_text().splitlines()[0])
    assert {"prompt", "ground_truth", "task", "solution"} <= set(first)
    arithmetic = json.loads(path.read_text().splitlines()[-1])
    assert set(arithmetic) == {"prompt", "ground_truth", "task"}


# ------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_text_exactly(tokenizer, arithmetic_splits, countdown_splits):
    texts = [r1_zero(e.prompt) + tasks.reference_completion(e) for e in arithmetic_splits[1][:50]]
    texts += [r1_zero(e.prompt) + tasks.reference_completion(e) for e in countdown_splits[1][:50]]
    texts += ["  odd   spacing\n\tand tabs ", "Ünïcödé ✓ 数学", "<answer> 12 </answer><think></think>", ""]
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tokenizer_splits_digits_one_per_token(tokenizer):
    text = r1_zero("What is 9876+543210?") + "1234567890</think><answer>10419086</answer>"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert all(len(p) == 1 for p in pieces if any(ch.isdigit() for ch in p)), pieces
    assert sum(p.isdigit() for p in pieces) == sum(ch.isdigit() for ch in text)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in pieces


def test_prompts_fit_the_configured_prompt_budget(tokenizer, arithmetic_splits, countdown_splits):
    from trainer.config import ModelConfig

    for e in arithmetic_splits[1] + countdown_splits[1]:
        assert len(tokenizer(r1_zero(e.prompt))["input_ids"]) <= ModelConfig.max_prompt_tokens
        assert len(tokenizer(tasks.reference_completion(e))["input_ids"]) < ModelConfig.max_response_tokens


# ----------------------------------------------------------------------------------- build pieces


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples.tiny_model import write_test_model

    torch.set_num_threads(1)  # one thread: no OpenMP spinning against the other processes on this machine
    path = write_test_model(tmp_path_factory.mktemp("tiny"), seed=0, num_layers=2)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_shared_prefix_loss_equals_the_plain_loss(random_model):
    model, tok = random_model
    rows = tasks.generate_arithmetic(8, 5)
    prompt_ids = [tok(r1_zero(e.prompt))["input_ids"] for e in rows]
    prefix_len = build_tiny.common_prefix_length(prompt_ids)
    assert 0 < prefix_len < min(len(p) for p in prompt_ids)
    batch = build_tiny.collate([build_tiny.encode_sample(tok, p, tasks.reference_completion(e))
                                for p, e in zip(prompt_ids, rows)], tok.eos_token_id)
    plain = model(**batch).loss
    plain.backward()
    plain_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    shared = build_tiny.shared_prefix_loss(model, batch, prefix_len)
    shared.backward()
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, plain_grad, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_encode_sample_masks_the_prompt_and_ends_with_eos(random_model):
    _, tok = random_model
    ids, labels = build_tiny.encode_sample(tok, [5, 6, 7], "1+2+0=3</think><answer>3</answer>")
    assert ids[:3] == [5, 6, 7] and labels[:3] == [build_tiny.IGNORE_INDEX] * 3
    assert ids[3:] == labels[3:] and ids[-1] == tok.eos_token_id


def test_batched_left_padded_generation_matches_one_at_a_time(random_model):
    from examples.eval_base import generate

    model, tok = random_model
    prompts = [r1_zero("What is 12+34?"), r1_zero("Using the numbers [1, 2, 3], make 6. Go.")]
    batched = generate(model, tok, prompts, temperature=None, max_new_tokens=6)
    alone = [generate(model, tok, [p], temperature=None, max_new_tokens=6)[0] for p in prompts]
    assert batched == alone


def test_is_correct_uses_the_task_verifier(countdown_splits):
    from examples.eval_base import is_correct

    cd = countdown_splits[1][0]
    ar = tasks.generate_arithmetic(1, 0)[0]
    assert is_correct(tasks.reference_completion(cd), cd) and is_correct(tasks.reference_completion(ar), ar)
    assert not is_correct("1+1=2</think><answer>0</answer>", ar)
    assert not is_correct("no answer at all", ar)


def test_stamp_skips_a_matching_build_and_notices_changes(tmp_path, capsys):
    cfg = build_tiny.BuildConfig(out_dir=str(tmp_path))
    assert not build_tiny.is_up_to_date(cfg)
    for path in build_tiny._outputs(tmp_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder")
    (tmp_path / build_tiny.STAMP_NAME).write_text(json.dumps({"hash": build_tiny.build_hash(cfg)}))
    assert build_tiny.is_up_to_date(cfg)
    build_tiny.main(["--from-scratch", "--out-dir", str(tmp_path)])
    assert "up to date" in capsys.readouterr().out
    assert not build_tiny.is_up_to_date(build_tiny.BuildConfig(out_dir=str(tmp_path), seed=1))
    assert build_tiny.build_hash(cfg) != build_tiny.build_hash(build_tiny.BuildConfig(pretrain_steps=1))
