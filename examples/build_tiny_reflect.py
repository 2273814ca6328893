"""A base model in which reflection is possible and pays: R1-Zero's self-evolution on one CPU.

    python -m examples.build_tiny_reflect                      # the shipped base, into artifacts/
    python -m examples.build_tiny_reflect --from-scratch --seed 1 --out-dir /tmp/reflect1 [--ship]   # the recipe

The task is the demo's addition ("What is 347+86?", the same data files, `artifacts/data/arithmetic/`), but
a response first writes a direct guess of the sum, and only sometimes checks it column by column:

    443</think><answer>443</answer>                                                   (no check)
    443,wait, check: 7+6+0=13,4+8+1=13,3+0+1=4 so 433</think><answer>433</answer>     (a check)

The guess is one shot: a 0.9M-parameter model cannot add 2-3 digit numbers without the columns (the
DESIGN.md facts: plain addition did not get off the ground), so it is capacity-limited, not noisy, and RL
cannot sharpen it to the check's accuracy within minutes. The check is the demo's column-by-column work,
which this model size does right about 90% of the time, and the answer follows the check, not the guess.
Nothing rewards the check itself: it pays only because it makes the answer right, at 3-4x the tokens.

The recipe (two phases, like a base model that can reflect but rarely does):
1. `pretrain_steps` steps with `check_share` of the completions checked, so the skill is learned. In
   checked completions the guess is wrong with probability `wrong_guess_share` (a nearby sum), so the
   answer must be read off the columns rather than copied from the guess.
2. `anneal_steps` more steps at `anneal_lr` with `anneal_check_share` checked: the propensity to check
   drops to a few percent while the skill stays.

Shipped, not rebuilt, for the addition base's reason (examples/build_tiny.py): the build is committed
under `examples/assets/tiny-qwen2-reflect/` with the SHA-256 of every file, of the data it was trained
on, the recipe and what it scored (`examples/assets/tiny-qwen2-reflect.json`); the default command
checks the files against those digests and copies them to `artifacts/tiny-qwen2-reflect`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from examples import tasks
from examples.build_tiny import (
    ASSETS,
    data_in_place,
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
from examples.tasks import ARITHMETIC, TaskExample

MODEL_DIR_NAME = "tiny-qwen2-reflect"
SHIPPED_REFLECT_MODEL = ASSETS / MODEL_DIR_NAME
REFLECT_MANIFEST = ASSETS / f"{MODEL_DIR_NAME}.json"
"""SHA-256 of every shipped file and of the data it was trained on, the build config and its scores."""
STAMP_NAME = "reflect_build.json"
"""Written beside a from-scratch build's model directory (what --ship records)."""
DATA_DIR = Path("data") / ARITHMETIC
CHECK_TEXT = ",wait, check: "
"""What opens a check; "wait" is in trainer/analytics.py's reflection vocabulary, so reflection_frac counts it."""
CHECK_MARK = "wait, check:"
"""Substring that marks a checked response (for accuracy with vs without a check)."""


# ------------------------------------------------------------------------------------------ the text


def wrong_sum(total: int, rng: random.Random) -> int:
    """A nearby wrong sum: one digit changed by 1 or 2 (the kind of slip a one-shot guess makes)."""
    digits = list(str(total))
    while True:
        i = rng.randrange(len(digits))
        d = int(digits[i]) + rng.choice((-2, -1, 1, 2))
        if 0 <= d <= 9 and not (i == 0 and d == 0 and len(digits) > 1):
            digits[i] = str(d)
            return int("".join(digits))


def reflect_completion(a: int, b: int, *, guess: int, check: bool) -> str:
    """A guess, then (if `check`) the columns and the sum they give, then the answer (module docstring)."""
    if not check:
        return f"{guess}</think><answer>{guess}</answer>"
    steps, answer = tasks.arithmetic_steps(a, b)
    return f"{guess}{CHECK_TEXT}{','.join(steps)} so {answer}</think><answer>{answer}</answer>"


def sample_completion(example: TaskExample, rng: random.Random, check_share: float,
                      wrong_guess_share: float) -> str:
    """A pretraining completion: checked with probability `check_share`; a checked one's guess is wrong with
    probability `wrong_guess_share`; an unchecked one's guess is the right sum (capacity limits it, not noise)."""
    a, b = tasks.parse_arithmetic_question(example.prompt)
    check = rng.random() < check_share
    guess = wrong_sum(a + b, rng) if check and rng.random() < wrong_guess_share else a + b
    return reflect_completion(a, b, guess=guess, check=check)


def has_check(completion: str) -> bool:
    return CHECK_MARK in completion


