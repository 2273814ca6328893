"""Prompt data sets: local JSONL or Parquet rows with `prompt`, `ground_truth` and optional `task`.

`python -m examples.prepare_data gsm8k|math` writes such files from the published GSM8K and MATH
layouts. Loading renders every prompt with the template and drops the ones longer than
`model.max_prompt_tokens`, counted as the engines will count them: the rendered text tokenized by the
model's tokenizer with its default special tokens (`tokenizer(text)`, as vLLM encodes a text prompt).
How many were dropped is logged, and a file where every prompt is too long is an error.

`check_run_inputs` reads the model directory, the tokenizer and both data files before anything starts,
so a wrong path costs a second instead of the minutes it takes to start every actor; the prompts it
returns are the run's (tokenised once). It refuses a training set smaller than one step. A row whose
question is far longer than `model.max_prompt_tokens` could hold (`max_prompt_chars`) is dropped unread.
Errors name JSON lines by their 1-based line in the file (`file:LINE`), Parquet rows as `row N` (1-based).

`PromptSampler` hands out B distinct prompts per step in a seeded order, reshuffling every epoch; a step
across an epoch boundary finishes the pass, then goes on in the next one, setting aside (for the next
step) any prompt it already holds. Its state (epoch, position, the ids set aside) is saved in every
checkpoint, so a resumed run continues with exactly the prompts the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cluster.untyped import JsonValue
from trainer.templates import Tokenizer, render
from trainer.types import Prompt

if TYPE_CHECKING:
    from trainer.config import TrainConfig

REQUIRED_FIELDS = ("prompt", "ground_truth")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file (or model directory) that cannot be used; the message names the file and the row."""


def read_rows(path: str | Path) -> list[dict[str, JsonValue]]:
    """Rows of a .jsonl / .json lines or .parquet file, each checked for the required fields."""
    return [row for _, row in read_numbered_rows(path)]


def read_numbered_rows(path: str | Path) -> list[tuple[str, dict[str, JsonValue]]]:
    """(where, row) of every row, checked for the required fields. `where` is how errors and warnings
    name the row: `file:LINE` for JSON lines (1-based file line numbers, blank lines counted),
    `file: row N` for Parquet (1-based)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what} (the demo's data: `python -m examples.build_tiny`; "
                        f"GSM8K / MATH: `python -m examples.prepare_data`)")
    rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: a JSON {type(row).__name__}, not an object with fields {list(REQUIRED_FIELDS)}")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise DataError(f"{where}: lacks field(s) {missing}; every row needs {list(REQUIRED_FIELDS)}")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{where}: an empty or non-text prompt: {row['prompt']!r:.80}")
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def _read_parquet(path: Path) -> list[tuple[str, JsonValue]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return [(f"{path}: row {n}", row) for n, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _read_jsonl(path: Path) -> list[tuple[str, JsonValue]]:
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{line_no}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    return rows


CHAR_BOUND_SLACK = 4
"""Safety factor on the character bound: a tokenizer's normalizer may drop characters (control
characters, combining marks) before counting, so a text somewhat over `max tokens x longest token` can
still fit; nothing near that is dropped unread, only rows far beyond it (a 20 MB line)."""
LONGEST_TOKEN_FALLBACK = 64
"""Characters per token assumed for a tokenizer that cannot list its vocabulary."""


def max_prompt_chars(tokenizer: Tokenizer, max_prompt_tokens: int) -> int:
    """Characters beyond which a text cannot fit in `max_prompt_tokens` tokens, whatever it holds.

    No token stands for more characters than its vocabulary entry is long (byte-level BPE: one
    character per byte; SentencePiece and WordPiece: at most the piece), so a text longer than
    `max_prompt_tokens x longest entry` needs more tokens. Times `CHAR_BOUND_SLACK`, for normalizers."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    longest = max(map(len, vocab), default=1) if vocab else LONGEST_TOKEN_FALLBACK
    return max_prompt_tokens * longest * CHAR_BOUND_SLACK


