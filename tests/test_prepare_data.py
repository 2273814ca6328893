"""`python -m examples.prepare_data`: published GSM8K / MATH rows (Parquet or JSONL, built here) to the
loader's JSONL, with the ground truth extracted, every dropped row counted by reason, clear errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from examples.prepare_data import PrepareError, convert, gsm8k_answer, last_boxed, main, prepare
from trainer.data import load_prompts

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A big number?", "answer": "It is 1,000 + 234.\n#### 1,234"},
    {"question": "Negative?", "answer": "#### -5"},
    {"question": "No marker", "answer": "The answer is 3."},
    {"question": "   ", "answer": "#### 1"},
]

MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "We get $\\boxed{\\frac{3}{4}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Nested?", "solution": "First $\\boxed{1}$, then finally $\\boxed{\\sqrt{\\frac{a^{2}}{b_{1}}}}$.",
     "level": "Level 5", "type": "Algebra"},
    {"problem": "Old style", "solution": "So the answer is $\\boxed 5$.", "level": "Level 2", "type": "Algebra"},
    {"problem": "fbox", "solution": "$\\fbox{x=2}$", "level": "Level 2", "type": "Algebra"},
    {"problem": "Unclosed", "solution": "oops $\\boxed{\\frac{1}{2}$", "level": "Level 3", "type": "Algebra"},
    {"problem": "Unboxed", "solution": "The answer is 4.", "level": "Level 1", "type": "Algebra"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("answer", "expected"), [
    ("work\n#### 72", "72"), ("#### 1,234", "1234"), ("####   -5 ", "-5"), ("a #### 1\nb #### 2", "2"),
    ("#### 3.5", "3.5"), ("no marker", None), ("####", None),
])
def test_gsm8k_answer(answer, expected):
    assert gsm8k_answer(answer)[0] == expected


@pytest.mark.parametrize(("solution", "expected"), [
    ("$\\boxed{42}$", "42"),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
    ("$\\boxed{1}$ and $\\boxed{2}$", "2"),                                    # the last one
    ("$\\boxed{\\left\\{ {a}^{ {b} } \\right\\}}$", "\\left\\{ {a}^{ {b} } \\right\\}"),  # deep nesting
    ("$\\boxed {7}$", "7"),
    ("$\\boxed 5$.", "5"),
    ("\\fbox{x}", "x"),
    ("$\\boxed{ 3 }$", "3"),
    ("$\\boxed{\\frac{1}{2}$", None),                                        # never closed
    ("$\\boxed{}$", None),
    ("no box at all", None),
])
def test_last_boxed(solution, expected):
    assert last_boxed(solution)[0] == expected


def test_last_boxed_is_linear_on_hostile_text():
    import time

    start = time.perf_counter()
    assert last_boxed("\\boxed{" * 200_000)[0] is None
    assert last_boxed("x" * 5_000_000 + "\\boxed{1}")[0] == "1"
    assert time.perf_counter() - start < 5.0


def test_gsm8k_parquet_to_loader_jsonl(tmp_path, capsys):
    src = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS), src)
    out = tmp_path / "gsm8k" / "train.jsonl"
    assert main(["gsm8k", "--input", str(src), "--output", str(out)]) == 0
    rows = _read(out)
    assert rows == [
        {"prompt": GSM8K_ROWS[0]["question"], "ground_truth": "72", "task": "math"},
        {"prompt": "A big number?", "ground_truth": "1234", "task": "math"},
        {"prompt": "Negative?", "ground_truth": "-5", "task": "math"},
    ]
    report = capsys.readouterr().out
    assert "rows read: 5" in report and "rows written: 3" in report and "rows dropped: 2" in report
    # rows named as the loader names them: 1-based, `file: row N` in Parquet
    assert f"1 x answer has no '#### <number>' line (first: {src}: row 4)" in report
    assert f"1 x empty or non-text 'question' (first: {src}: row 5)" in report
    # the trainer's loader reads the output as is
    prompts = load_prompts(out, template="r1_zero")
    assert [p.ground_truth for p in prompts] == ["72", "1234", "-5"] and prompts[0].task == "math"
    assert prompts[0].text.endswith(f"User: {GSM8K_ROWS[0]['question']} Assistant: <think>")


def test_math_jsonl_to_loader_jsonl(tmp_path, capsys):
    src = _jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    out = tmp_path / "math_train.jsonl"
    assert main(["math", "--input", str(src), "--output", str(out)]) == 0
    rows = _read(out)
    assert [r["ground_truth"] for r in rows] == ["\\frac{3}{4}", "\\sqrt{\\frac{a^{2}}{b_{1}}}", "5", "x=2"]
    assert rows[0] == {"prompt": MATH_ROWS[0]["problem"], "ground_truth": "\\frac{3}{4}", "task": "math",
                       "level": "Level 1", "subject": "Prealgebra"}
    report = capsys.readouterr().out
    assert "rows read: 6" in report and "rows written: 4" in report and "rows dropped: 2" in report
    assert f"1 x last \\boxed{{ is never closed (first: {src}:5)" in report  # the file's line, 1-based
    assert f"1 x solution has no \\boxed{{}} (first: {src}:6)" in report


def test_math500_layout_with_extra_columns(tmp_path):
    rows = [{"problem": "p", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Algebra", "level": 1,
             "unique_id": "test/algebra/1.json"}]
    src = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    prepare("math", src, tmp_path / "out.jsonl")
    assert _read(tmp_path / "out.jsonl") == [{"prompt": "p", "ground_truth": "2", "task": "math", "level": 1,
                                              "subject": "Algebra"}]


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["gsm8k", "--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"error: input file {tmp_path / 'nope.parquet'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_wrong_columns_name_what_is_needed_and_what_is_there(tmp_path, capsys):
    src = _jsonl(tmp_path / "math_as_gsm8k.jsonl", MATH_ROWS)
    assert main(["gsm8k", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no column(s) ['question', 'answer'] for the gsm8k layout" in err
    assert "the file has ['level', 'problem', 'solution', 'type']" in err
    src = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "solution": "s"}]), src)
    with pytest.raises(PrepareError, match=r"no column\(s\) \['answer'\]"):
        prepare("gsm8k", src, tmp_path / "o.jsonl")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.jsonl", b'{"question": "q", "answer": "#### 1"}\n{"question": \n', r"bad\.jsonl:2: not valid JSON"),
    ("latin1.jsonl", b'{"question": "caf\xe9", "answer": "#### 1"}\n', r"latin1\.jsonl:1: not valid UTF-8"),
    ("list.jsonl", b'[1, 2]\n', r"list\.jsonl:1: a JSON list, not an object"),
    ("garbage.parquet", b"not parquet", r"garbage\.parquet: not a readable Parquet file"),
    ("data.csv", b"question,answer\n", r"unknown format '\.csv'"),
])
def test_unreadable_inputs_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PrepareError, match=message):
        prepare("gsm8k", tmp_path / name, tmp_path / "o.jsonl")


def test_nothing_convertible_is_an_error_and_writes_nothing(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(PrepareError, match=r"none of 1 rows could be converted: 1 x answer has no"):
        prepare("gsm8k", src, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_convert_keeps_non_text_rows_out():
    rows, report = convert("math", [{"problem": 3, "solution": "\\boxed{1}"}, {"problem": "p", "solution": None}])
    assert rows == [] and report.dropped == {"empty or non-text 'problem'": 1, "non-text 'solution'": 1}


def test_gpu_recipes_read_the_prepared_files():
    from examples.configs import qwen25_gsm8k_r1_zero, qwen25_math_r1_zero

    gsm8k, math = qwen25_gsm8k_r1_zero().data, qwen25_math_r1_zero().data
    assert (gsm8k.train_path, gsm8k.eval_path) == ("/data/gsm8k/train.jsonl", "/data/gsm8k/test.jsonl")
    assert (math.train_path, math.eval_path) == ("/data/math/train.jsonl", "/data/math/math500.jsonl")


APPS_ROWS = [
    {"problem_id": 1, "question": "Print the sum of two integers.", "difficulty": "introductory",
     "input_output": json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}), "starter_code": ""},
    {"problem_id": 2, "question": "Return the n-th square.", "difficulty": "interview", "starter_code": "def sq(n):",
     "input_output": json.dumps({"fn_name": "sq", "inputs": [[3], [4]], "outputs": [[9], [16]]})},
    {"problem_id": 3, "question": "No tests.", "input_output": ""},
    {"problem_id": 4, "question": "Uneven.", "input_output": json.dumps({"inputs": ["1"], "outputs": []})},
]
"""Hand-written rows in the APPS/TACO layout: a stdin/stdout problem, a call-based one (outputs wrapped in
a list, as APPS writes them), and two without usable tests."""


def test_apps_layout_to_rows_the_code_verifier_passes(tmp_path, capsys):
    from reward_server.code_sandbox import CodeSandbox
    from reward_server.code_verifier import CodeVerifier

    src = _jsonl(tmp_path / "apps.jsonl", APPS_ROWS)
    out = tmp_path / "apps" / "train.jsonl"
    assert main(["apps", "--input", str(src), "--output", str(out)]) == 0
    rows = _read(out)
    assert [(r["task"], r["difficulty"]) for r in rows] == [("code", "introductory"), ("code", "interview")]
    assert "reads standard input" in rows[0]["prompt"] and "Starter code" not in rows[0]["prompt"]
    assert "```python\ndef sq(n):\n```" in rows[1]["prompt"] and "function `sq`" in rows[1]["prompt"]
    report = capsys.readouterr().out
    assert "rows written: 2" in report and f"1 x input_output is not JSON (first: {src}:3)" in report
    assert f"1 x input_output has no inputs and outputs of one length (first: {src}:4)" in report
    prompts = load_prompts(out, template="r1_zero")
    assert [p.task for p in prompts] == ["code", "code"]
    # The converted ground truth is what the code verifier reads: reference solutions pass every case.
    verifier = CodeVerifier(CodeSandbox(workers=2), partial_credit=False, sample_budget_s=30.0)
    verdicts = verifier.verify_many([("a, b = map(int, input().split())\nprint(a + b)", prompts[0].ground_truth),
                                     ("def sq(n):\n    return n * n", prompts[1].ground_truth)])
    assert [(v.passed, v.total) for v in verdicts] == [(2, 2), (2, 2)]


def test_gpu_code_recipe_reads_the_prepared_apps_files():
    from examples.configs import qwen25_coder_apps

    cfg = qwen25_coder_apps().validate()
    assert (cfg.data.train_path, cfg.data.eval_path) == ("/data/apps/train.jsonl", "/data/apps/test.jsonl")
    assert cfg.reward.verifier == "code"
