"""The demo's data and its tiny base model: install the shipped base, or build one from scratch.

    python -m examples.build_tiny                       # data + the shipped base model, into artifacts/
    python -m examples.build_tiny --from-scratch --seed 1 --out-dir /tmp/base1   # the recipe itself

Writes, under `artifacts/`:
- `data/arithmetic/{train,heldout}.jsonl` and `data/countdown/{train,heldout}.jsonl` (examples/tasks.py:
  pure-Python generation from a seed, identical on every machine; their hashes are recorded too);
- `tiny-qwen2/`: a Hugging Face directory (config, safetensors, tokenizer) with a Qwen2 of about 0.9M
  parameters, pretrained on `r1_zero(question) + reference completion + EOS` for the addition task.

Why the base model is shipped, not rebuilt: the same kernels give different floating-point results on
different CPUs, and pretraining amplifies them: the same recipe and seed gave bases of 34.8% and 22.1%
held-out pass@1 on two machines of one kind. So the base that the demo, the tests and the README's
figures start from is built once by this recipe (`--from-scratch --ship`), committed under
`examples/assets/tiny-qwen2/` (about 4 MB), and installed everywhere after its files are checked
against the SHA-256 digests in `examples/assets/tiny-qwen2.json`, which also records how it was built
and what it scored. The recipe stays here so that anyone can build another base (another seed) and
measure the spread.

The base model is deliberately imperfect: a share of the pretraining completions carries one wrong
column sum (and the wrong answer that follows from it), and pretraining is short, so sampling at
temperature 1 slips often while greedy decoding is mostly right. That leaves GRPO room to raise
sampled accuracy within minutes. The loss is on completion tokens only: the prompt is the same
instruction every time, and the model only has to continue it.

A stamp file holds a hash of the build parameters and of the sources that shape the output; a
re-run with a matching stamp does nothing. Same seed, same machine, same artifacts (single-process
CPU training).
"""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads made a training step
# 10-50x slower whenever other processes competed for the cores. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import fcntl
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from examples import tasks
from examples.tasks import ARITHMETIC, COUNTDOWN, TaskExample
from examples.tiny_model import build_tokenizer, model_config
from trainer.templates import r1_zero

ROOT = Path(__file__).resolve().parent.parent
HASHED_SOURCES = ("examples/tasks.py", "examples/build_tiny.py", "examples/tiny_model.py", "trainer/templates.py")
"""Sources whose change changes the artifacts, so they are part of the stamp."""
STAMP_NAME = ".tiny_build_stamp.json"
DATA_STAMP_NAME = ".tiny_data_stamp.json"
ASSETS = ROOT / "examples" / "assets"
SHIPPED_MODEL = ASSETS / "tiny-qwen2"
MANIFEST = ASSETS / "tiny-qwen2.json"
"""SHA-256 of every shipped file and of the data it was trained on, the build config and its scores."""
MODEL_DIR_NAME = "tiny-qwen2"
DATA_SOURCES = ("examples/tasks.py",)
"""Sources that shape the generated data (with BuildConfig's data fields)."""
IGNORE_INDEX = -100
"""Label that `torch.nn.functional.cross_entropy` skips (prompt and padding positions)."""


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    """Seed for the data, the tokenizer corpus, initialisation and batch order."""
    out_dir: str = "artifacts"
    """Where data/ and tiny-qwen2/ go."""
    arithmetic_train: int = 20_000
    """Addition questions in the train split (GRPO's prompts and the pretraining set)."""
    arithmetic_heldout: int = 500
    """Addition questions in the held-out split (evaluation reads the first DataConfig.eval_size)."""
    countdown_train: int = 10_000
    """Countdown instances in the train split."""
    countdown_heldout: int = 500
    """Countdown instances in the held-out split."""
    tokenizer_corpus: int = 4_000
    """Rendered samples per task the BPE is trained on (the vocabulary saturates far below this)."""
    vocab_size: int = 1024
    """BPE vocabulary limit; the template-shaped corpus fills fewer than 512 entries."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    """head_dim = hidden_size / num_heads = 64: vLLM's CPU attention kernel rejects head_dim 16."""
    intermediate_size: int = 384
    max_positions: int = 512
    wrong_step_share: float = 0.6
    """Share of pretraining completions with one wrong column sum: it caps sampled accuracy near
    1 - share (a slip in some step) while greedy decoding still follows the majority, correct, step.
    0.3 with these steps gave 62% sampled / 90% greedy, too good to leave GRPO visible room."""
    pretrain_steps: int = 800
    """Optimizer steps. The model learns the carries abruptly around step 450-550 at this learning
    rate; a 600-step schedule decayed too early and stayed near 1%, so keep the margin."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (after linear warm-up; cosine decay to 10% of it)."""
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 2
    """torch CPU threads for pretraining and the final evaluation."""
    eval_prompts: int = 128
    """Held-out addition prompts for the accuracy printed at the end."""
    eval_samples: int = 4
    """k samples per prompt for the printed pass@1."""


