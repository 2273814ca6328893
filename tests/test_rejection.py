"""Rejection sampling's selection: correctness, R1's filters, dedup, per-prompt limit, and the report."""

from __future__ import annotations

import json
import typing

from reward_server.filters import Deduplicator, FilterSettings, rules
from trainer.config import RejectionConfig
from trainer.rejection import REASONS, Selection, select_samples, write_outputs
from trainer.templates import r1_cold_start, r1_zero, readable_response
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch


def completion(text: str) -> Completion:
    return Completion(token_ids=(1,) * len(text), text=text, rollout_logprobs=(0.0,) * len(text), finish_reason="stop")


def result(correct: bool, error: str | None = None) -> RewardResult:
    return RewardResult(reward=float(correct), components={"accuracy": float(correct)}, correct=correct, error=error)


def scored(groups: list[tuple[str, list[tuple[str, RewardResult]]]], template=r1_zero) -> ScoredBatch:
    prompts = tuple(Prompt(index=i, text=template(q), ground_truth="3", task="arithmetic")
                    for i, (q, _) in enumerate(groups))
    return ScoredBatch(
        rollout=RolloutBatch(prompts=prompts, prompt_token_ids=tuple((1,) for _ in groups),
                             completions=tuple(tuple(completion(t) for t, _ in g) for _, g in groups),
                             policy_version=0),
        results=tuple(tuple(r for _, r in g) for _, g in groups))


GOOD = "1+2+0=3</think><answer>3</answer>"


def run(batch: ScoredBatch, questions: list[str], **kwargs) -> Selection:
    table = rules(FilterSettings(max_paragraph_chars=kwargs.pop("max_paragraph_chars", 1000)))
    return select_samples(batch, questions, Selection(), filter_rules=table, dedup=Deduplicator(), **kwargs)


def test_every_filter_rule_is_a_reason_of_the_report():
    """A rule of `reward_server.filters.rules`, under any of FilterSettings' switches, is counted by the report:
    `Selection.report` lists only the reasons in REASONS, so a missing one would vanish from it."""
    switches = [name for name, hint in typing.get_type_hints(FilterSettings).items() if hint is bool]
    names = list(rules(FilterSettings(**dict.fromkeys(switches, True))))
    assert switches and names
    assert set(names) <= set(REASONS), f"rules missing from REASONS: {set(names) - set(REASONS)}"
    assert [r for r in REASONS if r in names] == names  # in the order the rules run


def test_each_reason_is_counted_once_and_counts_add_up():
    batch = scored([
        ("What is 1+2?", [
            (GOOD, result(True)),
            (GOOD, result(True)),                                          # duplicate
            ("1+2+0=4</think><answer>4</answer>", result(False)),          # incorrect
            ("x", result(False, error="timeout")),                         # reward error
            ("no tags <answer>3</answer>", result(True)),                  # no chain of thought
            ("三</think><answer>3</answer>", result(True)),                 # mixed language
            ("```\nprint(3)\n```</think><answer>3</answer>", result(True)),  # code block
            ("x" * 50 + "</think><answer>3</answer>", result(True)),        # overlong paragraph
        ]),
    ])
    sel = run(batch, ["What is 1+2?"], max_paragraph_chars=40)
    report = sel.report()
    assert report["kept"] == 1 and report["samples"] == 8 and report["prompts"] == 1
    assert report["dropped"] == {"reward_error": 1, "incorrect": 1, "no_chain_of_thought": 1, "mixed_language": 1,
                                 "overlong_paragraph": 1, "code_block": 1, "duplicate": 1, "over_keep_limit": 0}
    assert report["kept"] + sum(report["dropped"].values()) == report["samples"]
    assert list(report["dropped"]) == list(REASONS)
    assert sel.rows == [{"prompt": "What is 1+2?", "response": GOOD, "ground_truth": "3", "task": "arithmetic"}]


def test_keep_per_prompt_and_prompts_with_kept():
    other = "2+1+0=3</think><answer>3</answer>"
    batch = scored([("q1", [(GOOD, result(True)), (other, result(True)), (GOOD + " ", result(True))]),
                    ("q2", [(GOOD, result(False))])])
    sel = run(batch, ["q1", "q2"], keep_per_prompt=1)
    assert [r["response"] for r in sel.rows] == [GOOD]
    assert sel.dropped == {"over_keep_limit": 1, "duplicate": 1, "incorrect": 1}
    assert sel.prompts_with_kept == 1


def test_readable_format_is_filtered_on_its_reasoning():
    ok = readable_response("1+2+0=3", "1+2=3 <answer>3</answer>")
    bad = readable_response("1+2+0=3 我", "<answer>3</answer>")
    sel = run(scored([("What is 1+2?", [(ok, result(True)), (bad, result(True))])], template=r1_cold_start),
              ["What is 1+2?"])
    assert [r["response"] for r in sel.rows] == [ok]
    assert sel.dropped == {"mixed_language": 1}


