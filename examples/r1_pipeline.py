"""The multi-stage R1 recipe on the tiny model, each stage's output the next stage's input.

    python -m examples.r1_pipeline [--out runs/r1_tiny] [--quick]

    0 data       SFT data in the readable format and the distillation student  (examples/build_sft_data.py)
    1 cold_start SFT of the tiny base on correct readable chains of thought  -> cold_start/hf
    2 rl         GRPO from cold_start/hf, accuracy reward                     -> rl/model
    3 reject     8 samples per prompt from rl/model, correct + filtered kept   -> reject/sft.jsonl, report.json
    4 sft        SFT of the tiny base on reject/sft.jsonl                     -> sft/hf
    5 distill    SFT of the student (every other layer of the base) on the same data -> distill/hf

Each stage runs through the same entry points as the commands (`trainer.sft.train_sft`,
`trainer.controller.train`, `trainer.rejection.run_rejection`), with the example configs of
`examples/configs.py` and only the paths (and, with `--quick`, the step counts) changed. A stage
writes `stage.json` (its config hash and results) when it finishes; a rerun skips a stage whose stamp
matches, and reruns a stage whose config changed together with every stage after it. At the end the
held-out pass@1 (temperature 1, k samples, plain transformers) of each stage's model is measured and
`pipeline.json` holds the stage table.

Departures from R1: the RL for all scenarios stage (5 in the paper) is left out (the tiny task has no
general prompts); the "smaller model" is the base cut to every other layer, not a separately
pretrained model.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py: shared cores

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer.config import apply_overrides, to_dict

BASE = "artifacts/tiny-qwen2"
HELDOUT = "artifacts/data/arithmetic/heldout.jsonl"


def stage_hash(cfg: Any, previous: str) -> str:
    return hashlib.sha256((json.dumps(to_dict(cfg), sort_keys=True, default=str) + previous).encode()).hexdigest()


def done(stage_dir: Path, digest: str) -> dict[str, Any] | None:
    stamp = stage_dir / "stage.json"
    if not stamp.exists():
        return None
    record = json.loads(stamp.read_text())
    return record if record.get("hash") == digest else None


def finish(stage_dir: Path, digest: str, result: dict[str, Any]) -> dict[str, Any]:
    record = {"hash": digest, **result}
    (stage_dir / "stage.json").write_text(json.dumps(record, indent=1))
    return record


def configs(out: Path, *, quick: bool) -> dict[str, Any]:
    """Each stage's config, wired to the previous stage's output."""
    from examples.configs import (
        tiny_cpu_distill,
        tiny_cpu_r1_rl,
        tiny_cpu_reject,
        tiny_cpu_reject_sft,
        tiny_cpu_sft,
    )

    short = ["max_steps=30"] if quick else []
    cold = apply_overrides(tiny_cpu_sft(), [f"output_dir={out}", "name=cold_start", *short])
    rl = apply_overrides(tiny_cpu_r1_rl(), [f"output_dir={out}", "name=rl", f"model.path={out / 'cold_start' / 'hf'}",
                                            *(["total_steps=10", "eval.every_steps=0"] if quick else [])])
    reject = apply_overrides(tiny_cpu_reject(), [f"output_dir={out}", "name=reject", f"model.path={out / 'rl' / 'model'}",
                                                 *(["max_prompts=128"] if quick else [])])
    data = str(out / "reject" / "sft.jsonl")
    sft = apply_overrides(tiny_cpu_reject_sft(), [f"output_dir={out}", "name=sft", f"data.train_path={data}", *short])
    distill = apply_overrides(tiny_cpu_distill(), [f"output_dir={out}", "name=distill", f"data.train_path={data}",
                                                   *short])
    return {"cold_start": cold, "rl": rl, "reject": reject, "sft": sft, "distill": distill}


def run_stage(name: str, cfg: Any) -> dict[str, Any]:
    """Run one stage; returns what its stamp records (output path and the stage's own numbers)."""
    if name in ("cold_start", "sft", "distill"):
        from trainer.sft import summary, train_sft

        run_dir = train_sft(replace(cfg, resume=False))
        return {"model": str(run_dir / "hf"), **summary(run_dir)}
    if name == "rl":
        from trainer.controller import train
        from trainer.metrics import read_metrics

        shutil.rmtree(Path(cfg.output_dir) / cfg.name, ignore_errors=True)  # a changed stage starts over
        run_dir = train(cfg)
        evals = read_metrics(run_dir, "eval")
        return {"model": str(run_dir / "model"), "pass@1_start": evals[0]["pass@1"], "pass@1_end": evals[-1]["pass@1"]}
    from trainer.rejection import run_rejection

    out = run_rejection(cfg)
    report = json.loads((out / "report.json").read_text())
    if report["kept"] == 0:
        raise SystemExit(f"rejection sampling kept no sample ({report['dropped']}): the RL policy solved none of "
                         f"its prompts, so there is nothing to fine-tune on; train the earlier stages longer")
    return {"data": str(out / "sft.jsonl"), "report": report}


def heldout_pass_at_1(model_dir: str, *, template: str, prompts: int, k: int, max_new_tokens: int,
                      seed: int = 0) -> float:
    """Sampled pass@1 (temperature 1, mean over k) on the first held-out addition prompts, with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples.eval_base import generate
    from examples.tasks import read_jsonl
    from reward_server.verifiers import extract_answer, verify_arithmetic
    from trainer.templates import completion_for_reward, render

    examples = list(read_jsonl(HELDOUT))[:prompts]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [render(template, e.prompt) for e in examples for _ in range(k)]
    torch.manual_seed(seed)
    outs = generate(model, tokenizer, texts, temperature=1.0, max_new_tokens=max_new_tokens)
    correct = 0
    for i, (text, out) in enumerate(zip(texts, outs, strict=True)):
        answer = extract_answer(completion_for_reward(text, out))
        correct += answer is not None and verify_arithmetic(answer, examples[i // k].ground_truth)
    return correct / len(outs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Run the R1 stages on the tiny model.")
    parser.add_argument("--out", default="runs/r1_tiny")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (tests, a first look)")
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--eval-k", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    from examples.build_sft_data import build, make_student

    build("artifacts", n_train=2000, n_valid=200)
    if not Path("artifacts/tiny-student/config.json").exists():
        make_student(BASE, "artifacts/tiny-student")

    previous, stages = "", {}
    for name, cfg in configs(out, quick=args.quick).items():
        digest = stage_hash(cfg, previous)
        stage_dir = Path(cfg.output_dir) / cfg.name
        record = done(stage_dir, digest)
        if record is None:
            print(f"=== stage {name}: running")
            t0 = time.perf_counter()
            result = run_stage(name, cfg)
            record = finish(stage_dir, digest, result | {"seconds": round(time.perf_counter() - t0, 1)})
        else:
            print(f"=== stage {name}: up to date ({stage_dir / 'stage.json'})")
        stages[name], previous = record, digest

    evaluated = {"base (r1_zero prompt)": (BASE, "r1_zero"), "base (readable prompt)": (BASE, "r1_cold_start"),
                 "student before distillation": ("artifacts/tiny-student", "r1_cold_start")}
    evaluated |= {f"after {n}": (stages[n]["model"], "r1_cold_start") for n in ("cold_start", "rl", "sft", "distill")}
    table = {label: heldout_pass_at_1(path, template=template, prompts=args.eval_prompts, k=args.eval_k,
                                      max_new_tokens=96)
             for label, (path, template) in evaluated.items()}
    result = {"quick": args.quick, "stages": stages, "heldout_pass@1": table,
              "eval": {"prompts": args.eval_prompts, "k": args.eval_k, "temperature": 1.0},
              "seconds": round(time.perf_counter() - began, 1)}
    (out / "pipeline.json").write_text(json.dumps(result, indent=1))
    print(f"\nheld-out pass@1 (temperature 1, {args.eval_prompts} prompts x {args.eval_k} samples):")
    for label, value in table.items():
        print(f"  {label:32s} {value:.3f}")
    print(f"rejection sampling: {json.dumps(stages['reject']['report'])}")
    print(f"pipeline.json: {out / 'pipeline.json'}")
    return result


if __name__ == "__main__":
    main()
