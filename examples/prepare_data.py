"""Turn published GSM8K or MATH files into the loader's JSONL (`trainer/data.py`).

    python -m examples.prepare_data gsm8k --input gsm8k/main/train-00000-of-00001.parquet \\
        --output /data/gsm8k/train.jsonl
    python -m examples.prepare_data math --input MATH/train.jsonl --output /data/math/train.jsonl
    python -m examples.prepare_data apps --input apps/train.jsonl --output /data/apps/train.jsonl

Input: Parquet (`.parquet`) or JSON lines (`.jsonl`, `.json`), in the published column layouts:
- gsm8k (openai/gsm8k): `question`, `answer`; the answer's last line is `#### <number>`. The ground truth
  is that number with thousands separators removed (`#### 1,234` -> `1234`).
- math (Hendrycks MATH, MATH-500): `problem`, `solution`; the ground truth is the content of the
  solution's last `\\boxed{...}` (or `\\fbox{...}`), braces matched however deeply they nest.
- apps (codeparrot/apps, and BAAI/TACO, which keeps its layout): `question`, `input_output` (a JSON string
  `{"inputs": [...], "outputs": [...]}`, plus `fn_name` for call-based problems), optional `starter_code`.
  The ground truth is that JSON, as the `code` verifier reads it (docs/code_rewards.md); the task is
  `code`; the prompt is the question, the starter code, and one line saying how the program is called
  (standard input and output, or the function `fn_name`).

Output: one JSON object per line, `{"prompt", "ground_truth", "task": "math"}` (`"code"` for apps), plus
`level` and `subject` (MATH's `type`), or `difficulty` (APPS), when the input has them. The prompt is the bare question: the run's
`data.template` renders it at load time, where prompts longer than `model.max_prompt_tokens` are dropped.

Rows without an extractable answer or with an empty question are dropped, and the report counts each
reason. A missing input file, an unknown format or missing columns is an error that names them.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GSM8K_MARKER = "####"
BOXED_COMMANDS = ("\\boxed", "\\fbox")


class PrepareError(ValueError):
    """An input that cannot be converted; the message names the file and what is wrong."""


# --- answers ---------------------------------------------------------------------------------------


def gsm8k_answer(answer: str) -> tuple[str | None, str]:
    """(the number after the last `####`, '') or (None, why not)."""
    at = answer.rfind(GSM8K_MARKER)
    if at == -1:
        return None, "answer has no '#### <number>' line"
    value = answer[at + len(GSM8K_MARKER):].strip().replace(",", "")
    if not value:
        return None, "nothing after '####'"
    return value, ""


def last_boxed(solution: str) -> tuple[str | None, str]:
    """(content of the last `\\boxed{...}`, '') or (None, why not); one linear scan from its brace.

    `\\boxed 5` (a single token after a space, as some MATH solutions write it) counts too.
    """
    at, command = max((solution.rfind(c), c) for c in BOXED_COMMANDS)
    if at == -1:
        return None, "solution has no \\boxed{}"
    start = i = at + len(command)
    while i < len(solution) and solution[i].isspace():
        i += 1
    if i == len(solution) or solution[i] != "{":
        token = solution[i:].split("$", 1)[0].split(None, 1)
        if i > start and token and command == "\\boxed":
            return token[0], ""
        return None, "last \\boxed is not followed by {"
    depth = 0
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            content = solution[i + 1:j].strip()
            return (content, "") if content else (None, "empty \\boxed{}")
    return None, "last \\boxed{ is never closed"


def apps_tests(input_output: str) -> tuple[str | None, str]:
    """(the `code` verifier's ground truth from an APPS/TACO `input_output`, '') or (None, why not)."""
    try:
        spec = json.loads(input_output)
    except json.JSONDecodeError:
        return None, "input_output is not JSON"
    if not isinstance(spec, dict):
        return None, "input_output is not a JSON object"
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        return None, "input_output has no inputs and outputs of one length"
    if not inputs:
        return None, "input_output has no test case"
    truth: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
    if spec.get("fn_name"):
        truth["fn_name"] = spec["fn_name"]
    return json.dumps(truth), ""


def code_prompt(question: str, row: dict[str, Any], ground_truth: str) -> str:
    """The question, its starter code, and how the program will be called."""
    fn_name = json.loads(ground_truth).get("fn_name")
    how = (f"Write the function `{fn_name}` in Python; it is called with each test's arguments." if fn_name else
           "Write a Python program that reads standard input and writes the answer to standard output.")
    starter = row.get("starter_code")
    starter_text = f"\n\nStarter code:\n```python\n{starter.strip()}\n```" if isinstance(starter, str) and starter.strip() else ""
    return f"{question.strip()}{starter_text}\n\n{how} Answer with one ```python code block."


# --- conversion --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A published layout: the question column, the column the answer is extracted from, and how."""

    question: str
    source: str
    extract: Callable[[str], tuple[str | None, str]]
    keep: dict[str, str] = field(default_factory=dict)
    """Optional input columns copied to the output, input name -> output name."""
    task: str = "math"
    """The rows' task, which picks the verifier."""
    prompt: Callable[[str, dict[str, Any], str], str] | None = None
    """(question, row, ground truth) -> prompt; None: the bare question."""


LAYOUTS: dict[str, Layout] = {
    "gsm8k": Layout("question", "answer", gsm8k_answer),
    "math": Layout("problem", "solution", last_boxed, {"level": "level", "type": "subject", "subject": "subject"}),
    "apps": Layout("question", "input_output", apps_tests, {"difficulty": "difficulty"}, task="code",
                   prompt=code_prompt),
}


@dataclass
class Report:
    """What a conversion did with each row."""

    read: int = 0
    written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    first_dropped: dict[str, str] = field(default_factory=dict)
    """Reason -> where its first occurrence is (`file:LINE`, 1-based, or `file: row N` in Parquet)."""

    def drop(self, where: str, reason: str) -> None:
        self.dropped[reason] += 1
        self.first_dropped.setdefault(reason, where)

    def lines(self) -> list[str]:
        out = [f"rows read: {self.read}", f"rows written: {self.written}",
               f"rows dropped: {sum(self.dropped.values())}"]
        out += [f"  {n} x {reason} (first: {self.first_dropped[reason]})"
                for reason, n in self.dropped.most_common()]
        return out


def convert(kind: str, rows: list[dict[str, Any]], where: list[str] | None = None,
            ) -> tuple[list[dict[str, Any]], Report]:
    """The loader's rows for published `kind` rows, and the report; `where` names each row in it
    (default `row N`, 1-based)."""
    layout, report, out = LAYOUTS[kind], Report(read=len(rows)), []
    where = where or [f"row {n}" for n in range(1, len(rows) + 1)]
    for i, row in enumerate(rows):
        question, source = row.get(layout.question), row.get(layout.source)
        if not isinstance(question, str) or not question.strip():
            report.drop(where[i], f"empty or non-text {layout.question!r}")
            continue
        if not isinstance(source, str):
            report.drop(where[i], f"non-text {layout.source!r}")
            continue
        answer, why = layout.extract(source)
        if answer is None:
            report.drop(where[i], why)
            continue
        prompt = layout.prompt(question, row, answer) if layout.prompt else question.strip()
        item: dict[str, Any] = {"prompt": prompt, "ground_truth": answer, "task": layout.task}
        item |= {name: row[col] for col, name in layout.keep.items() if row.get(col) is not None}
        out.append(item)
    report.written = len(out)
    return out, report


# --- files -------------------------------------------------------------------------------------------


def read_input(path: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) of every row of a Parquet or JSON-lines file, checked for the layout's columns;
    `where` is `file:LINE` (1-based file lines) or `file: row N` (Parquet, 1-based)."""
    if not path.is_file():
        raise PrepareError(f"input file {path} does not exist")
    if path.suffix == ".parquet":
        rows = _read_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    else:
        raise PrepareError(f"{path}: unknown format {path.suffix!r}; expected .parquet, .jsonl or .json (JSON lines)")
    layout = LAYOUTS[kind]
    columns = sorted({key for _, row in rows for key in row})
    missing = [c for c in (layout.question, layout.source) if c not in columns]
    if missing:
        raise PrepareError(f"{path}: no column(s) {missing} for the {kind} layout, which needs "
                           f"{[layout.question, layout.source]}; the file has {columns}")
    return rows


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return [(f"{path}: row {n}", row) for n, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    except (pa.ArrowException, OSError) as e:
        raise PrepareError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{path}:{line_no}: not valid UTF-8 (column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PrepareError(f"{path}:{line_no}: a JSON {type(row).__name__}, not an object")
            rows.append((f"{path}:{line_no}", row))
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    """Write atomically: a half-written file never takes the output's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def prepare(kind: str, input_path: str | Path, output_path: str | Path) -> Report:
    """Convert one file; returns the report (nothing is written when no row survives)."""
    input_path, output_path = Path(input_path), Path(output_path)
    numbered = read_input(input_path, kind)
    rows, report = convert(kind, [row for _, row in numbered], [where for where, _ in numbered])
    if not rows:
        raise PrepareError(f"{input_path}: none of {report.read} rows could be converted: "
                           + "; ".join(f"{n} x {r}" for r, n in report.dropped.most_common()))
    write_jsonl(rows, output_path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.prepare_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(LAYOUTS), help="published layout of the input")
    parser.add_argument("--input", required=True, help="published file (.parquet or .jsonl)")
    parser.add_argument("--output", required=True, help="JSONL for data.train_path / data.eval_path")
    args = parser.parse_args(argv)
    try:
        report = prepare(args.kind, args.input, args.output)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join([f"{args.kind}: {args.input} -> {args.output}", *report.lines()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
