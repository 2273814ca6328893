"""Rejection sampling on the rollout engines (DeepSeek-R1, arXiv:2501.12948, section 2.3.3).

    prompts (batches of prompts_per_batch) --engines.generate(n=k)--> k completions each
        --reward actors--> correct or not --select_samples--> kept rows + counts per reason
        --> output_dir/name/sft.jsonl ({prompt, response, ground_truth, task}) and report.json

A completion is kept when, in this order: the reward actors scored it without error, it is correct,
its chain of thought can be found (readable markers, or `<think>...</think>`), it passes R1's filters
(`reward_server.filters`: mixed language, long paragraphs, code blocks), it is not a duplicate of a
kept response to the same prompt, and the prompt has fewer than `keep_per_prompt` kept samples. Each
completion that fails is counted once, under the first check it fails, so the report's counts add up
to the number of samples.

The output rows are SFT rows (`python -m trainer sft` reads `prompt` and `response`), and keep
`ground_truth` and `task`, so the same file can also serve as prompts for GRPO or evaluation.

A data source with tools (`rollout.tools`) is sampled turn by turn exactly as in training (the same
`engines.generate(..., tools=...)` call, `actors.rollout_tools`); its kept responses keep the tool outputs in
`response`, and `tool_spans` ([start, end) character offsets of each output) lets SFT mask them out of its loss.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.filters import RULE_NAMES
from trainer.config import RejectionConfig, to_dict
from trainer.templates import chain_of_thought, completion_for_reward
from trainer.types import ScoredBatch

REASONS = ("reward_error", "incorrect", "no_chain_of_thought", *RULE_NAMES, "duplicate", "over_keep_limit")
"""Why a sample is dropped, in the order the checks run: `_first_failure`'s own, the filter rules' names
(`reward_server.filters.rules`), then `select_samples`'s."""


@dataclass
class Selection:
    """What `select_samples` kept and why it dropped the rest; accumulates over batches."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """Kept SFT rows."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Reason -> samples dropped for it."""
    samples: int = 0
    """Samples looked at."""
    prompts: int = 0
    """Prompts looked at."""
    prompts_with_kept: int = 0
    """Prompts with at least one kept sample."""

    def report(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "samples": self.samples, "kept": len(self.rows),
                "dropped": {r: self.dropped.get(r, 0) for r in REASONS},
                "prompts_with_kept": self.prompts_with_kept,
                "kept_frac": len(self.rows) / max(self.samples, 1)}


def select_samples(scored: ScoredBatch, questions: Sequence[str], selection: Selection, *, filter_rules: dict,
                   dedup: Any, keep_per_prompt: int = 0) -> Selection:
    """Add the kept completions of `scored` to `selection` (in place, and returned).

    questions: [B] the bare question of each prompt (what the SFT row's `prompt` holds).
    filter_rules: rule name -> rule, from `reward_server.filters.rules`; dedup: a `Deduplicator`.
    """
    rollout = scored.rollout
    for prompt, question, group, results in zip(rollout.prompts, questions, rollout.completions, scored.results,
                                                strict=True):
        kept_here = 0
        selection.prompts += 1
        for completion, result in zip(group, results, strict=True):
            selection.samples += 1
            reason = _first_failure(prompt.text, completion.text, result, filter_rules)
            if reason is None and dedup.seen(question, completion.text):
                reason = "duplicate"
            if reason is None and keep_per_prompt and kept_here >= keep_per_prompt:
                reason = "over_keep_limit"
            if reason is not None:
                selection.dropped[reason] += 1
                continue
            kept_here += 1
            row: dict[str, Any] = {"prompt": question, "response": completion.text,
                                   "ground_truth": prompt.ground_truth, "task": prompt.task}
            if completion.tool_outputs:  # the outputs stay in the text; SFT masks these spans out of its loss
                row["tool_spans"] = [list(span) for span in completion.tool_spans()]
            selection.rows.append(row)
        selection.prompts_with_kept += kept_here > 0
    return selection


def _first_failure(prompt_text: str, text: str, result: Any, filter_rules: dict) -> str | None:
    from reward_server.filters import first_rejection

    if result.error is not None:
        return "reward_error"
    if not result.correct:
        return "incorrect"
    cot = chain_of_thought(completion_for_reward(prompt_text, text))
    if cot is None:
        return "no_chain_of_thought"
    rejected = first_rejection(cot, filter_rules)
    return rejected[0] if rejected is not None else None


