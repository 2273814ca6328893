"""The distillation student: a smaller *pretrained* model, shipped like the base.

    python -m examples.build_student                       # install the shipped student: artifacts/tiny-student
    python -m examples.build_student --from-scratch --out-dir /tmp/student [--ship]   # the recipe itself

R1 distils into models that were pretrained (Qwen2.5-1.5B and its kin), not into damaged ones. The tiny
student starts as the shipped base cut to every other layer (layers 0 and 2 of 4, with the embeddings,
the final norm and the tokenizer: DistilBERT's initialisation of a smaller student), then is pretrained
further on the base's own pretraining corpus (`examples/build_tiny.py`: R1-Zero prompt + noisy
chain of thought, 60% of them with one wrong column step) for `pretrain_steps` steps. Cut and not healed,
it solved 0% of held-out sums in both prompt layouts, before and after distillation; pretrained, it has
the base's kind of skill at half the depth, and what distillation adds can be measured against it.

Shipped, not rebuilt, for the base's reason: the same recipe gives different models on different CPUs
of one kind. The build is committed under `examples/assets/tiny-student/` (about 2 MB) with the SHA-256
of every file, the recipe and what it scored in `examples/assets/tiny-student.json`; the default command
checks the files against those digests and copies them to `artifacts/tiny-student`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from examples.build_tiny import (
    ASSETS,
    SHIPPED_MODEL,
    BuildConfig,
    install_or_build,
    model_id,
    place_shipped,
    read_manifest,
    read_shipped_manifest,
    save_model,
    ship_build,
    verify_model_dir,
)

STUDENT_DIR_NAME = "tiny-student"
SHIPPED_STUDENT = ASSETS / STUDENT_DIR_NAME
STUDENT_MANIFEST = ASSETS / f"{STUDENT_DIR_NAME}.json"
"""SHA-256 of every shipped student file, the recipe, the base it was cut from and what it scored."""
STAMP_NAME = "build.json"
"""Written beside a from-scratch build's model directory (what --ship records)."""


@dataclass(frozen=True)
class StudentConfig:
    seed: int = 0
    """Seed of the batch order and of the evaluation's sampling (the corpus is the base's: BuildConfig's seed)."""
    keep_every_layer: int = 2
    """Keep the base's layers 0, n, 2n, ...: 4 layers -> 2."""
    pretrain_steps: int = 400
    """Optimizer steps on the base's corpus after the cut."""
    batch_size: int = 64
    """Sequences per optimizer step (the base's)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then cosine to 10%)."""
    warmup_steps: int = 20
    threads: int = 2
    """torch CPU threads."""
    eval_prompts: int = 128
    """Held-out addition prompts for the pass@1 recorded in the manifest."""
    eval_samples: int = 4
    """k samples per prompt for that pass@1."""


def pretrain_config(cfg: StudentConfig) -> BuildConfig:
    """The base's recipe (corpus, noise share, optimizer) with the student's steps, rate and seed."""
    return replace(BuildConfig(), seed=cfg.seed, pretrain_steps=cfg.pretrain_steps, batch_size=cfg.batch_size,
                   lr=cfg.lr, warmup_steps=cfg.warmup_steps, threads=cfg.threads, eval_prompts=cfg.eval_prompts,
                   eval_samples=cfg.eval_samples)