def build_hash(cfg: BuildConfig) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for rel in HASHED_SOURCES:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return h.hexdigest()


def _data_outputs(out: Path) -> list[Path]:
    return [out / "data" / t / f"{s}.jsonl" for t in (ARITHMETIC, COUNTDOWN) for s in ("train", "heldout")]


def _outputs(out: Path) -> list[Path]:
    return _data_outputs(out) + [out / "tiny-qwen2" / "config.json", out / "tiny-qwen2" / "model.safetensors"]


def is_up_to_date(cfg: BuildConfig) -> bool:
    out = Path(cfg.out_dir)
    stamp = out / STAMP_NAME
    if not stamp.exists() or not all(p.exists() for p in _outputs(out)):
        return False
    return json.loads(stamp.read_text()).get("hash") == build_hash(cfg)


# -------------------------------------------------------------------------------------------- data


def write_data(cfg: BuildConfig) -> dict[str, tuple[list[TaskExample], list[TaskExample]]]:
    """Both tasks' splits, written as JSONL; returns them as (train, heldout)."""
    sizes = {ARITHMETIC: (cfg.arithmetic_train, cfg.arithmetic_heldout),
             COUNTDOWN: (cfg.countdown_train, cfg.countdown_heldout)}
    splits = {}
    for task, (n_train, n_heldout) in sizes.items():
        train, heldout = tasks.make_splits(task, n_train, n_heldout, cfg.seed)
        tasks.write_jsonl(Path(cfg.out_dir) / "data" / task / "train.jsonl", train)
        tasks.write_jsonl(Path(cfg.out_dir) / "data" / task / "heldout.jsonl", heldout)
        splits[task] = (train, heldout)
    return splits


def tokenizer_corpus(splits, cfg: BuildConfig) -> list[str]:
    """Template-rendered text of both tasks, with the noisy completions pretraining will see."""
    rng = random.Random(cfg.seed)
    arithmetic, countdown = splits[ARITHMETIC][0], splits[COUNTDOWN][0]
    texts = [r1_zero(e.prompt) + tasks.noisy_arithmetic_completion(e, rng, cfg.wrong_step_share)
             for e in arithmetic[:cfg.tokenizer_corpus]]
    texts += [r1_zero(e.prompt) + tasks.reference_completion(e) for e in countdown[:cfg.tokenizer_corpus]]
    return texts