def load_prompts(path: str | Path, *, template: str, tokenizer: Tokenizer | None = None, default_task: str = "math",
                 limit: int | None = None, max_prompt_tokens: int | None = None) -> list[Prompt]:
    """Read a data set, render every prompt with `template`, and drop prompts over `max_prompt_tokens`.

    `limit` keeps the first `limit` prompts that fit. A prompt keeps its row number (0-based, over the
    file's rows) as `index`, so indices stay stable whatever is dropped. Counting tokens needs the model's
    `tokenizer`; a row whose question alone is over `max_prompt_chars` is dropped unrendered and untokenised.
    """
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("counting prompt tokens needs the model's tokenizer")
    numbered = read_numbered_rows(path)
    bound = None if max_prompt_tokens is None or tokenizer is None else max_prompt_chars(tokenizer, max_prompt_tokens)
    huge = [where for where, row in numbered if bound is not None and len(row["prompt"]) > bound]
    prompts = [
        Prompt(
            index=i,
            text=render(template, str(row["prompt"]), tokenizer),
            ground_truth=_as_text(row["ground_truth"]),
            task=str(row.get("task", default_task)),
        )
        for i, (_, row) in enumerate(numbered)
        if bound is None or len(row["prompt"]) <= bound
    ]
    if huge:
        log.warning("%s: dropped %d prompts of over %d characters unread (longer than model.max_prompt_tokens = "
                    "%d tokens can hold; first: %s)", path, len(huge), bound, max_prompt_tokens, huge[0])
        if not prompts:
            raise DataError(f"{path}: all {len(numbered)} prompts are longer than model.max_prompt_tokens = "
                            f"{max_prompt_tokens} tokens can hold (over {bound} characters each)")
    if max_prompt_tokens is not None:
        prompts = drop_long_prompts(prompts, tokenizer, max_prompt_tokens, source=str(path))
    return prompts[:limit]


def prompt_token_counts(prompts: list[Prompt], tokenizer: Tokenizer | None) -> list[int]:
    """Tokens of each rendered prompt as the engine counts them (`tokenizer(text)`, default special tokens)."""
    if tokenizer is None:
        raise ValueError("counting prompt tokens needs the model's tokenizer")
    return [len(ids) for ids in tokenizer([p.text for p in prompts])["input_ids"]]


def drop_long_prompts(prompts: list[Prompt], tokenizer: Tokenizer | None, max_prompt_tokens: int, *,
                      source: str) -> list[Prompt]:
    """The prompts of at most `max_prompt_tokens` tokens; logs how many were dropped."""
    counts = prompt_token_counts(prompts, tokenizer)
    kept = [p for p, n in zip(prompts, counts, strict=True) if n <= max_prompt_tokens]
    dropped = len(prompts) - len(kept)
    if not kept:
        raise DataError(f"{source}: all {len(prompts)} prompts are longer than model.max_prompt_tokens = "
                        f"{max_prompt_tokens} tokens (the shortest has {min(counts)}); raise it, e.g. "
                        f"--set model.max_prompt_tokens={min(counts)}")
    if dropped:
        log.warning("%s: dropped %d of %d prompts longer than model.max_prompt_tokens = %d tokens "
                    "(longest: %d tokens)", source, dropped, len(prompts), max_prompt_tokens, max(counts))
    return kept