def write_outputs(out_dir: Path, selection: Selection, extra: dict[str, Any]) -> dict[str, Any]:
    """sft.jsonl and report.json, each written beside and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "sft.jsonl"
    tmp = data.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in selection.rows),
                   encoding="utf-8")
    tmp.replace(data)
    report = selection.report() | extra
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out_dir / "report.json")
    return report


# --- the job on the actors -----------------------------------------------------------------------------


def start_rejection_system(cfg: RejectionConfig) -> Any:
    """The rollout engines, reward actors and, when `reward.routes` use it, the judge, without a learner:
    started by the one builder of every entry point (`trainer.roles`, `actors.launch`). No learner shares
    their GPUs, so the engines get whole GPUs of their own even under cluster.colocate."""
    from actors.launch import start_system
    from trainer.roles import plan_system

    plan = plan_system(cfg.engine_config(), "reject")  # every decision, before anything starts
    return start_system(plan)


def run_rejection(cfg: RejectionConfig) -> Path:
    """Sample, score, filter and write; returns the output directory (sft.jsonl, report.json, config.json).
    Holds the directory's lock throughout (trainer.run_lock): a second run there refuses."""
    from trainer.run_lock import hold_run_dir

    cfg = cfg.validate()
    out_dir = (Path(cfg.output_dir) / cfg.name).resolve()
    with hold_run_dir(out_dir):
        return _run_rejection(cfg, out_dir)


def _run_rejection(cfg: RejectionConfig, out_dir: Path) -> Path:
    from transformers import AutoTokenizer

    from reward_server.filters import Deduplicator, FilterSettings, rules
    from trainer.data import load_prompts, read_rows
    from trainer.protocols import EngineGroupProtocol, RewardGroupProtocol

    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    limit = cfg.max_prompts or None
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    questions = [str(row["prompt"]) for row in read_rows(cfg.data.train_path)[:limit]]
    prompts = load_prompts(cfg.data.train_path, template=cfg.data.template, tokenizer=tokenizer,
                           default_task=cfg.reward.verifier, limit=limit)
    filter_rules = rules(FilterSettings(target_language=cfg.reward.target_language,
                                        max_foreign_share=cfg.max_foreign_share,
                                        max_paragraph_chars=cfg.max_paragraph_chars, reject_code=cfg.reject_code))
    selection, dedup = Selection(), Deduplicator()
    s = cfg.rollout.sampling
    tools = cfg.rollout.tool_settings()  # sources with tools sample turn by turn, as in training (trainer.steps)
    with_tools: dict[str, Any] = {"tools": tools} if tools is not None else {}  # fakes need no tools argument
    system = start_rejection_system(cfg)
    engines: EngineGroupProtocol = system.engines
    rewards: RewardGroupProtocol = system.rewards
    began = time.perf_counter()
    try:
        for first in range(0, len(prompts), cfg.prompts_per_batch):
            batch = prompts[first:first + cfg.prompts_per_batch]
            rollout = engines.generate(batch, n=cfg.samples_per_prompt, temperature=s.temperature, top_p=s.top_p,
                                       max_tokens=cfg.model.max_response_tokens, stop=list(s.stop),
                                       seed=cfg.seed + first, **with_tools)
            select_samples(rewards.score(rollout), questions[first:first + len(batch)], selection,
                           filter_rules=filter_rules, dedup=dedup, keep_per_prompt=cfg.keep_per_prompt)
            print(f"rejection sampling: {selection.prompts}/{len(prompts)} prompts, kept {len(selection.rows)} "
                  f"of {selection.samples} samples")
    finally:
        system.shutdown()
    report = write_outputs(out_dir, selection, {"model": cfg.model.path, "samples_per_prompt": cfg.samples_per_prompt,
                                                "seconds": round(time.perf_counter() - began, 1)})
    print(json.dumps(report, indent=1))
    return out_dir


def main(example: str, overrides: list[str], *, checkpoint: str | None = None) -> int:
    """`python -m trainer reject --example NAME [--checkpoint DIR] [--set key=value ...]`."""
    import sys

    from examples.configs import REJECTION_EXAMPLES
    from trainer.config import ConfigError, apply_overrides

    if example not in REJECTION_EXAMPLES:
        print(f"error: unknown rejection example {example!r}; known: {', '.join(sorted(REJECTION_EXAMPLES))}",
              file=sys.stderr)
        return 2
    if checkpoint is not None:
        if not (Path(checkpoint) / "config.json").exists():
            print(f"error: --checkpoint {checkpoint} is not a Hugging Face model directory (no config.json)",
                  file=sys.stderr)
            return 2
        overrides = [f"model.path={checkpoint}", *overrides]
    try:
        cfg = apply_overrides(REJECTION_EXAMPLES[example](), overrides).validate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = run_rejection(cfg)
    print(f"kept samples: {out_dir / 'sft.jsonl'}; report: {out_dir / 'report.json'}")
    return 0
