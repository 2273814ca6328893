"""A base model for which a calculator tool is possible and pays: tool-integrated RL on one CPU.

    python -m examples.build_tiny_tool                        # the shipped base and its data, into artifacts/
    python -m examples.build_tiny_tool --from-scratch --seed 1 --out-dir /tmp/tool1 [--ship]   # the recipe

The task is addition of long operands (5 digits each: "What is 48213+90537?", `artifacts/data/arithmetic_long/`,
graded by the `arithmetic` verifier). A response either writes a one-shot guess of the sum, or calls the
calculator (`reward_server/tools.py`, markers `<calc>`/`<result>`, docs/multi_turn.md) and copies its result:

    138750</think><answer>138750</answer>                                              (no call)
    <calc>48213+90537</calc><result>138750</result>138750</think><answer>138750</answer>  (a call)

In a rollout the `<result>...</result>` part is the tool's output, appended by the rollout worker and masked out
of the loss; pretraining masks it too (`encode_masking_outputs`), so the model never learns to predict a sum
there. The guess is one shot: a 0.9M-parameter model
cannot add 5-digit numbers without columns (the DESIGN.md facts), so it is capacity-limited and almost
always wrong. The call needs two copies (the operands into the call, the result into the answer), which this
model size learns to do reliably. Nothing rewards the call: it pays only because the answer is then right.

The recipe (two phases, like a base model that can use a tool but rarely does):
1. `pretrain_steps` steps with `tool_share` of the completions calling the calculator, so the copies are learned;
   in `other_result_share` of the calls the output reads a nearby other number that the answer copies, so the
   answer follows the output rather than the model's own guess of the sum.
2. `anneal_steps` more steps at `anneal_lr` with `anneal_tool_share` calling: the propensity to call drops to a
   few percent while the skill stays.

The four markers are added to the tokenizer as single tokens, so a call's end is one token (vLLM stops on it)
and the tool's output tokenised on its own (actors/rollout_tools.py) is the same ids as in pretraining.

Shipped, not rebuilt, for the addition base's reason (examples/build_tiny.py): the build is committed under
`examples/assets/tiny-qwen2-tool/` with the SHA-256 of every file, of the data it was trained on, the recipe and
what it scored (`examples/assets/tiny-qwen2-tool.json`); the default command writes the data (pure Python from
a seed), checks the files against those digests and copies them to `artifacts/tiny-qwen2-tool`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from examples import tasks
from examples.build_tiny import (
    ASSETS,
    ShippedModelError,
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
from reward_server.tools import Calculator

MODEL_DIR_NAME = "tiny-qwen2-tool"
SHIPPED_TOOL_MODEL = ASSETS / MODEL_DIR_NAME
TOOL_MANIFEST = ASSETS / f"{MODEL_DIR_NAME}.json"
"""SHA-256 of every shipped file and of the data it was trained on, the build config and its scores."""
STAMP_NAME = "tool_build.json"
"""Written beside a from-scratch build's model directory (what --ship records)."""
DATA_DIR = Path("data") / "arithmetic_long"
DATA_SEED = 0
"""Seed of the long-addition splits (fixed: every base of the recipe trains and is evaluated on the same data)."""
MIN_DIGITS, MAX_DIGITS = 5, 5
"""Operand lengths (sums have 5 or 6 digits). One length keeps each operand at one distance from its copy in
the call, which the model learns to copy by position; with 4-6 and 4-5 digit operands, 1,200 pretraining steps
left that copy unreliable (digits that repeat in an operand were skipped or repeated)."""
TOOL_TOKENS = (Calculator.call_start, Calculator.call_end, Calculator.output_start, Calculator.output_end)
"""The calculator's markers, single tokens of the tokenizer."""


# ------------------------------------------------------------------------------------------ the text


def _operand(rng: random.Random) -> int:
    digits = rng.randint(MIN_DIGITS, MAX_DIGITS)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def generate_long_addition(n: int, seed: int) -> list[TaskExample]:
    """`n` distinct additions of 5-digit operands (a+b and b+a count as one), task `arithmetic`."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < n:
        a, b = _operand(rng), _operand(rng)
        if (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        rows.append(TaskExample(tasks.arithmetic_question(a, b), str(a + b), ARITHMETIC))
    return rows


def make_splits(n_train: int, n_heldout: int) -> tuple[list[TaskExample], list[TaskExample]]:
    """Train and held-out splits with no question in both."""
    rows = generate_long_addition(n_train + n_heldout, DATA_SEED)
    return rows[:n_train], rows[n_train:]


def tool_completion(a: int, b: int, *, guess: int, call: bool, result: int | None = None) -> str:
    """A call and the copied result, or (without `call`) a one-shot guess (module docstring). `result`: what the
    calculator's output reads (the sum by default; pretraining sometimes shows another number, see below)."""
    if not call:
        return f"{guess}</think><answer>{guess}</answer>"
    r = a + b if result is None else result
    return (f"{Calculator.call_start}{a}+{b}{Calculator.call_end}{Calculator.output_start}{r}{Calculator.output_end}"
            f"{r}</think><answer>{r}</answer>")


