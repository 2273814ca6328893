"""The tiny model-based rewards of the "RL for all scenarios" example, and its mixed data set; nothing downloaded.

    python -m examples.build_reward_models                 # into artifacts/ (a few minutes on 2 cores)
    python -m examples.build_reward_models --quick --out-dir /tmp/rm   # seconds: plumbing only (tests)

Writes, under `--out-dir`:
- `tiny-judge/`: a Qwen2 causal LM (served by vLLM like the policy) trained on
  `reward_server.judge.judge_prompt(question, reference, prediction)` followed by `Verdict: CORRECT` or
  `Verdict: INCORRECT`: CORRECT exactly when the prediction is the reference number. Predictions are the
  reference, near misses (one digit off, off by 10 or 100, digits swapped) or junk, half of them correct.
- `tiny-rm-helpful/`: a Qwen2ForSequenceClassification (one logit), trained Bradley-Terry on pairs of
  prompt + summary for the general prompts "Say the number N.": the summary `<answer>N</answer>` is
  preferred to one holding another number or none.
- `tiny-rm-harmless/`: the same architecture, on prompt + whole response: a response is dispreferred when
  one of `UNSAFE_WORDS` appears anywhere in it, the reasoning included.
- `data/all_scenarios/{train,heldout}.jsonl`: addition prompts checked by the rule (`task: arithmetic`),
  addition prompts graded by the judge (`task: addition_judged`), and general prompts (`task: general`).
- `reward_models.json`: the build settings and what each model scored on held-out items it never saw (the
  judge's agreement with the exact verifier and its malformed-verdict rate, each reward model's pairwise
  accuracy).

These are stand-ins with the interfaces of real judges and reward models, so the plumbing runs end to end on
a CPU; what they score is stated, not implied to be general judgement.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see examples/build_tiny.py

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from examples import tasks
from examples.build_tiny import collate, encode_sample
from examples.tiny_model import build_tokenizer, model_config
from reward_server.judge import judge_prompt, parse_verdict
from trainer.templates import r1_zero

JUDGED, GENERAL = "addition_judged", "general"
"""Data sources of the example besides `arithmetic`."""
UNSAFE_WORDS = ("attack", "poison", "weapon", "steal")
"""What the tiny harmlessness model learned to penalise."""


@dataclass(frozen=True)
class RewardModelsBuild:
    seed: int = 0
    out_dir: str = "artifacts"
    judge_steps: int = 600
    """Optimizer steps of the judge (loss on the verdict tokens only)."""
    rm_steps: int = 300
    """Optimizer steps of each reward model (pairs per step: batch_size)."""
    batch_size: int = 64
    lr: float = 3e-3
    judge_hidden: int = 128
    """head_dim = hidden / 2 heads = 64 (vLLM's CPU attention needs >= 32)."""
    rm_hidden: int = 64
    num_layers: int = 2
    train_per_source: int = 1000
    """Rows of each data source in the example's training split."""
    heldout_per_source: int = 64
    eval_items: int = 200
    """Held-out judge prompts and reward-model pairs scored at the end."""


def general_question(n: int) -> str:
    return f"Say the number {n}."


def near_miss(truth: int, rng: random.Random) -> str:
    """A wrong answer of the kind a policy writes: one digit off, off by 10 or 100, two digits swapped, junk."""
    kind = rng.randrange(5)
    if kind == 0:
        return str(truth + rng.choice([-2, -1, 1, 2]))
    if kind == 1:
        return str(truth + rng.choice([-100, -10, 10, 100]))
    digits = list(str(truth))
    if kind == 2 and len(set(digits)) > 1:
        i, j = rng.sample(range(len(digits)), 2)
        digits[i], digits[j] = digits[j], digits[i]
        if digits != list(str(truth)):
            return "".join(digits)
    if kind == 3:
        return str(rng.randint(10, 1998))
    return rng.choice(["", "x", str(truth) + "0", str(truth)[:-1] or "0"])


def judge_item(example: tasks.TaskExample, rng: random.Random) -> tuple[str, str]:
    """(judge prompt, verdict line) for one addition question; half of the predictions are right."""
    truth = int(example.ground_truth)
    prediction = str(truth) if rng.random() < 0.5 else near_miss(truth, rng)
    verdict = "CORRECT" if prediction == str(truth) else "INCORRECT"
    return judge_prompt(example.prompt, example.ground_truth, prediction), f"Verdict: {verdict}"


def helpful_pair(n: int, rng: random.Random) -> tuple[str, str]:
    """(preferred, dispreferred) prompt + summary texts for "Say the number n."."""
    prompt = r1_zero(general_question(n))
    return prompt + f"<answer>{n}</answer>", prompt + f"<answer>{near_miss(n, rng)}</answer>"


def harmless_pair(example: tasks.TaskExample, rng: random.Random) -> tuple[str, str]:
    """(preferred, dispreferred) prompt + whole-response texts; the dispreferred one holds an unsafe word."""
    prompt = r1_zero(example.prompt)
    response = tasks.noisy_arithmetic_completion(example, rng, 0.3)
    cut = rng.randrange(len(response) + 1)
    return prompt + response, prompt + response[:cut] + f" {rng.choice(UNSAFE_WORDS)} " + response[cut:]


def write_data(cfg: RewardModelsBuild, train: list[tasks.TaskExample], heldout: list[tasks.TaskExample]) -> Path:
    """The example's mixed data set: rule-checked addition, judged addition, general prompts."""
    rng = random.Random(cfg.seed)
    out = Path(cfg.out_dir) / "data" / "all_scenarios"
    out.mkdir(parents=True, exist_ok=True)
    n, h = cfg.train_per_source, cfg.heldout_per_source
    for name, pool, size in (("train", train, n), ("heldout", heldout, h)):
        rule = pool[:size]
        judged = [tasks.TaskExample(e.prompt, e.ground_truth, JUDGED) for e in pool[size:2 * size]]
        general = [tasks.TaskExample(general_question(k), str(k), GENERAL)
                   for k in (rng.randint(10, 999) for _ in range(size))]
        rows = rule + judged + general
        rng.shuffle(rows)
        tasks.write_jsonl(out / f"{name}.jsonl", rows)
    return out


def lm_step(model, optimizer, batch: list[tuple[list[int], list[int]]], pad_id: int) -> float:
    loss = model(**collate(batch, pad_id)).loss  # mean over the verdict tokens (prompt labels ignored)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_judge(cfg: RewardModelsBuild, tokenizer, train: list[tasks.TaskExample]):
    from transformers import Qwen2ForCausalLM

    rng = random.Random(cfg.seed + 1)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(model_config(len(tokenizer), hidden_size=cfg.judge_hidden, num_layers=cfg.num_layers,
                                          intermediate_size=3 * cfg.judge_hidden, eos_token_id=tokenizer.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    for step in range(cfg.judge_steps):
        items = [judge_item(e, rng) for e in rng.sample(train, cfg.batch_size)]
        batch = [encode_sample(tokenizer, tokenizer(p)["input_ids"], v) for p, v in items]
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 20) * (1 - 0.9 * step / cfg.judge_steps)
        loss = lm_step(model, optimizer, batch, tokenizer.eos_token_id)
        if (step + 1) % 100 == 0:
            print(f"judge step {step + 1}: loss {loss:.4f}", flush=True)
    return model.eval()


def judge_agreement(model, tokenizer, heldout: list[tasks.TaskExample], cfg: RewardModelsBuild) -> dict[str, float]:
    """Greedy verdicts on held-out judge prompts, parsed as the reward parses them."""
    rng = random.Random(cfg.seed + 2)
    items = [judge_item(e, rng) for e in heldout[:cfg.eval_items]]
    tokenizer.padding_side = "left"
    agree = malformed = 0
    for start in range(0, len(items), 50):
        chunk = items[start:start + 50]
        enc = tokenizer([p for p, _ in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        for (_, truth), ids in zip(chunk, out[:, enc["input_ids"].shape[1]:], strict=True):
            verdict = parse_verdict(tokenizer.decode(ids, skip_special_tokens=True))
            malformed += verdict is None
            agree += verdict is not None and verdict.correct == (truth == "Verdict: CORRECT")
    tokenizer.padding_side = "right"
    return {"judge_agreement": agree / len(items), "judge_malformed": malformed / len(items), "judge_items": len(items)}


def train_reward_model(cfg: RewardModelsBuild, tokenizer, make_pair, pool: list, seed: int):
    """Bradley-Terry: maximise log sigmoid(r(preferred) - r(dispreferred)) over synthetic pairs."""
    from transformers import Qwen2ForSequenceClassification

    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = model_config(len(tokenizer), hidden_size=cfg.rm_hidden, num_layers=cfg.num_layers,
                          intermediate_size=3 * cfg.rm_hidden, eos_token_id=tokenizer.eos_token_id)
    config.num_labels = 1
    model = Qwen2ForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    for step in range(cfg.rm_steps):
        pairs = [make_pair(x, rng) for x in rng.sample(pool, cfg.batch_size)]
        scores = rm_scores(model, tokenizer, [a for a, _ in pairs] + [b for _, b in pairs])  # [2b]
        loss = -torch.nn.functional.logsigmoid(scores[:len(pairs)] - scores[len(pairs):]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 20) * (1 - 0.9 * step / cfg.rm_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def rm_scores(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return model(**enc).logits[:, 0]                                            # [len(texts)]


def pairwise_accuracy(model, tokenizer, make_pair, pool: list, cfg: RewardModelsBuild, seed: int) -> float:
    rng = random.Random(seed)
    pairs = [make_pair(x, rng) for x in pool[:cfg.eval_items]]
    with torch.no_grad():
        scores = rm_scores(model, tokenizer, [a for a, _ in pairs] + [b for _, b in pairs])
    return float((scores[:len(pairs)] > scores[len(pairs):]).float().mean())


def save(model, tokenizer, directory: Path) -> Path:
    """Write beside the target, then rename: readers see the old model or the new one, never half of one."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.pad_token_id = tokenizer.eos_token_id
    if hasattr(model, "generation_config") and model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.replace(directory)
    return directory


def build(cfg: RewardModelsBuild) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    out = Path(cfg.out_dir)
    need = 2 * cfg.train_per_source
    train, heldout = tasks.make_splits(tasks.ARITHMETIC, max(need, 2000), max(2 * cfg.heldout_per_source,
                                                                         cfg.eval_items), cfg.seed + 7)
    data_dir = write_data(cfg, train, heldout)
    rng = random.Random(cfg.seed)
    corpus = [judge_item(e, rng)[0] + " Verdict: CORRECT INCORRECT" for e in train[:1000]]
    corpus += [helpful_pair(rng.randint(10, 999), rng)[0] for _ in range(300)]
    corpus += [harmless_pair(e, rng)[1] for e in train[:300]]
    tokenizer = build_tokenizer(corpus)
    numbers = list(range(10, 1000))
    random.Random(cfg.seed).shuffle(numbers)
    rm_train, rm_heldout = numbers[:800], numbers[800:]
    judge = train_judge(cfg, tokenizer, train)
    report: dict = {"config": asdict(cfg), "data": str(data_dir)}
    report |= judge_agreement(judge, tokenizer, heldout, cfg)
    save(judge, tokenizer, out / "tiny-judge")
    helpful = train_reward_model(cfg, tokenizer, helpful_pair, rm_train, cfg.seed + 3)
    report["helpfulness_pairwise_accuracy"] = pairwise_accuracy(helpful, tokenizer, helpful_pair, rm_heldout, cfg, 11)
    save(helpful, tokenizer, out / "tiny-rm-helpful")
    harmless = train_reward_model(cfg, tokenizer, harmless_pair, train, cfg.seed + 4)
    report["harmlessness_pairwise_accuracy"] = pairwise_accuracy(harmless, tokenizer, harmless_pair, heldout, cfg, 12)
    save(harmless, tokenizer, out / "tiny-rm-harmless")
    report["build_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "reward_models.json").write_text(json.dumps(report, indent=1))
    return report


QUICK = dict(judge_steps=5, rm_steps=5, batch_size=8, train_per_source=64, heldout_per_source=16, eval_items=20)
"""`--quick`: untrained-quality models and a small data set, for tests of the plumbing."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny judge, reward models and mixed data set.")
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps each: plumbing only")
    args = parser.parse_args(argv)
    cfg = RewardModelsBuild(seed=args.seed, out_dir=args.out_dir, **(QUICK if args.quick else {}))
    report = build(cfg)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
