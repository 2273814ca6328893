"""The code task's data and its tiny base model, shipped like the addition base.

    python -m examples.build_tiny_code                      # data + the shipped base, into artifacts/
    python -m examples.build_tiny_code --from-scratch --seed 1 --out-dir /tmp/code1 [--ship]   # the recipe

Writes, under `artifacts/`:
- `data/code/{train,heldout}.jsonl`: the function task (examples/tasks.py: write f(x) in one line from
  f(0), f(1), f(2); scored by running the program on hidden inputs in the `code` verifier's sandbox);
- `tiny-qwen2-code/`: a Qwen2 of about 0.9M parameters with its own tokenizer (byte-level BPE trained on
  this task's text, digits one per token), pretrained on `r1_zero(question) + reference completion + EOS`.

The recipe is the addition base's (`examples/build_tiny.py`: the same model shape, optimizer, schedule and
loss on completion tokens), on this task's text: a share of the pretraining completions takes one
difference wrong and writes the program that follows from it, so sampling at temperature 1 slips often
while greedy decoding mostly follows the majority, correct, difference. That leaves GRPO room.

Shipped, not rebuilt, for the addition base's reason (the same recipe gives different models on different
CPUs of one kind): the build is committed under `examples/assets/tiny-qwen2-code/` with the SHA-256 of
every file, of the data it was trained on, the recipe and what it scored in
`examples/assets/tiny-qwen2-code.json`; the default command checks the files against those digests and
copies them to `artifacts/tiny-qwen2-code`. The scores recorded there come from a fast check of the
program's expression without running it (`examples.tasks.check_function_answer`); training evaluates in
the sandbox.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py

import argparse
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from examples import tasks
from examples.build_tiny import (
    ASSETS,
    ROOT,
    install_or_build,
    model_id,
    new_tiny_qwen2,
    place_shipped,
    read_shipped_manifest,
    save_model,
    ship_build,
    split_digests,
    verify_model_dir,
)
from examples.tasks import FUNCTION, TaskExample

MODEL_DIR_NAME = "tiny-qwen2-code"
SHIPPED_CODE_MODEL = ASSETS / MODEL_DIR_NAME
CODE_MANIFEST = ASSETS / f"{MODEL_DIR_NAME}.json"
"""SHA-256 of every shipped file and of the data it was trained on, the build config and its scores."""
STAMP_NAME = "code_build.json"
"""Written beside a from-scratch build's model directory (what --ship records)."""
DATA_STAMP_NAME = ".code_data_stamp.json"
DATA_DIR = Path("data") / "code"


@dataclass(frozen=True)
class CodeBuildConfig:
    seed: int = 0
    """Seed for the data, the tokenizer corpus, initialisation and batch order."""
    train: int = 1800
    """Functions in the train split (GRPO's prompts and the pretraining set)."""
    heldout: int = 200
    """Functions in the held-out split; with `train` all 2,000 the task has, none in both."""
    tokenizer_corpus: int = 1000
    """Rendered samples the BPE is trained on."""
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    """head_dim 64: vLLM's CPU attention kernel rejects head_dim 16."""
    intermediate_size: int = 384
    max_positions: int = 512
    wrong_step_share: float = 0.3
    """Share of pretraining completions with one wrong difference: sampled accuracy stays well under greedy.
    0.5 with 700 steps gave 15% sampled / 27% greedy, the differences learned too poorly to sharpen."""
    pretrain_steps: int = 1000
    """Optimizer steps (about 7 minutes on 2 cores)."""
    batch_size: int = 64
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 2
    """torch CPU threads."""
    eval_prompts: int = 128
    """Held-out prompts for the pass@1 recorded in the manifest."""
    eval_samples: int = 4
    """k samples per prompt for that pass@1."""


def write_data(cfg: CodeBuildConfig, out_dir: str | Path) -> tuple[list[TaskExample], list[TaskExample]]:
    """The function task's splits, written as JSONL under out_dir/data/code; returns (train, heldout)."""
    train, heldout = tasks.make_splits(FUNCTION, cfg.train, cfg.heldout, cfg.seed)
    tasks.write_jsonl(Path(out_dir) / DATA_DIR / "train.jsonl", train)
    tasks.write_jsonl(Path(out_dir) / DATA_DIR / "heldout.jsonl", heldout)
    return train, heldout


def data_digests(out_dir: str | Path) -> dict[str, str]:
    """{path under out_dir/: SHA-256} of the two data files."""
    return split_digests(out_dir, DATA_DIR)