def sample_completion(example: TaskExample, rng: random.Random, tool_share: float,
                      other_result_share: float = 0.0) -> str:
    """A pretraining completion: a call with probability `tool_share`, else the true sum as a one-shot guess
    (capacity limits the guess, not noise). A call's output reads a nearby other number with probability
    `other_result_share`, and the answer copies it: the answer must follow the output, not the model's own
    guess of the sum (without this, the first build's answers after a call mixed the two)."""
    a, b = tasks.parse_arithmetic_question(example.prompt)
    call = rng.random() < tool_share
    result = wrong_sum(a + b, rng) if call and rng.random() < other_result_share else None
    return tool_completion(a, b, guess=a + b, call=call, result=result)


def wrong_sum(total: int, rng: random.Random) -> int:
    """A nearby other number: one digit changed by 1 or 2."""
    digits = list(str(total))
    while True:
        i = rng.randrange(len(digits))
        d = int(digits[i]) + rng.choice((-2, -1, 1, 2))
        if 0 <= d <= 9 and not (i == 0 and d == 0 and len(digits) > 1):
            digits[i] = str(d)
            return int("".join(digits))


def encode_masking_outputs(tokenizer, prompt_ids: list[int], completion: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) like `examples.build_tiny.encode_sample`, with the calculator's output (markers
    included) out of the loss, as a rollout masks it: the model is never taught to predict a sum there."""
    from examples.build_tiny import IGNORE_INDEX, encode_sample

    ids, labels = encode_sample(tokenizer, prompt_ids, completion)
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in (Calculator.output_start, Calculator.output_end))
    inside = False
    for i in range(len(prompt_ids), len(ids)):
        inside = inside or ids[i] == start
        if inside:
            labels[i] = IGNORE_INDEX
        inside = inside and ids[i] != end
    return ids, labels


def has_call(completion: str) -> bool:
    return Calculator.call_end in completion


# ------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class ToolBuildConfig:
    seed: int = 0
    """Seed for the tokenizer corpus, initialisation and batch order (the data has its own, DATA_SEED)."""
    train_size: int = 20_000
    heldout_size: int = 500
    tokenizer_corpus: int = 4_000
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    """head_dim 64: vLLM's CPU attention kernel rejects head_dim 16."""
    intermediate_size: int = 384
    max_positions: int = 512
    tool_share: float = 0.8
    """Phase 1: share of completions that call the calculator, high enough that both copies are learned well."""
    other_result_share: float = 0.5
    """Share of pretraining calls whose output reads a nearby other number (copied into the answer)."""
    pretrain_steps: int = 1200
    """Phase 1 optimizer steps."""
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    anneal_tool_share: float = 0.05
    """Phase 2: share of completions that call, so the base rarely calls on its own."""
    anneal_steps: int = 150
    anneal_lr: float = 1e-3
    threads: int = 2
    eval_prompts: int = 128
    eval_samples: int = 4
    max_new_tokens: int = 64
    """Generation limit of the recorded evaluation (the example's max_response_tokens)."""

    @property
    def wrong_step_share(self) -> float:  # what examples.build_tiny.pretrain passes to the completion
        return self.tool_share


@dataclass(frozen=True)
class BaseStats:
    """What a base's sampled responses do with the calculator at hand: how often they call, how right each kind is."""

    pass_at_1: float
    greedy: float
    call_rate: float
    accuracy_with_call: float
    accuracy_without_call: float
    calls: int
    no_calls: int