# ------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class ReflectBuildConfig:
    seed: int = 0
    """Seed for the tokenizer corpus, initialisation and batch order (the data is the demo's, seed 0)."""
    arithmetic_train: int = 20_000
    arithmetic_heldout: int = 500
    """The demo's addition splits (examples/build_tiny.py writes the same files)."""
    tokenizer_corpus: int = 4_000
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    """head_dim 64: vLLM's CPU attention kernel rejects head_dim 16."""
    intermediate_size: int = 384
    max_positions: int = 512
    check_share: float = 0.7
    """Phase 1: share of completions with a check, high enough that the check is learned well. 0.5 with 800
    steps left checked answers right 54% of the time (31% after phase 2): too weak a check for RL to amplify."""
    wrong_guess_share: float = 0.5
    """Share of checked completions whose guess is wrong: the answer must follow the columns."""
    pretrain_steps: int = 1200
    """Phase 1 optimizer steps (about 6 minutes on 2 cores)."""
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    anneal_check_share: float = 0.06
    """Phase 2: share of completions with a check, so the base rarely checks on its own (about 3% of samples)."""
    anneal_steps: int = 150
    anneal_lr: float = 1e-3
    threads: int = 2
    eval_prompts: int = 128
    eval_samples: int = 4
    max_new_tokens: int = 96
    """Generation limit of the recorded evaluation (the example's max_response_tokens)."""

    @property
    def wrong_step_share(self) -> float:  # what examples.build_tiny.pretrain passes to the completion
        return self.check_share


@dataclass(frozen=True)
class BaseStats:
    """What a base's sampled responses do: how often they check, and how right each kind is."""

    pass_at_1: float
    greedy: float
    reflection_frac: float
    accuracy_with_check: float
    accuracy_without_check: float
    checked: int
    unchecked: int
    response_tokens_mean: float