def build(cfg: StudentConfig, out_dir: str | Path, *, eval_every: int = 0) -> Path:
    """Cut the shipped base, pretrain it further, evaluate it; writes out_dir/tiny-student and out_dir/build.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples import tasks
    from examples.build_tiny import _report, pretrain
    from trainer.pipeline_models import keep_every_nth_layer

    t0 = time.perf_counter()
    base_manifest = read_manifest()
    verify_model_dir(SHIPPED_MODEL, base_manifest)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    keep_every_nth_layer(model, cfg.keep_every_layer)
    print(f"student: {model.config.num_hidden_layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, cut from base {model_id(base_manifest)}")
    corpus = BuildConfig()
    train, heldout = tasks.make_splits(tasks.ARITHMETIC, corpus.arithmetic_train, corpus.arithmetic_heldout,
                                       corpus.seed)
    pcfg = pretrain_config(cfg)
    cut = _report(model, tokenizer, heldout, pcfg, label="cut, before pretraining")
    losses = pretrain(model, tokenizer, train, pcfg, eval_every=eval_every, heldout=heldout)
    final = _report(model, tokenizer, heldout, pcfg, label="final")
    tail = losses[-20:]

    out = Path(out_dir)
    model_dir = out / STUDENT_DIR_NAME
    save_model(model, tokenizer, model_dir)
    record = {"config": asdict(cfg), "base_model": model_id(base_manifest),
              "layers": model.config.num_hidden_layers, "parameters": sum(p.numel() for p in model.parameters()),
              "final_loss": sum(tail) / len(tail),
              "cut_heldout_pass_at_1": cut.pass_at_1, "cut_heldout_greedy": cut.greedy,
              "heldout_pass_at_1": final.pass_at_1, "heldout_greedy": final.greedy,
              "build_seconds": round(time.perf_counter() - t0, 1)}
    (out / STAMP_NAME).write_text(json.dumps(record, indent=2))
    print(f"built {model_dir} in {record['build_seconds']:.0f} s")
    return model_dir


def ship(out_dir: str | Path) -> None:
    """Copy a from-scratch build into examples/assets and record its digests and recipe."""
    out = Path(out_dir)
    ship_build(out / STUDENT_DIR_NAME, json.loads((out / STAMP_NAME).read_text()), shipped=SHIPPED_STUDENT,
               manifest_path=STUDENT_MANIFEST, data=None, label="student")


def read_student_manifest() -> dict:
    return read_shipped_manifest(STUDENT_MANIFEST, "student")


def install(out_dir: str | Path = "artifacts") -> Path:
    """The shipped student, checked against its digests, copied to out_dir/tiny-student unless already there."""
    manifest = read_student_manifest()
    verify_model_dir(SHIPPED_STUDENT, manifest, manifest_name=STUDENT_MANIFEST.name)
    model_dir = Path(out_dir) / STUDENT_DIR_NAME
    place_shipped(SHIPPED_STUDENT, manifest, model_dir, manifest_name=STUDENT_MANIFEST.name)
    build = manifest["build"]
    print(f"{model_dir}: shipped student {model_id(manifest)} (digests checked; {build['layers']} layers, cut from "
          f"base {build['base_model']}, {build['config']['pretrain_steps']} steps); when built: held-out pass@1 "
          f"{build['heldout_pass_at_1']:.1%}, greedy {build['heldout_greedy']:.1%}")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Install the shipped distillation student (default), or build one.")
    parser.add_argument("--from-scratch", action="store_true", help="run the recipe instead of installing")
    parser.add_argument("--ship", action="store_true", help="with --from-scratch: make the result the shipped student")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--seed", type=int, default=StudentConfig.seed)
    parser.add_argument("--steps", type=int, default=StudentConfig.pretrain_steps, help="pretraining steps")
    parser.add_argument("--lr", type=float, default=StudentConfig.lr)
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every this many steps")
    args = parser.parse_args(argv)
    if not args.from_scratch and (args.ship or args.seed != StudentConfig.seed
                                  or args.steps != StudentConfig.pretrain_steps or args.lr != StudentConfig.lr):
        parser.error("--ship, --seed, --steps and --lr shape a build: add --from-scratch")
    cfg = StudentConfig(seed=args.seed, pretrain_steps=args.steps, lr=args.lr)
    install_or_build(args.out_dir, ".tiny_student.lock", from_scratch=args.from_scratch, install=install,
                     build=lambda: build(cfg, args.out_dir, eval_every=args.eval_every),
                     ship=ship if args.ship else None)


if __name__ == "__main__":
    main()