def generate_with_calculator(model, tokenizer, prompts: Sequence[str], *, temperature: float | None,
                             max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """One completion per prompt, as a multi-turn rollout makes it (one call at most): generation stops at
    `</calc>`, the calculator's output is appended in `<result>` markers, and generation goes on. Hugging Face
    generate, for measuring a build without an engine. Seed torch before calling."""
    import torch

    from examples.eval_base import STOP_TEXT

    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(STOP_TEXT),
                tokenizer.convert_tokens_to_ids(Calculator.call_end)]
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    tokenizer.padding_side = "left"

    def continue_all(texts: list[str], budgets: list[int]) -> list[str]:
        out_texts = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max(budgets[start:start + batch_size]),
                                     eos_token_id=stop_ids, pad_token_id=tokenizer.eos_token_id, **sampling)
            out_texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out_texts

    first = continue_all(list(prompts), [max_new_tokens] * len(prompts))
    calls = [i for i, c in enumerate(first) if c.endswith(Calculator.call_end)]
    if not calls:
        return first
    heads = []
    for i in calls:
        argument = first[i][first[i].rfind(Calculator.call_start) + len(Calculator.call_start):-len(Calculator.call_end)]
        try:
            output = Calculator()(argument)
        except Exception as e:  # the rollout's tool processes report errors the same way
            output = f"Error: {e}"
        first[i] += f"{Calculator.output_start}{output}{Calculator.output_end}"
        heads.append(first[i])
    budgets = [max(1, max_new_tokens - len(tokenizer(h, add_special_tokens=False)["input_ids"])) for h in heads]
    rest = continue_all([prompts[i] + h for i, h in zip(calls, heads)], budgets)
    for i, tail in zip(calls, rest):
        first[i] += tail
    return first