def build(cfg: CodeBuildConfig, out_dir: str | Path, *, eval_every: int = 0) -> Path:
    """The recipe: data, tokenizer, pretraining, evaluation; writes out_dir/tiny-qwen2-code and its record."""
    import torch

    from examples.build_tiny import _report, pretrain
    from examples.tiny_model import build_tokenizer
    from trainer.templates import r1_zero

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    train, heldout = write_data(cfg, out)
    rng = random.Random(cfg.seed)
    corpus = [r1_zero(e.prompt) + tasks.noisy_function_completion(e, rng, cfg.wrong_step_share)
              for e in train[:cfg.tokenizer_corpus]]
    tokenizer = build_tokenizer(corpus, vocab_size=cfg.vocab_size)
    model = new_tiny_qwen2(tokenizer, cfg)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {parameters / 1e6:.2f}M parameters")
    losses = pretrain(model, tokenizer, train, cfg, eval_every=eval_every, heldout=heldout,
                      completion=tasks.noisy_function_completion)
    result = _report(model, tokenizer, heldout, cfg, label="final")
    tail = losses[-20:]

    model_dir = out / MODEL_DIR_NAME
    save_model(model, tokenizer, model_dir)
    record = {"config": asdict(cfg), "parameters": parameters, "final_loss": sum(tail) / len(tail),
              "heldout_pass_at_1": result.pass_at_1, "heldout_greedy": result.greedy,
              "build_seconds": round(time.perf_counter() - t0, 1)}
    (out / STAMP_NAME).write_text(json.dumps(record, indent=2))
    print(f"built {model_dir} in {record['build_seconds']:.0f} s")
    return model_dir


def ship(out_dir: str | Path) -> None:
    """Copy a from-scratch build into examples/assets and record its digests, data, recipe and scores."""
    out = Path(out_dir)
    ship_build(out / MODEL_DIR_NAME, json.loads((out / STAMP_NAME).read_text()), shipped=SHIPPED_CODE_MODEL,
               manifest_path=CODE_MANIFEST, data=data_digests(out), label="code base")


def read_code_manifest() -> dict:
    return read_shipped_manifest(CODE_MANIFEST, "code base")


def _data_hash(cfg: CodeBuildConfig) -> str:
    fields = {k: getattr(cfg, k) for k in ("seed", "train", "heldout")}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update((ROOT / "examples" / "tasks.py").read_bytes())
    return h.hexdigest()


def install(out_dir: str | Path = "artifacts") -> Path:
    """Data generated into out_dir (cached by a stamp), and the shipped base, checked, copied there."""
    manifest = read_code_manifest()
    verify_model_dir(SHIPPED_CODE_MODEL, manifest, manifest_name=CODE_MANIFEST.name)
    out = Path(out_dir)
    cfg = CodeBuildConfig(**{k: manifest["build"]["config"][k] for k in ("seed", "train", "heldout")})
    stamp, data_hash = out / DATA_STAMP_NAME, _data_hash(cfg)
    have_data = all((out / rel).exists() for rel in manifest["data"])
    if not (have_data and stamp.exists() and json.loads(stamp.read_text()).get("hash") == data_hash):
        write_data(cfg, out)
        stamp.write_text(json.dumps({"hash": data_hash}))
        print(f"data written under {out / DATA_DIR}")
    model_dir = out / MODEL_DIR_NAME
    place_shipped(SHIPPED_CODE_MODEL, manifest, model_dir, manifest_name=CODE_MANIFEST.name)
    build = manifest["build"]
    print(f"{model_dir}: shipped code base {model_id(manifest)} (digests checked); when built: held-out "
          f"pass@1 {build['heldout_pass_at_1']:.1%}, greedy {build['heldout_greedy']:.1%} "
          f"(seed {build['config']['seed']}, {build['config']['pretrain_steps']} steps)")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Install the shipped code-task base and its data (default), "
                                                 "or build a base from scratch (offline).")
    parser.add_argument("--from-scratch", action="store_true", help="run the recipe instead of installing")
    parser.add_argument("--ship", action="store_true", help="with --from-scratch: make the result the shipped base")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--seed", type=int, default=CodeBuildConfig.seed)
    parser.add_argument("--steps", type=int, default=CodeBuildConfig.pretrain_steps, help="pretraining steps")
    parser.add_argument("--wrong-share", type=float, default=CodeBuildConfig.wrong_step_share,
                        help="share of pretraining completions with one wrong difference")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every this many steps")
    args = parser.parse_args(argv)
    if not args.from_scratch and (args.ship or args.seed != CodeBuildConfig.seed
                                  or args.steps != CodeBuildConfig.pretrain_steps
                                  or args.wrong_share != CodeBuildConfig.wrong_step_share):
        parser.error("--ship, --seed, --steps and --wrong-share shape a build: add --from-scratch")
    cfg = CodeBuildConfig(seed=args.seed, pretrain_steps=args.steps, wrong_step_share=args.wrong_share)
    install_or_build(args.out_dir, ".tiny_code_build.lock", from_scratch=args.from_scratch, install=install,
                     build=lambda: build(cfg, args.out_dir, eval_every=args.eval_every),
                     ship=ship if args.ship else None)


if __name__ == "__main__":
    main()