def measure(model, tokenizer, heldout: list[TaskExample], *, k: int, max_new_tokens: int, seed: int) -> BaseStats:
    """Sampled (temperature 1) and greedy accuracy, and the reflection rate split by correctness."""
    import torch

    from examples.eval_base import generate, is_correct
    from trainer.templates import r1_zero

    model.eval()
    prompts = [r1_zero(e.prompt) for e in heldout]
    torch.manual_seed(seed)
    sampled = generate(model, tokenizer, [p for p in prompts for _ in range(k)], temperature=1.0,
                       max_new_tokens=max_new_tokens)
    greedy = generate(model, tokenizer, prompts, temperature=None, max_new_tokens=max_new_tokens)
    ok = [is_correct(c, heldout[i // k]) for i, c in enumerate(sampled)]
    checked = [has_check(c) for c in sampled]
    with_check = [o for o, c in zip(ok, checked) if c]
    without = [o for o, c in zip(ok, checked) if not c]
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in sampled]
    return BaseStats(
        pass_at_1=sum(ok) / len(ok), greedy=sum(is_correct(c, e) for c, e in zip(greedy, heldout)) / len(heldout),
        reflection_frac=sum(checked) / len(checked),
        accuracy_with_check=sum(with_check) / max(1, len(with_check)),
        accuracy_without_check=sum(without) / max(1, len(without)),
        checked=len(with_check), unchecked=len(without), response_tokens_mean=sum(lengths) / len(lengths))


def _print_stats(label: str, s: BaseStats, write=print) -> None:
    write(f"{label}: pass@1 {s.pass_at_1:.1%}, greedy {s.greedy:.1%}, checked {s.reflection_frac:.1%} of samples; "
          f"right with a check {s.accuracy_with_check:.1%} ({s.checked}), without {s.accuracy_without_check:.1%} "
          f"({s.unchecked}); mean {s.response_tokens_mean:.1f} tokens")


def write_data(cfg: ReflectBuildConfig, out_dir: str | Path) -> tuple[list[TaskExample], list[TaskExample]]:
    """The demo's addition splits (the same files examples/build_tiny.py writes); returns (train, heldout)."""
    train, heldout = tasks.make_splits(ARITHMETIC, cfg.arithmetic_train, cfg.arithmetic_heldout, 0)
    out = Path(out_dir) / DATA_DIR
    for name, rows in (("train", train), ("heldout", heldout)):
        path = out / f"{name}.jsonl"
        if not path.exists() or path.read_text() != "".join(r.to_json() + "\n" for r in rows):
            tasks.write_jsonl(path, rows)
    return train, heldout


def data_digests(out_dir: str | Path) -> dict[str, str]:
    """{path under out_dir/: SHA-256} of the two data files."""
    return split_digests(out_dir, DATA_DIR)


def build(cfg: ReflectBuildConfig, out_dir: str | Path, *, eval_every: int = 0) -> Path:
    """The recipe: tokenizer, phase 1 (learn the check), phase 2 (rarely use it), measurement."""
    import torch

    from examples.build_tiny import pretrain
    from examples.tiny_model import build_tokenizer
    from trainer.templates import r1_zero

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    train, heldout = write_data(cfg, out)
    rng = random.Random(cfg.seed)
    corpus = [r1_zero(e.prompt) + sample_completion(e, rng, 0.5, cfg.wrong_guess_share)
              for e in train[:cfg.tokenizer_corpus]]
    tokenizer = build_tokenizer(corpus, vocab_size=cfg.vocab_size)
    model = new_tiny_qwen2(tokenizer, cfg)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {parameters / 1e6:.2f}M parameters")

    def completion(e: TaskExample, r: random.Random, share: float) -> str:
        return sample_completion(e, r, share, cfg.wrong_guess_share)

    evaluation = heldout[:cfg.eval_prompts]
    pretrain(model, tokenizer, train, cfg, completion=completion)
    phase1 = measure(model, tokenizer, evaluation, k=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
                     seed=cfg.seed)
    _print_stats("after phase 1 (learn the check)", phase1)
    anneal = replace(cfg, check_share=cfg.anneal_check_share, pretrain_steps=cfg.anneal_steps, lr=cfg.anneal_lr,
                     seed=cfg.seed + 1000)
    losses = pretrain(model, tokenizer, train, anneal, completion=completion)
    final = measure(model, tokenizer, evaluation, k=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed)
    _print_stats("final (after phase 2, the propensity lowered)", final)
    tail = losses[-20:]

    model_dir = out / MODEL_DIR_NAME
    save_model(model, tokenizer, model_dir)
    record = {"config": asdict(cfg), "parameters": parameters, "final_loss": sum(tail) / len(tail),
              "heldout_pass_at_1": final.pass_at_1, "heldout_greedy": final.greedy,
              "after_phase_1": asdict(phase1), "final": asdict(final),
              "build_seconds": round(time.perf_counter() - t0, 1)}
    (out / STAMP_NAME).write_text(json.dumps(record, indent=2))
    print(f"built {model_dir} in {record['build_seconds']:.0f} s")
    return model_dir


def ship(out_dir: str | Path) -> None:
    """Copy a from-scratch build into examples/assets and record its digests, data, recipe and scores."""
    out = Path(out_dir)
    ship_build(out / MODEL_DIR_NAME, json.loads((out / STAMP_NAME).read_text()), shipped=SHIPPED_REFLECT_MODEL,
               manifest_path=REFLECT_MANIFEST, data=data_digests(out), label="reflection base")


def read_reflect_manifest() -> dict:
    return read_shipped_manifest(REFLECT_MANIFEST, "reflection base")


def install(out_dir: str | Path = "artifacts") -> Path:
    """The addition data (if absent or different) and the shipped base, checked, copied into out_dir."""
    manifest = read_reflect_manifest()
    verify_model_dir(SHIPPED_REFLECT_MODEL, manifest, manifest_name=REFLECT_MANIFEST.name)
    out = Path(out_dir)
    if not data_in_place(out, manifest):
        write_data(ReflectBuildConfig(), out)
        print(f"data written under {out / DATA_DIR}")
    model_dir = out / MODEL_DIR_NAME
    place_shipped(SHIPPED_REFLECT_MODEL, manifest, model_dir, manifest_name=REFLECT_MANIFEST.name)
    final = manifest["build"]["final"]
    print(f"{model_dir}: shipped reflection base {model_id(manifest)} (digests checked); when built: held-out "
          f"pass@1 {final['pass_at_1']:.1%}, checked {final['reflection_frac']:.1%} of samples, right with a "
          f"check {final['accuracy_with_check']:.1%}, without {final['accuracy_without_check']:.1%}")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Install the shipped reflection base (default), or build one "
                                                 "from scratch (offline).")
    parser.add_argument("--from-scratch", action="store_true", help="run the recipe instead of installing")
    parser.add_argument("--ship", action="store_true", help="with --from-scratch: make the result the shipped base")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--seed", type=int, default=ReflectBuildConfig.seed)
    parser.add_argument("--steps", type=int, default=ReflectBuildConfig.pretrain_steps, help="phase 1 steps")
    parser.add_argument("--anneal-steps", type=int, default=ReflectBuildConfig.anneal_steps, help="phase 2 steps")
    parser.add_argument("--check-share", type=float, default=ReflectBuildConfig.check_share,
                        help="phase 1: share of completions with a check")
    parser.add_argument("--anneal-check-share", type=float, default=ReflectBuildConfig.anneal_check_share,
                        help="phase 2: share of completions with a check")
    args = parser.parse_args(argv)
    cfg = ReflectBuildConfig(seed=args.seed, pretrain_steps=args.steps, anneal_steps=args.anneal_steps,
                             check_share=args.check_share, anneal_check_share=args.anneal_check_share)
    if not args.from_scratch and (args.ship or cfg != ReflectBuildConfig()):
        parser.error("--ship, --seed, --steps, --anneal-steps and the shares shape a build: add --from-scratch")
    install_or_build(args.out_dir, ".tiny_reflect_build.lock", from_scratch=args.from_scratch, install=install,
                     build=lambda: build(cfg, args.out_dir), ship=ship if args.ship else None)


if __name__ == "__main__":
    main()