# ------------------------------------------------------------------------------------- pretraining


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest token prefix all sequences share."""
    first, length = sequences[0], min(len(s) for s in sequences)
    for seq in sequences[1:]:
        length = next((i for i in range(length) if seq[i] != first[i]), length)
    return length


def encode_sample(tokenizer, prompt_ids: list[int], completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for prompt + completion + EOS; labels mask the prompt out.

    The completion is tokenised on its own, as the rollout engine produces it after the prompt.
    """
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def collate(samples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels, all [b, L]."""
    length = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)  # [b, L]
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)  # [b, L]
    mask = torch.zeros((len(samples), length), dtype=torch.long)  # [b, L]
    for i, (ids, lab) in enumerate(samples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def shared_prefix_loss(model, batch: dict[str, torch.Tensor], prefix_len: int) -> torch.Tensor:
    """The causal-LM loss of `batch`, running its shared first `prefix_len` tokens once.

    Every sample starts with the same R1-Zero instruction (about 80 of its ~130 tokens), so its keys and
    values are computed for one row and repeated over the batch; gradients flow back through the
    repeat. Same loss and gradients as the plain forward, at about a third of the cost.
    """
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]  # [b, L]
    prefix = model(input_ids=input_ids[:1, :prefix_len], use_cache=True)  # keys/values [1, P]
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(input_ids.shape[0])  # [b, P]
    out = model(input_ids=input_ids[:, prefix_len:], attention_mask=mask,  # mask covers [b, P + S]
                past_key_values=cache, labels=labels[:, prefix_len:])
    return out.loss  # mean over completion tokens (prompt labels are IGNORE_INDEX)


class PretrainSettings(Protocol):
    """What pretraining reads of a build config (`BuildConfig`, or a sibling recipe's config)."""

    @property
    def seed(self) -> int: ...
    @property
    def pretrain_steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def wrong_step_share(self) -> float: ...
    @property
    def eval_prompts(self) -> int: ...
    @property
    def eval_samples(self) -> int: ...


NoisyCompletion = Callable[[TaskExample, random.Random, float], str]
"""(example, rng, wrong share) -> a reference completion, or with that probability a wrong one."""


def lr_at(step: int, cfg: PretrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.pretrain_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, tokenizer, train: list[TaskExample], cfg: PretrainSettings, *, eval_every: int = 0,
             heldout: list[TaskExample] | None = None,
             completion: NoisyCompletion = tasks.noisy_arithmetic_completion,
             encode: Callable[[object, list[int], str], tuple[list[int], list[int]]] | None = None) -> list[float]:
    """Train on noisy reference completions (addition's by default); returns the per-step losses. `encode`
    turns (tokenizer, prompt ids, completion) into (input ids, labels); `encode_sample` by default."""
    from tqdm import tqdm

    rng = random.Random(cfg.seed + 1)
    prompt_ids = {e.prompt: tokenizer(r1_zero(e.prompt))["input_ids"] for e in train}
    prefix_len = common_prefix_length(list(prompt_ids.values()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.weight_decay)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.pretrain_steps), desc="pretraining", unit="step")
    for step in bar:
        batch = [(encode or encode_sample)(tokenizer, prompt_ids[e.prompt],
                                           completion(e, rng, cfg.wrong_step_share))
                 for e in rng.sample(train, cfg.batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = shared_prefix_loss(model, collate(batch, tokenizer.eos_token_id), prefix_len)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # once per step for the progress bar, outside any RL hot path
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if eval_every and heldout and (step + 1) % eval_every == 0 and step + 1 < cfg.pretrain_steps:
            _report(model, tokenizer, heldout, cfg, label=f"step {step + 1}", write=bar.write)
    return losses


def _report(model, tokenizer, heldout, cfg: PretrainSettings, *, label: str, write=print):
    from examples.eval_base import evaluate

    result = evaluate(model, tokenizer, heldout[:cfg.eval_prompts], k=cfg.eval_samples, seed=cfg.seed)
    task = {ARITHMETIC: "addition", tasks.FUNCTION: "function"}.get(heldout[0].task, heldout[0].task)
    write(f"{label}: held-out {task} ({result.num_prompts} prompts): pass@1 at temperature 1 "
          f"(k={result.samples_per_prompt}) {result.pass_at_1:.1%}, greedy {result.greedy:.1%} "
          f"[{result.seconds:.0f} s]")
    return result


# ------------------------------------------------------------------------------------------- build


def build(cfg: BuildConfig, *, eval_every: int = 0) -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    splits = write_data(cfg)
    tokenizer = build_tokenizer(tokenizer_corpus(splits, cfg), vocab_size=cfg.vocab_size)
    print(f"data written under {out / 'data'}; tokenizer: {len(tokenizer)} tokens")

    model = new_tiny_qwen2(tokenizer, cfg)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    train, heldout = splits[ARITHMETIC]
    losses = pretrain(model, tokenizer, train, cfg, eval_every=eval_every, heldout=heldout)
    tail = losses[-20:]
    print(f"pretraining done in {time.perf_counter() - t0:.0f} s; loss (mean of last {len(tail)} steps) "
          f"{sum(tail) / len(tail):.4f}")

    model_dir = out / "tiny-qwen2"
    save_model(model, tokenizer, model_dir)

    result = _report(model, tokenizer, heldout, cfg, label="final")
    (out / STAMP_NAME).write_text(json.dumps({
        "hash": build_hash(cfg), "config": asdict(cfg), "final_loss": sum(tail) / len(tail),
        "heldout_pass_at_1": result.pass_at_1, "heldout_greedy": result.greedy,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))
    print(f"built {model_dir} in {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------ the shipped base


class ShippedModelError(RuntimeError):
    """A shipped base-model file is missing or differs from the digest recorded for it."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def dir_digests(directory: Path) -> dict[str, str]:
    """{file name: SHA-256} of every file directly in `directory`."""
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def data_digests(out: Path) -> dict[str, str]:
    """{path under out/: SHA-256} of the four data files."""
    return {str(p.relative_to(out)): sha256_file(p) for p in _data_outputs(out)}


def data_in_place(out: Path, manifest: dict) -> bool:
    """Whether every data file the manifest records is under `out` with its recorded digest."""
    return all((out / rel).exists() and sha256_file(out / rel) == digest for rel, digest in manifest["data"].items())


def install_or_build(out_dir: str, lock_name: str, *, from_scratch: bool, install: Callable[[str], object],
                     build: Callable[[], object], ship: Callable[[str], object] | None) -> None:
    """A shipped-model builder's command line: under out_dir's lock `lock_name` (tests and developers share
    artifacts/; a second caller waits for the first), install the shipped model, or build one from scratch
    and, with `ship`, ship it. A ShippedModelError exits with its message."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not from_scratch:
                install(out_dir)
                return
            build()
            if ship is not None:
                ship(out_dir)
        except ShippedModelError as e:
            raise SystemExit(f"error: {e}") from None


def read_shipped_manifest(path: Path, what: str) -> dict:
    """The recorded digests, data and recipe of a shipped model (`what`: its name in the error)."""
    if not path.exists():
        raise ShippedModelError(f"{path} is missing: the shipped {what} has no recorded digests")
    return json.loads(path.read_text())


def read_manifest() -> dict:
    return read_shipped_manifest(MANIFEST, "base model")


def place_shipped(shipped: Path, manifest: dict, model_dir: Path, *, manifest_name: str = MANIFEST.name) -> None:
    """Copy the shipped model to `model_dir` unless the one there already has the recorded digests."""
    try:
        verify_model_dir(model_dir, manifest, manifest_name=manifest_name)
    except ShippedModelError:
        copy_dir_atomically(shipped, model_dir)


def verify_model_dir(directory: Path, manifest: dict, *, manifest_name: str = MANIFEST.name) -> None:
    """Raise ShippedModelError naming every file of `directory` that differs from the manifest."""
    expected: dict[str, str] = manifest["files"]
    actual = dir_digests(directory) if directory.is_dir() else {}
    bad = [f"{name}: expected {digest[:12]}, found {actual.get(name, 'nothing')[:12]}"
           for name, digest in expected.items() if actual.get(name) != digest]
    extra = sorted(set(actual) - set(expected))
    if bad or extra:
        raise ShippedModelError(f"{directory} is not the model recorded in {manifest_name}: "
                                + "; ".join(bad + [f"{name}: not recorded" for name in extra]))


def model_id(manifest: dict) -> str:
    """Short name of a base model: the first 12 hex digits of its weights' SHA-256."""
    return manifest["files"]["model.safetensors"][:12]


def save_model(model, tokenizer, model_dir: Path) -> None:
    """Write a Hugging Face model directory (safetensors and tokenizer) beside `model_dir`, then swap it in:
    readers see the old model or the new one, never half of one. Generation stops at, and pads with, EOS."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.replace(model_dir)


class ModelShape(Protocol):
    """What a from-scratch tiny Qwen2 reads of its recipe."""

    @property
    def seed(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def intermediate_size(self) -> int: ...
    @property
    def max_positions(self) -> int: ...


def new_tiny_qwen2(tokenizer, cfg: ModelShape):
    """A freshly initialised fp32 Qwen2 of `cfg`'s shape over `tokenizer` (tied embeddings, seeded by cfg.seed)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = model_config(len(tokenizer), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                          num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads,
                          intermediate_size=cfg.intermediate_size, max_positions=cfg.max_positions,
                          tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    return Qwen2ForCausalLM(config).to(torch.float32)


def split_digests(out_dir: str | Path, data_dir: Path) -> dict[str, str]:
    """{path under out_dir/: SHA-256} of the train and held-out files of one task's data directory."""
    return {str(data_dir / f"{s}.jsonl"): sha256_file(Path(out_dir) / data_dir / f"{s}.jsonl")
            for s in ("train", "heldout")}


def ship_build(model_dir: Path, record: dict, *, shipped: Path, manifest_path: Path, data: dict[str, str] | None,
               label: str) -> None:
    """Copy a from-scratch build into examples/assets and write its manifest: the files' digests, the data's
    (when the model's data are the project's own), and the recipe and scores."""
    copy_dir_atomically(model_dir, shipped)
    manifest = {"files": dir_digests(shipped), **({"data": data} if data is not None else {}), "build": record}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"shipped {label} {model_id(manifest)} to {shipped}")


def copy_dir_atomically(src: Path, dest: Path) -> None:
    """Copy the directory src to dest through a sibling `.tmp` directory: readers of dest see the old
    model or the new one, never half of one."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def ship(out: Path) -> None:
    """Copy a from-scratch build (`out/tiny-qwen2`) into examples/assets and record its digests."""
    stamp = json.loads((out / STAMP_NAME).read_text())
    build = {k: v for k, v in stamp.items() if k != "hash"}
    build["config"] = {k: v for k, v in build["config"].items() if k != "out_dir"}  # a path of that machine
    ship_build(out / MODEL_DIR_NAME, build, shipped=SHIPPED_MODEL, manifest_path=MANIFEST, data=data_digests(out),
               label="base model")


def install(cfg: BuildConfig) -> None:
    """Data generated into out_dir (cached by a stamp), and the shipped base model copied there, checked."""
    manifest = read_manifest()
    verify_model_dir(SHIPPED_MODEL, manifest)
    out = Path(cfg.out_dir)
    data_stamp = out / DATA_STAMP_NAME
    data_hash = _data_hash(cfg)
    have_data = all(p.exists() for p in _data_outputs(out))
    if not (have_data and data_stamp.exists() and json.loads(data_stamp.read_text()).get("hash") == data_hash):
        write_data(cfg)
        data_stamp.write_text(json.dumps({"hash": data_hash}))
        print(f"data written under {out / 'data'}")
    model_dir = out / MODEL_DIR_NAME
    place_shipped(SHIPPED_MODEL, manifest, model_dir)
    build = manifest["build"]
    print(f"{model_dir}: shipped base model {model_id(manifest)} (digests checked); when built: held-out "
          f"pass@1 {build['heldout_pass_at_1']:.1%}, greedy {build['heldout_greedy']:.1%} "
          f"(seed {build['config']['seed']}, {build['config']['pretrain_steps']} steps)")


def _data_hash(cfg: BuildConfig) -> str:
    fields = {k: getattr(cfg, k) for k in ("seed", "arithmetic_train", "arithmetic_heldout",
                                            "countdown_train", "countdown_heldout")}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for rel in DATA_SOURCES:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Install the shipped tiny base model and the data sets "
                                                 "(default), or build a base from scratch (offline).")
    parser.add_argument("--from-scratch", action="store_true",
                        help="run the pretraining recipe instead of installing the shipped base")
    parser.add_argument("--ship", action="store_true",
                        help="with --from-scratch: make the result the shipped base (examples/assets)")
    parser.add_argument("--force", action="store_true", help="with --from-scratch: rebuild even if the stamp matches")
    parser.add_argument("--out-dir", default=BuildConfig.out_dir)
    parser.add_argument("--seed", type=int, default=BuildConfig.seed)
    parser.add_argument("--steps", type=int, default=BuildConfig.pretrain_steps, help="pretraining steps")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every this many steps")
    args = parser.parse_args(argv)
    if not args.from_scratch and (args.ship or args.force or args.seed != BuildConfig.seed
                                  or args.steps != BuildConfig.pretrain_steps):
        parser.error("--ship, --force, --seed and --steps shape a build: add --from-scratch")
    cfg = BuildConfig(seed=args.seed, out_dir=args.out_dir, pretrain_steps=args.steps)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    # Several developers and test runs share one working tree: a second build waits for the first,
    # then finds the stamp matching and does nothing.
    with open(Path(cfg.out_dir) / ".tiny_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not args.from_scratch:
            try:
                install(BuildConfig(out_dir=args.out_dir))
            except ShippedModelError as e:
                raise SystemExit(f"error: {e}") from None
            return
        if args.force or not is_up_to_date(cfg):
            build(cfg, eval_every=args.eval_every)
        else:
            print(f"{cfg.out_dir}: tiny model and data are up to date (stamp matches); --force rebuilds")
        if args.ship:
            ship(Path(cfg.out_dir))


if __name__ == "__main__":
    main()
