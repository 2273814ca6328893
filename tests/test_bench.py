"""The benchmark suite's own arithmetic (no engine, Ray or timing assertions): step summaries, phase
shares, the wall-clock of steps from metrics-line arrivals, memory attribution, and the model that never
stops early."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from benchmarks.common import MetricsTail, RoleMemory, print_table, role_of
from benchmarks.peer import report, summarize
from benchmarks.phases import phase_table, step_walls


def _train(step, seconds, length, **parts):
    return {"step": step, "kind": "train", "time/step": seconds, "response_length_mean": length, **parts}


def test_summary_skips_the_warm_up_step_and_counts_tokens():
    rows = [(5.0, {"step": 0, "kind": "eval", "pass@1": 0.2}), (7.0, _train(1, 2.0, 10.0)),
            (8.0, _train(2, 1.0, 20.0)), (9.5, _train(3, 1.0, 30.0)), (11.0, {"step": 3, "kind": "eval", "pass@1": 0.5})]
    s = summarize({"rows": rows, "wall_s": 12.0, "memory": {}}, n=4)
    assert s["steps"] == 3 and s["s_per_step_median"] == 1.0
    assert s["generated_tokens_per_s"] == pytest.approx((80 + 120) / 2.0)  # steps 2-3, 4 completions each
    assert s["first_step_wall_s"] == 5.0                                 # start-up and the step-0 evaluation
    assert [c["train_s"] for c in s["eval"]] == [0.0, 4.0] and s["eval"][-1]["pass@1"] == 0.5


def test_report_ratios_are_grpo_ray_over_trl(capsys):
    g = {"steps": 2, "s_per_step_median": 1.0, "s_per_step_mean": 1.0, "tokens_per_step": 10.0,
         "generated_tokens_per_s": 300.0, "process_wall_s": 50.0, "eval": []}
    t = g | {"s_per_step_median": 2.0, "generated_tokens_per_s": 100.0, "process_wall_s": 25.0}
    tp2 = g | {"s_per_step_median": 4.0, "generated_tokens_per_s": 50.0, "process_wall_s": 100.0}
    out = report("demo", {"grpo-ray": g, "grpo-ray-tp2": tp2, "trl": t})
    assert out["ratios"] == {
        "grpo-ray": {"steps_per_s_grpo_ray_over_trl": 2.0, "tokens_per_s_grpo_ray_over_trl": 3.0,
                     "process_wall_trl_over_grpo_ray": 0.5},
        "grpo-ray-tp2": {"steps_per_s_grpo_ray_over_trl": 0.5, "tokens_per_s_grpo_ray_over_trl": 0.5,
                         "process_wall_trl_over_grpo_ray": 0.25}}
    assert "peer comparison" in capsys.readouterr().out
    assert report("demo", {"grpo-ray": g, "trl": None})["ratios"] == {}


def test_step_walls_leave_out_steps_after_an_evaluation():
    rows = [_train(s, 1.0, 1.0) for s in (1, 2, 3, 4)]
    walls = step_walls(rows, [10.0, 11.5, 20.0, 21.25], eval_steps={2})
    assert walls == {2: 1.5, 4: 1.25}


def test_phase_shares_and_the_controller_residue():
    parts = {"time/rollout": 0.5, "time/rollout/generate": 0.3, "time/rollout/reward": 0.1, "time/logprobs": 0.2,
             "time/logprobs/ref": 0.2, "time/train": 0.2, "time/weight_sync": 0.1}
    rows = [_train(s, 1.0, 1.0, **parts) for s in (1, 2, 3)]
    table = {t["phase"]: t for t in phase_table(rows, {2: 1.25, 3: 1.25})}
    assert table["rollout (other)"]["s"] == pytest.approx(0.1)
    assert table["old logprobs"]["s"] == 0.0
    assert table["controller (outside the timers)"]["s"] == pytest.approx(0.25)
    assert table["update"]["share"] == pytest.approx(0.2 / 1.25)
    assert table["step wall-clock"]["s"] == 1.25


def test_metrics_tail_sees_each_complete_line_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsTail(path, interval_s=0.005) as tail:
        with path.open("w") as f:
            f.write(json.dumps({"step": 1}) + "\n" + '{"step": ')
            f.flush()
            time.sleep(0.05)
            f.write('2}\n')
    assert [r["step"] for _, r in tail.rows] == [1, 2]


def test_roles_from_ray_process_titles():
    assert role_of("ray::RolloutWorker.generate") == "rollout"
    assert role_of("ray::LearnerWorker") == "learner"
    assert role_of("ray::RewardActor.score()") == "reward"
    assert role_of("/usr/bin/python -m trainer train") is None


def test_memory_of_this_process_tree_counts_the_root_as_controller():
    memory = RoleMemory(os.getpid())
    memory.sample()
    result = memory.result()
    assert result["controller"]["actors"] == 1 and result["controller"]["peak_actor_gib"] > 0


def test_owner_of_a_process_is_its_nearest_actor():
    memory = RoleMemory(1)
    info = {1: (0, 0.1, None), 2: (1, 0.1, None), 3: (2, 0.5, "rollout"), 4: (3, 0.4, None), 5: (2, 0.2, None)}
    assert memory._owner(4, info) == (3, "rollout")   # vLLM's engine core counts for its engine actor
    assert memory._owner(5, info) == (2, "ray")       # an idle worker under the raylet counts for the raylet
    assert memory._owner(1, info) == (1, "controller")


def test_print_table_aligns(capsys):
    print_table("t", ["a", "bb"], [[1, 2.5], ["long", 1234.5]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len({len(line) for line in lines[1:]}) == 1


def test_generation_heavy_model_does_not_stop_early(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.models import num_parameters, write_generation_heavy_model

    shape = dict(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=256)
    model_dir = write_generation_heavy_model(tmp_path / "m", **shape)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</answer>")]
    ids = tokenizer(["<think>What is 12+34?"] * 8, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=64,
                         eos_token_id=stops, pad_token_id=tokenizer.eos_token_id)
    completions = out[:, ids.shape[1]:]
    assert completions.shape[1] == 64 and not torch.isin(completions, torch.tensor(stops)).any()
    assert len(set(completions.flatten().tolist())) > 50          # still random text, not one token
    assert num_parameters(model_dir) == sum(p.numel() for p in model.parameters())


def test_make_bench_runs_every_benchmark():
    """The bench target's list is hand-kept: every script of benchmarks/ with a main must be on it (the
    TRL side, `trl_peer`, runs inside `benchmarks.peer`, in the peer's own environment)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", (root / "Makefile").read_text(), re.M)
    assert recipe, "no bench target in the Makefile"
    run = set(re.findall(r"-m benchmarks\.(\w+)", recipe.group(1)))
    scripts = {p.stem for p in (root / "benchmarks").glob("*.py") if re.search(r"^def main\(", p.read_text(), re.M)}
    assert run == scripts - {"trl_peer"}, f"make bench runs {sorted(run)}, benchmarks/ has {sorted(scripts)}"


def test_simulated_engines_tag_their_version_and_receive_after_the_generate_in_flight():
    """The simulated engines of benchmarks.rollout_scaling (and async_rl) behave as a RolloutWorker does: a receive waits for the generate in
    flight, which keeps the version it started with; the next one samples the new version; a stale one is refused."""
    import asyncio

    from benchmarks.rollout_scaling import SimEngineHost
    from trainer.types import Prompt

    prompts = [Prompt(index=0, text="1+1=", ground_truth="2")]

    async def scenario():
        host = SimEngineHost(step_ms=5.0, overhead_ms=0.0, receive_ms=1.0)
        in_flight = asyncio.create_task(host.generate(0, prompts, n=2, max_tokens=10, expected_version=0))
        await asyncio.sleep(0.01)
        assert not in_flight.done()
        assert await host.receive_weights(0, 1) == 1 and in_flight.done()
        assert (await in_flight).policy_version == 0
        assert (await host.generate(0, prompts, n=2, max_tokens=1, expected_version=1)).policy_version == 1
        with pytest.raises(RuntimeError, match="holds version 1, expected 0"):
            await host.generate(0, prompts, n=2, max_tokens=1, expected_version=0)

    asyncio.run(scenario())