def measure(model, tokenizer, heldout: list[TaskExample], *, k: int, max_new_tokens: int, seed: int) -> BaseStats:
    """Sampled (temperature 1) and greedy accuracy with the calculator at hand, and the call rate."""
    import torch

    from examples.eval_base import is_correct
    from trainer.templates import r1_zero

    model.eval()
    prompts = [r1_zero(e.prompt) for e in heldout]
    torch.manual_seed(seed)
    sampled = generate_with_calculator(model, tokenizer, [p for p in prompts for _ in range(k)], temperature=1.0,
                                       max_new_tokens=max_new_tokens)
    greedy = generate_with_calculator(model, tokenizer, prompts, temperature=None, max_new_tokens=max_new_tokens)
    ok = [is_correct(c, heldout[i // k]) for i, c in enumerate(sampled)]
    called = [has_call(c) for c in sampled]
    with_call = [o for o, c in zip(ok, called) if c]
    without = [o for o, c in zip(ok, called) if not c]
    return BaseStats(
        pass_at_1=sum(ok) / len(ok), greedy=sum(is_correct(c, e) for c, e in zip(greedy, heldout)) / len(heldout),
        call_rate=sum(called) / len(called), accuracy_with_call=sum(with_call) / max(1, len(with_call)),
        accuracy_without_call=sum(without) / max(1, len(without)), calls=len(with_call), no_calls=len(without))


def _print_stats(label: str, s: BaseStats, write=print) -> None:
    write(f"{label}: pass@1 {s.pass_at_1:.1%}, greedy {s.greedy:.1%}, called the calculator in {s.call_rate:.1%} "
          f"of samples; right with a call {s.accuracy_with_call:.1%} ({s.calls}), without "
          f"{s.accuracy_without_call:.1%} ({s.no_calls})")


def write_data(cfg: ToolBuildConfig, out_dir: str | Path) -> tuple[list[TaskExample], list[TaskExample]]:
    """The long-addition splits, written under out_dir/data/arithmetic_long/ (when absent or different)."""
    train, heldout = make_splits(cfg.train_size, cfg.heldout_size)
    out = Path(out_dir) / DATA_DIR
    for name, rows in (("train", train), ("heldout", heldout)):
        path = out / f"{name}.jsonl"
        if not path.exists() or path.read_text() != "".join(r.to_json() + "\n" for r in rows):
            tasks.write_jsonl(path, rows)
    return train, heldout


def data_digests(out_dir: str | Path) -> dict[str, str]:
    """{path under out_dir/: SHA-256} of the two data files."""
    return split_digests(out_dir, DATA_DIR)


def build_tokenizer_with_tools(train: list[TaskExample], cfg: ToolBuildConfig):
    """The tiny BPE (examples/tiny_model.py) on calls and guesses, with the calculator's markers as single tokens."""
    from tokenizers import AddedToken

    from examples.tiny_model import build_tokenizer
    from trainer.templates import r1_zero

    rng = random.Random(cfg.seed)
    corpus = [r1_zero(e.prompt) + sample_completion(e, rng, 0.5) for e in train[:cfg.tokenizer_corpus]]
    tokenizer = build_tokenizer(corpus, vocab_size=cfg.vocab_size)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in TOOL_TOKENS])
    return tokenizer


def build(cfg: ToolBuildConfig, out_dir: str | Path) -> Path:
    """The recipe: tokenizer, phase 1 (learn the call and the copies), phase 2 (rarely call), measurement."""
    import torch

    from examples.build_tiny import pretrain

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    train, heldout = write_data(cfg, out)
    tokenizer = build_tokenizer_with_tools(train, cfg)
    model = new_tiny_qwen2(tokenizer, cfg)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {parameters / 1e6:.2f}M parameters")

    def completion(e: TaskExample, r: random.Random, share: float) -> str:
        return sample_completion(e, r, share, cfg.other_result_share)

    evaluation = heldout[:cfg.eval_prompts]
    pretrain(model, tokenizer, train, cfg, completion=completion, encode=encode_masking_outputs)
    phase1 = measure(model, tokenizer, evaluation, k=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
                     seed=cfg.seed)
    _print_stats("after phase 1 (learn the call)", phase1)
    anneal = replace(cfg, tool_share=cfg.anneal_tool_share, pretrain_steps=cfg.anneal_steps, lr=cfg.anneal_lr,
                     seed=cfg.seed + 1000)
    losses = pretrain(model, tokenizer, train, anneal, completion=completion, encode=encode_masking_outputs)
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
    ship_build(out / MODEL_DIR_NAME, json.loads((out / STAMP_NAME).read_text()), shipped=SHIPPED_TOOL_MODEL,
               manifest_path=TOOL_MANIFEST, data=data_digests(out), label="tool base")


def read_tool_manifest() -> dict:
    return read_shipped_manifest(TOOL_MANIFEST, "tool base")


def install(out_dir: str | Path = "artifacts") -> Path:
    """The long-addition data (if absent or different) and the shipped base, checked, copied into out_dir."""
    manifest = read_tool_manifest()
    verify_model_dir(SHIPPED_TOOL_MODEL, manifest, manifest_name=TOOL_MANIFEST.name)
    out = Path(out_dir)
    if not data_in_place(out, manifest):
        write_data(ToolBuildConfig(), out)
        print(f"data written under {out / DATA_DIR}")
        if data_digests(out) != manifest["data"]:
            raise ShippedModelError(f"the long-addition data written under {out / DATA_DIR} is not the data "
                                    f"recorded in {TOOL_MANIFEST.name}")
    model_dir = out / MODEL_DIR_NAME
    place_shipped(SHIPPED_TOOL_MODEL, manifest, model_dir, manifest_name=TOOL_MANIFEST.name)
    final = manifest["build"]["final"]
    print(f"{model_dir}: shipped tool base {model_id(manifest)} (digests checked); when built: held-out pass@1 "
          f"{final['pass_at_1']:.1%}, called the calculator in {final['call_rate']:.1%} of samples, right with a "
          f"call {final['accuracy_with_call']:.1%}, without {final['accuracy_without_call']:.1%}")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Install the shipped tool base and its data (default), or build "
                                                 "one from scratch (offline).")
    parser.add_argument("--from-scratch", action="store_true", help="run the recipe instead of installing")
    parser.add_argument("--ship", action="store_true", help="with --from-scratch: make the result the shipped base")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--seed", type=int, default=ToolBuildConfig.seed)
    parser.add_argument("--steps", type=int, default=ToolBuildConfig.pretrain_steps, help="phase 1 steps")
    parser.add_argument("--anneal-steps", type=int, default=ToolBuildConfig.anneal_steps, help="phase 2 steps")
    parser.add_argument("--tool-share", type=float, default=ToolBuildConfig.tool_share,
                        help="phase 1: share of completions that call the calculator")
    parser.add_argument("--anneal-tool-share", type=float, default=ToolBuildConfig.anneal_tool_share,
                        help="phase 2: share of completions that call the calculator")
    args = parser.parse_args(argv)
    cfg = ToolBuildConfig(seed=args.seed, pretrain_steps=args.steps, anneal_steps=args.anneal_steps,
                          tool_share=args.tool_share, anneal_tool_share=args.anneal_tool_share)
    if not args.from_scratch and (args.ship or cfg != ToolBuildConfig()):
        parser.error("--ship, --seed, --steps, --anneal-steps and the shares shape a build: add --from-scratch")
    install_or_build(args.out_dir, ".tiny_tool_build.lock", from_scratch=args.from_scratch, install=install,
                     build=lambda: build(cfg, args.out_dir), ship=ship if args.ship else None)


if __name__ == "__main__":
    main()