def test_selection_accumulates_over_batches_and_dedups_across_them(tmp_path):
    table, dedup, sel = rules(FilterSettings()), Deduplicator(), Selection()
    for _ in range(2):
        select_samples(scored([("q", [(GOOD, result(True))])]), ["q"], sel, filter_rules=table, dedup=dedup)
    assert len(sel.rows) == 1 and sel.dropped == {"duplicate": 1} and sel.prompts == 2
    report = write_outputs(tmp_path / "out", sel, {"model": "m"})
    rows = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert rows == sel.rows
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert report["model"] == "m" and report["kept"] == 1


def test_rejection_config_validates():
    import pytest

    from trainer.config import ConfigError

    RejectionConfig().validate()
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        RejectionConfig(samples_per_prompt=0).validate()


def test_the_command_samples_the_checkpoint_it_names_with_the_overrides(tmp_path, monkeypatch):
    """`python -m trainer reject --checkpoint DIR --set ...`: DIR becomes model.path, the overrides apply, and
    the run gets the validated config (the run itself: tests/test_rejection_tiny.py)."""
    import trainer.rejection

    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    ran: list[RejectionConfig] = []
    monkeypatch.setattr(trainer.rejection, "run_rejection", lambda cfg: ran.append(cfg) or tmp_path / cfg.name)
    overrides = [f"output_dir={tmp_path}", "data.template=r1_zero", "max_prompts=16", "prompts_per_batch=8",
                 "samples_per_prompt=4", "keep_per_prompt=0", "model.max_response_tokens=64", "cluster.num_cpus=2"]
    assert trainer.rejection.main("tiny_cpu_reject", overrides, checkpoint=str(checkpoint)) == 0
    [cfg] = ran
    assert cfg.model.path == str(checkpoint) and cfg.output_dir == str(tmp_path)
    assert (cfg.data.template, cfg.max_prompts, cfg.prompts_per_batch, cfg.samples_per_prompt, cfg.keep_per_prompt,
            cfg.model.max_response_tokens, cfg.cluster.num_cpus) == ("r1_zero", 16, 8, 4, 0, 64, 2)


def test_a_source_with_tools_is_sampled_with_them_and_its_rows_keep_the_outputs(tmp_path, monkeypatch):
    """`rollout.tools` reaches the engines' generate exactly as in training (`tools=cfg.rollout.tool_settings()`),
    and a kept multi-turn response keeps its tool outputs in `response`, located by `tool_spans` (fakes for
    the engines and reward actors; the tiny model's tokenizer and data)."""
    from pathlib import Path

    import pytest

    import trainer.rejection
    from examples.configs import REJECTION_EXAMPLES
    from trainer.config import apply_overrides

    root = Path(__file__).resolve().parent.parent
    if not (root / "artifacts" / "tiny-qwen2").exists():
        pytest.skip("run `python -m examples.build_tiny` first")
    calls: list[dict] = []
    output = "<result>3</result>"
    text = f"1+2+0=<calc>1+2</calc>{output}</think><answer>3</answer>"

    class Engines:
        def generate(self, prompts, **kwargs):
            calls.append(kwargs)
            c = Completion(token_ids=(1, 2, 3), text=text, rollout_logprobs=(0.0,) * 3, finish_reason="stop",
                           loss_mask=(True, False, True), turns=2, tool_calls=1, tool_outputs=(output,))
            return RolloutBatch(prompts=tuple(prompts), prompt_token_ids=tuple((1,) for _ in prompts),
                                completions=tuple((c,) for _ in prompts), policy_version=0)

    class Rewards:
        def score(self, rollout):
            return ScoredBatch(rollout=rollout, results=tuple((result(True),) for _ in rollout.prompts))

    class System:
        engines, rewards = Engines(), Rewards()

        def shutdown(self):
            pass

    monkeypatch.setattr(trainer.rejection, "start_rejection_system", lambda cfg: System())
    cfg = apply_overrides(REJECTION_EXAMPLES["tiny_cpu_reject"](), [
        f"model.path={root / 'artifacts' / 'tiny-qwen2'}", f"data.train_path={root / 'artifacts/data/arithmetic/train.jsonl'}",
        f"output_dir={tmp_path}", "data.template=r1_zero", "max_prompts=2", "prompts_per_batch=2", "samples_per_prompt=1",
        "rollout.tools=arithmetic:calculator", "rollout.multi_turn.max_turns=2"]).validate()
    out = trainer.rejection.run_rejection(cfg)
    [kwargs] = calls
    assert kwargs["tools"] == cfg.rollout.tool_settings() and kwargs["tools"].tools_for("arithmetic") == ("calculator",)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["response"] == text
        [(start, end)] = row["tool_spans"]
        assert row["response"][start:end] == output