def _as_text(value: JsonValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load_run_prompts(cfg: TrainConfig, tokenizer: Tokenizer) -> tuple[list[Prompt], list[Prompt]]:
    """The run's training prompts and its first `data.eval_size` held-out prompts, long ones dropped."""
    d, task, longest = cfg.data, cfg.reward.verifier, cfg.model.max_prompt_tokens
    train = load_prompts(d.train_path, template=d.template, tokenizer=tokenizer, default_task=task,
                         max_prompt_tokens=longest)
    heldout = load_prompts(d.eval_path, template=d.template, tokenizer=tokenizer, default_task=task,
                           max_prompt_tokens=longest, limit=d.eval_size)
    return train, heldout


def check_model_dir(path: str | Path) -> Path:
    """A local Hugging Face model directory, or a `DataError` that says what is missing.

    Nothing is downloaded at run time, so a path that is not a directory is an error here instead of
    the hub lookup (and its misleading "repo id" message) that `from_pretrained` would try.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"model.path = {str(path)!r} is not a directory: point it at a local Hugging Face "
                        f"model directory (config.json, *.safetensors, tokenizer files); nothing is downloaded")
    if not (path / "config.json").is_file():
        raise DataError(f"model.path = {str(path)!r} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")):
        raise DataError(f"model.path = {str(path)!r} holds no *.safetensors weights")
    return path


DUPLICATE_WARNING_SHARE = 0.5
"""Warn when more than this share of the training prompts repeat an earlier prompt's text."""


@dataclass(frozen=True)
class RunInputs:
    """A run's prompts, loaded (and tokenised, to drop long ones) once, before any actor starts."""

    train: list[Prompt]
    heldout: list[Prompt]


def check_run_inputs(cfg: TrainConfig) -> RunInputs:
    """Model directory, tokenizer and both data files of a run, checked before any actor starts.

    Returns the prompts the run trains and evaluates on; raises `DataError` naming the file (and line)
    at fault, or a data set smaller than one step. Warns when the training set is mostly duplicates.
    """
    from transformers import AutoTokenizer

    model_dir = check_model_dir(cfg.model.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers raises several types for a broken tokenizer
        raise DataError(f"model.path = {str(model_dir)!r}: the tokenizer does not load "
                        f"({type(e).__name__}: {e})") from None
    train, heldout = load_run_prompts(cfg, tokenizer)
    per_step = cfg.algorithm.prompts_per_step
    if per_step > len(train):
        raise DataError(f"algorithm.prompts_per_step = {per_step} is more than the {len(train)} training prompts "
                        f"of {cfg.data.train_path} (after dropping those over model.max_prompt_tokens): a step "
                        f"would hold a prompt twice. Lower prompts_per_step to at most {len(train)}, or add data.")
    repeats = len(train) - len({p.text for p in train})
    if repeats > DUPLICATE_WARNING_SHARE * len(train):
        log.warning("%s: %d of %d training prompts repeat an earlier prompt's text (%.0f%%): each epoch trains "
                    "mostly on repeats", cfg.data.train_path, repeats, len(train), 100 * repeats / len(train))
    return RunInputs(train=train, heldout=heldout)


@dataclass(frozen=True)
class SamplerState:
    epoch: int = 0
    """Passes over the data begun before the current one."""
    position: int = 0
    """Places of the current epoch's shuffled order already taken (handed out, or set aside in `deferred`)."""
    deferred: tuple[int, ...] = ()
    """Ids (`Prompt.index`) taken from the order but set aside because the step that reached them already
    held them (a step across an epoch boundary); the next step hands them out first."""

    def handed_out(self, num_prompts: int) -> int:
        """Prompts handed out from the seeded order so far (what the prompt ledger counts)."""
        return self.epoch * num_prompts + self.position - len(self.deferred)


class PromptSampler:
    """B prompts at a time, seeded order, reshuffled per epoch; resumable from `state`.

    A step that reaches the end of an epoch takes the rest of it, then goes on with the next epoch's
    shuffled order, never the same prompt twice in one step: an id the step already holds is set aside
    (`SamplerState.deferred`) and handed out first by the next step. So every epoch still hands out each
    prompt exactly once, and epochs never mix beyond the one step that crosses the boundary. A data set
    smaller than one step cannot be sampled this way and is refused (`check_run_inputs`, and here).
    With dynamic sampling each round of a step is one such draw; a later round may meet a prompt of an
    earlier round again only across an epoch boundary (it is then the next pass's sample of it)."""

    def __init__(self, prompts: list[Prompt], *, seed: int, shuffle: bool = True,
                 state: SamplerState | None = None) -> None:
        if not prompts:
            raise DataError("no training prompts")
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.state = state or SamplerState()
        self.by_index = {p.index: p for p in prompts}
        unknown = [i for i in self.state.deferred if i not in self.by_index]
        if unknown:
            raise DataError(f"the sampler state sets aside prompts {unknown[:8]}, which are not in the training data")
        self.requeued: list[Prompt] = []
        """Handed out before the seeded order continues: prompts in flight when a checkpoint was written
        (see trainer.ledger); not part of `state`, since the ledger saved with it lists them."""

    def requeue(self, indices: list[int]) -> None:
        """Hand out the prompts with these ids (`Prompt.index`) first, in this order."""
        missing = [i for i in indices if i not in self.by_index]
        if missing:
            raise DataError(f"prompts {missing[:8]} to hand out again are not in the training data")
        self.requeued.extend(self.by_index[i] for i in indices)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next(self, count: int) -> list[Prompt]:
        """The next `count` distinct prompts: requeued ones, then those set aside, then the seeded order
        (into the next epoch at its end), setting aside any id this call already holds."""
        if count > len(self.prompts):
            raise DataError(f"{count} prompts per step from {len(self.prompts)} training prompts: a step would "
                            f"hold a prompt twice; lower algorithm.prompts_per_step or add data")
        out: list[Prompt] = self.requeued[:count]
        self.requeued = self.requeued[count:]
        held = {p.index for p in out}
        deferred: list[int] = []
        for i in self.state.deferred:  # first in line, unless this call holds them already
            if len(out) < count and i not in held:
                out.append(self.by_index[i])
                held.add(i)
            else:
                deferred.append(i)
        epoch, position = self.state.epoch, self.state.position
        order = self._order(epoch)
        while len(out) < count:
            if position == len(order):
                epoch, position, order = epoch + 1, 0, self._order(epoch + 1)
            p = self.prompts[order[position]]
            position += 1
            if p.index in held:
                deferred.append(p.index)
            else:
                out.append(p)
                held.add(p.index)
        if position == len(order):
            epoch, position = epoch + 1, 0
        self.state = SamplerState(epoch=epoch, position=position, deferred=tuple(deferred))
        return out
