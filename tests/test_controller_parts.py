"""The controller's pure parts: data sampling and resume, train-batch layout, evaluation metrics,
checkpoint atomicity, metrics files, and the example configs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from trainer.batch import build_train_batch, concat_scored, rollout_stats, select_groups, useful_groups
from trainer.checkpoint import ControllerState, latest_checkpoint, load_controller_state, save_checkpoint
from trainer.data import DataError, PromptSampler, SamplerState, load_prompts, read_rows
from trainer.evaluate import cons_at_k, majority_vote, pass_at_1
from trainer.metrics import MetricsLogger, plot_curves, read_metrics
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(index=i, text=f"q{i}", ground_truth=str(i)) for i in range(n)]


# --- data --------------------------------------------------------------------------------------


def test_sampler_resume_continues_exactly():
    full = PromptSampler(_prompts(10), seed=3)
    seen = [p.index for _ in range(7) for p in full.next(4)]       # crosses two epoch boundaries
    first = PromptSampler(_prompts(10), seed=3)
    head = [p.index for _ in range(3) for p in first.next(4)]
    resumed = PromptSampler(_prompts(10), seed=3, state=SamplerState(**vars(first.state)))
    tail = [p.index for _ in range(4) for p in resumed.next(4)]
    assert head + tail == seen


def test_sampler_covers_every_prompt_once_per_epoch():
    sampler = PromptSampler(_prompts(12), seed=0)
    epoch = [p.index for _ in range(3) for p in sampler.next(4)]
    assert sorted(epoch) == list(range(12))
    assert sampler.state == SamplerState(epoch=1, position=0)
    assert epoch != list(range(12))  # shuffled


def test_sampler_resumed_at_end_of_epoch_starts_the_next_one():
    sampler = PromptSampler(_prompts(6), seed=1, state=SamplerState(epoch=2, position=6))
    batch = sampler.next(4)
    assert len(batch) == 4 and sampler.state == SamplerState(epoch=3, position=4)
    assert [p.index for p in batch] == [p.index for p in PromptSampler(_prompts(6), seed=1,
                                                                      state=SamplerState(3, 0)).next(4)]


def test_read_rows_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "ground_truth": "1"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: lacks field"):
        read_rows(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl:1"):
        read_rows(broken)
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")


def test_load_prompts_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "What is 1+2?", "ground_truth": "3", "task": "arithmetic"},
            {"prompt": "Solve", "ground_truth": {"numbers": [1, 2], "target": 3}}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist([rows[0]]), tmp_path / "d.parquet")
    prompts = load_prompts(tmp_path / "d.jsonl", template="r1_zero", default_task="math")
    assert prompts[0].text.endswith("User: What is 1+2? Assistant: <think>")
    assert prompts[0].task == "arithmetic" and prompts[1].task == "math"
    assert json.loads(prompts[1].ground_truth) == {"numbers": [1, 2], "target": 3}
    assert load_prompts(tmp_path / "d.parquet", template="r1_zero")[0].ground_truth == "3"


# --- train batch -------------------------------------------------------------------------------


def _scored(rewards: list[list[float]], lengths: list[list[int]], version: int = 0) -> ScoredBatch:
    prompts = tuple(Prompt(index=b, text=f"p{b}", ground_truth="1") for b in range(len(rewards)))
    completions = tuple(
        tuple(Completion(token_ids=tuple(range(10, 10 + n)), text="x" * n,
                         rollout_logprobs=tuple(-0.1 * (t + 1) for t in range(n)),
                         finish_reason="length" if n >= 4 else "stop") for n in group)
        for group in lengths
    )
    rollout = RolloutBatch(prompts=prompts, prompt_token_ids=tuple((1, 2) for _ in prompts),
                           completions=completions, policy_version=version)
    results = tuple(tuple(RewardResult(reward=r, components={"accuracy": r}, correct=r > 0.5) for r in g)
                    for g in rewards)
    return ScoredBatch(rollout=rollout, results=results)


def test_train_batch_layout():
    scored = _scored([[1.0, 0.0]], [[3, 1]])
    batch = build_train_batch(scored, torch.tensor([[0.5, -0.5]]), pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 10, 11, 12], [1, 2, 10, 0, 0]]
    assert batch.attention_mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch.response_mask.tolist() == [[False, False, True, True, True], [False, False, True, False, False]]
    assert torch.allclose(batch.rollout_logprobs[0], torch.tensor([0, 0, -0.1, -0.2, -0.3]))
    assert batch.advantages.tolist() == [0.5, -0.5]
    assert batch.num_tokens == 4 and batch.num_sequences == 2


def test_overlong_filter_masks_truncated_but_keeps_group_size():
    scored = _scored([[1.0, 0.0]], [[5, 2]])
    batch = build_train_batch(scored, torch.zeros(1, 2), pad_token_id=0, overlong_filter=True)
    assert batch.num_sequences == 2
    assert batch.response_mask[0].sum() == 0 and batch.response_mask[1].sum() == 2


def test_overlong_filter_drops_a_response_whose_budget_a_tool_output_used_up():
    """A response cut at the budget by a tool's output is still unfinished (no answer after the output): the
    filter masks it like any other truncated response (docs/multi_turn.md); the finished one keeps its tokens."""
    scored = _scored([[1.0, 0.0]], [[5, 5]])
    rollout = scored.rollout
    cut = replace(rollout.completions[0][0], loss_mask=(True, True, False, False, False), turns=2, tool_calls=1)
    done = replace(rollout.completions[0][1], loss_mask=(True, False, False, True, True), turns=2, tool_calls=1,
                   finish_reason="stop")
    scored = replace(scored, rollout=replace(rollout, completions=((cut, done),)))
    batch = build_train_batch(scored, torch.zeros(1, 2), pad_token_id=0, overlong_filter=True)
    assert batch.num_sequences == 2
    assert batch.response_mask[0].sum() == 0
    assert batch.response_mask[1].tolist() == [False, False, True, False, False, True, True]


def test_group_selection_and_stats():
    scored = _scored([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], [[2, 2], [3, 5], [1, 1]])
    assert useful_groups(scored.rewards()).tolist() == [False, True, False]
    picked = select_groups(scored, [1])
    assert picked.rollout.prompts[0].index == 1 and picked.rewards().tolist() == [[1.0, 0.0]]
    merged = concat_scored([picked, select_groups(scored, [0])])
    assert [p.index for p in merged.rollout.prompts] == [1, 0]
    with pytest.raises(ValueError, match="policy versions"):
        concat_scored([picked, select_groups(_scored([[1.0, 0.0]], [[1, 1]], version=3), [0])])
    stats = rollout_stats(replace(scored, rollout=replace(scored.rollout, engine_seconds=1.5)))
    assert stats["rollout_engine_s"] == 1.5
    assert stats["accuracy"] == pytest.approx(3 / 6)
    assert stats["zero_variance_group_frac"] == pytest.approx(2 / 3)
    assert stats["truncated_frac"] == pytest.approx(1 / 6)
    assert stats["response_length_max"] == 5.0


# --- evaluation --------------------------------------------------------------------------------


def test_pass_at_1_and_cons_at_k_by_hand():
    correct = [[True, False, False, True], [False, False, False, False], [True, True, True, False]]
    answers = [["5", "4", "4", "5"], [None, "1", "2", "1"], ["9", "9", "9", "8"]]
    assert pass_at_1(correct) == pytest.approx((0.5 + 0 + 0.75) / 3)
    # prompt 0: tie 5 vs 4 -> first seen (5, correct); prompt 1: "1" wins, wrong; prompt 2: "9", correct
    assert cons_at_k(answers, correct) == pytest.approx(2 / 3)
    assert majority_vote([None, None]) is None
    assert majority_vote([" 7", "7 ", "3"]) == 0


# --- checkpoints and metrics -------------------------------------------------------------------


def test_checkpoint_is_atomic_and_keeps_newest(tmp_path):
    def save_learner(path):
        path.mkdir(parents=True)
        (path / "rank0.pt").write_text("weights")

    for step in (1, 2, 3):
        state = ControllerState(step=step, policy_version=step, sampler=SamplerState(0, step), sampling_seed=7)
        save_checkpoint(tmp_path, state, save_learner, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_000003"
    assert load_controller_state(latest).sampler == SamplerState(0, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]

    def crash(path):
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, ControllerState(4, 4, SamplerState(0, 4), 7), crash)
    assert latest_checkpoint(tmp_path).name == "step_000003"


def test_metrics_jsonl_truncate_and_plot(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 4):
        logger.log(step, "train", {"accuracy": 0.1 * step, "response_length_mean": 10.0 + step,
                                   "reward": torch.tensor(0.5)})
    logger.log(3, "eval", {"pass@1": 0.4, "cons@k": 0.5, "response_length_mean": 12.0})
    logger.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path, "train")[0]["reward"] == 0.5
    assert plot_curves(tmp_path).stat().st_size > 1000


def test_examples_validate():
    from examples.configs import EXAMPLES

    for name, fn in EXAMPLES.items():
        cfg = fn().validate()
        assert cfg.sequences_per_update % cfg.learner.data_parallel_size == 0, name


def test_colocation_needs_one_engine_per_learner_device():
    from dataclasses import replace

    from examples.configs import tiny_cpu
    from trainer.config import ConfigError

    cfg = tiny_cpu()
    colocated = replace(cfg, cluster=replace(cfg.cluster, colocate=True))
    assert colocated.validate() is colocated           # 2 engines on 2 learner ranks
    too_many = replace(colocated, rollout=replace(cfg.rollout, num_engines=3))
    with pytest.raises(ConfigError, match="colocate"):
        too_many.validate()
