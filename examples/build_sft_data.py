"""SFT data for the tiny model: correct chains of thought for addition, as JSONL `prompt` / `response`.

    python -m examples.build_sft_data [--out-dir artifacts] [--train 2000] [--valid 200]

Writes, under `artifacts/data/sft/`:
- `cold_start/{train,valid}.jsonl`: R1's readable cold-start format (template `r1_cold_start`):
  `|special_token|7+6+0=13,4+8+1=13,3+0+1=4|special_token|347+86=433 <answer>433</answer>`, the
  reasoning between the markers, then a summary that ends with the answer.
- `readable_answer/{train,valid}.jsonl`: the readable format with the answer as the whole summary
  (`|special_token|7+6+0=13,4+8+1=13,3+0+1=4|special_token|<answer>433</answer>`), what the pipeline's tiny
  cold start uses (see `readable_answer_response`).
- `arithmetic/{train,valid}.jsonl`: the R1-Zero layout the tiny base was pretrained on (template
  `r1_zero`, whose prompt already opened `<think>`): `7+6+0=13,...</think><answer>433</answer>`.

Questions come from the same seeded splits as `examples/build_tiny.py` (same sizes and seed, so the
same questions as `artifacts/data/arithmetic/`): training samples from the train split, validation
samples from the held-out split, so SFT never trains on a question GRPO evaluates on.

The distillation student is not written here: `python -m examples.build_student` installs it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
from pathlib import Path

from examples import tasks
from examples.build_tiny import BuildConfig
from examples.tasks import ARITHMETIC, TaskExample
from trainer.templates import readable_response

COLD_START = "cold_start"
R1_ZERO = "arithmetic"


def cold_start_response(example: TaskExample) -> str:
    """Readable format: column steps between the markers, then `a+b=sum <answer>sum</answer>`."""
    a, b = tasks.parse_arithmetic_question(example.prompt)
    steps, answer = tasks.arithmetic_steps(a, b)
    return readable_response(",".join(steps), f"{a}+{b}={answer} <answer>{answer}</answer>")


def readable_answer_response(example: TaskExample) -> str:
    """Readable format whose summary is the answer alone: `|special_token|7+6+0=13,...|special_token|<answer>433</answer>`.

    The tiny base learned to read the answer back from its steps right after `</think><answer>`; a summary
    that restates the sum first (`347+86=433`) asks it to copy both operands and write the sum forwards,
    which 63 cold-start steps did not teach it (the summaries came out as digit soup, 0% correct)."""
    a, b = tasks.parse_arithmetic_question(example.prompt)
    steps, answer = tasks.arithmetic_steps(a, b)
    return readable_response(",".join(steps), f"<answer>{answer}</answer>")


def r1_zero_response(example: TaskExample) -> str:
    """The R1-Zero completion after the prompt's `<think>`: steps, `</think>`, the answer."""
    return tasks.reference_completion(example)


READABLE_ANSWER = "readable_answer"
FORMATS = {COLD_START: cold_start_response, READABLE_ANSWER: readable_answer_response, R1_ZERO: r1_zero_response}
"""Data set name under data/sft/ -> the response writer."""


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def build(out_dir: str | Path, *, n_train: int, n_valid: int, seed: int = BuildConfig.seed) -> dict[str, Path]:
    """Write every format's train and valid split; returns {"<format>/<split>": path}."""
    base = BuildConfig(seed=seed)
    train, heldout = tasks.make_splits(ARITHMETIC, base.arithmetic_train, base.arithmetic_heldout, seed)
    if n_train > len(train) or n_valid > len(heldout):
        raise ValueError(f"at most {len(train)} training and {len(heldout)} validation questions")
    written = {}
    for name, response in FORMATS.items():
        for split, examples in (("train", train[:n_train]), ("valid", heldout[:n_valid])):
            rows = [{"prompt": e.prompt, "response": response(e), "ground_truth": e.ground_truth, "task": e.task}
                    for e in examples]
            written[f"{name}/{split}"] = write_rows(Path(out_dir) / "data" / "sft" / name / f"{split}.jsonl", rows)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the tiny model's SFT data sets.")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--train", type=int, default=2000, help="training samples per format")
    parser.add_argument("--valid", type=int, default=200, help="validation samples per format")
    args = parser.parse_args(argv)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out_dir) / ".sft_data.lock", "w") as lock:  # tests and developers share the tree
        fcntl.flock(lock, fcntl.LOCK_EX)
        for key, path in build(args.out_dir, n_train=args.train, n_valid=args.valid).items():
            print(f"{key}: {path}")


if __name__ == "__main__":
    main()
