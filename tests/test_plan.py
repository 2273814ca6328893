"""`python -m trainer plan`: layout and per-GPU memory from the config alone, for every example; golden
numbers for one small model computed by hand; an oversize plan is refused with the numbers."""

from __future__ import annotations

import json
import math

import pytest

from trainer.__main__ import examples, main, resolve
from trainer.config import apply_overrides
from trainer.plan import GIB, KNOWN_SHAPES, LEARNER_RUNTIME_GIB, ModelShape, make_plan, model_shape

EXAMPLE_NAMES = sorted(examples())


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_has_a_plan_that_fits(name, capsys):
    assert main(["plan", "--example", name]) == 0
    out = capsys.readouterr().out
    assert f"plan for {name}" in out and "rollout engines (vLLM)" in out and "learner (Megatron)" in out
    assert "DOES NOT FIT" not in out
    plan = make_plan(resolve(name, []), example=name)
    assert plan.fits and all(k.peak_gib > 0 for k in plan.gpu_kinds)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_layout_places_every_gpu_the_resource_spec_reserves(name):
    from trainer.roles import resource_spec

    cfg = resolve(name, [])
    plan = make_plan(cfg, example=name)
    spec = resource_spec(cfg)
    if spec.colocated:
        reserved = max(r.num_actors for r in spec.roles)  # bundle i: engine i and learner rank i, one GPU
    else:
        reserved = sum(math.ceil(r.num_actors * r.gpus_per_actor) for r in spec.roles)
    placed = sum(len(node) for node in plan.nodes) if cfg.cluster.use_gpu else 0
    assert placed == reserved
    assert all(len(node) <= cfg.cluster.gpus_per_node for node in plan.nodes)


def test_gpu_recipes_fill_the_nodes_they_say():
    gsm8k = make_plan(resolve("qwen25_gsm8k_r1_zero", []))
    assert [len(n) for n in gsm8k.nodes] == [8]  # one node of 8: 4 engines + TP=2 x DP=2
    math_ = make_plan(resolve("qwen25_math_r1_zero", []))
    assert [len(n) for n in math_.nodes] == [8, 8, 8, 8]  # 16 engines + TP=4 x DP=4
    assert math_.nodes[2][0].startswith("learner 0 (tp0 pp0 dp0)")


def test_plan_starts_nothing():
    import ray
    import torch

    assert main(["plan", "--example", "qwen25_math_r1_zero"]) == 0
    assert not ray.is_initialized()
    assert not torch.cuda.is_initialized()


# --- golden numbers, by hand -------------------------------------------------------------------------

SMALL = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128, "vocab_size": 100,
         "tie_word_embeddings": True}


def _small_cfg(tmp_path, *extra):
    model = tmp_path / "small"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMALL))
    return apply_overrides(resolve("qwen25_gsm8k_r1_zero", []), [
        f"model.path={model}", "model.max_prompt_tokens=8", "model.max_response_tokens=8",
        "rollout.max_model_len=16", "rollout.num_engines=1", "rollout.gpu_memory_utilization=0.5",
        "learner.tensor_parallel_size=1", "learner.data_parallel_size=2", "learner.sequences_per_microbatch=2",
        "algorithm.prompts_per_step=2", "algorithm.group_size=2", "algorithm.updates_per_step=1",
        "algorithm.kl_coef=0.01", "cluster.gpu_memory_gib=4", *extra]).validate()


def test_golden_small_model(tmp_path):
    plan = make_plan(_small_cfg(tmp_path))
    shape = plan.shape
    # layer: q 64x64 + k, v 2 x 64x32 + o 64x64 + qkv bias (64 + 32 + 32) + MLP 3 x 64x128 + norms 2 x 64
    assert shape.layer_params == 4096 + 4096 + 4096 + 128 + 24576 + 128 == 37120
    # 2 layers + embedding 100 x 64 (tied: no output layer) + final norm 64
    assert shape.num_params == 2 * 37120 + 6400 + 64 == 80704
    learner, engine = {k.name: k for k in plan.gpu_kinds}["learner rank GPU"], plan.gpu_kinds[0]
    lines = {what: gib * GIB for what, gib, _ in learner.lines}
    assert lines["policy weights"] == 80704 * 2                   # bf16, TP = PP = 1
    assert lines["gradients"] == 80704 * 4                        # fp32 buffer
    assert lines["optimizer state"] == 80704 * 12 / 2             # fp32 main + m + v, / DP = 2
    assert lines["reference weights"] == 80704 * 2
    # micro-batch: 2 sequences x (8 + 8) = 32 tokens. Per token and layer: 4h = 256, (2 x 2 + 2 x 1) x 32
    # = 192 for q, k, v and the attention output, 3 x 128 = 384 for the MLP: 832 elements of 2 bytes.
    # Logits: 32 tokens x 100 x (2 + 4) bytes = 19200.
    assert lines["activations (none recompute)"] == 32 * 2 * 832 * 2 + 19200 == 125696
    # Full recomputation: each layer's input (64) for 2 layers plus one layer recomputed.
    assert learner.lines[3][2].endswith("none 0.00 | selective 0.00 | full 0.00")
    from trainer.plan import learner_memory

    assert learner_memory(shape, plan.cfg).activations["full"] == 32 * (2 * 64 + 832) * 2 + 19200 == 80640
    # Peak: the reference phase (static + reference weights + a forward: 32 x 832 x 2 + 19200 = 72448)
    # beats training (static + 125696). Static: 161408 + 322816 + 484224 = 968448 bytes + the runtime.
    assert learner.peak_gib * GIB == pytest.approx(LEARNER_RUNTIME_GIB * GIB + 968448 + 161408 + 72448)
    # Engine: 0.5 x 4 GiB; weights 80704 x 2; activations 8192 tokens x (4 x 64 + 3 x 128) x 2 + 256 rows
    # of 100 fp32 logits; KV per token 2 x 2 layers x 1 kv head x 32 x 2 bytes = 256.
    elines = {what.strip(): gib * GIB for what, gib, _ in engine.lines}
    assert elines["vLLM budget"] == 2 * GIB
    assert elines["engine weights"] == 161408
    assert elines["engine activations"] == 8192 * 640 * 2 + 102400 == 10588160
    assert elines["KV cache"] == 2 * GIB - 161408 - 10588160
    assert "8346617 tokens" in engine.lines[3][2]                 # 2136734080 / 256
    assert plan.fits


def test_pipeline_and_tensor_parallel_divide_the_golden_numbers(tmp_path):
    plan = make_plan(_small_cfg(tmp_path, "learner.tensor_parallel_size=2", "learner.pipeline_parallel_size=2",
                                "learner.data_parallel_size=1", "rollout.num_engines=1"))
    learner = {k.name: k for k in plan.gpu_kinds}["learner rank GPU"]
    lines = {what: gib * GIB for what, gib, _ in learner.lines}
    # Heaviest stage: 1 layer + the (tied) embedding or output copy + final norm, over TP = 2.
    assert lines["policy weights"] == (37120 + 6400 + 64) // 2 * 2
    assert [len(n) for n in plan.nodes] == [5]


def test_overrides_work_with_plan(capsys):
    assert main(["plan", "--example", "qwen25_gsm8k_r1_zero", "--set", "learner.data_parallel_size=1",
                 "--set", "rollout.num_engines=2"]) == 0
    out = capsys.readouterr().out
    assert "rollout engines (vLLM)      2 actors" in out and "TP=2 x PP=1 x DP=1" in out
    assert main(["plan", "--example", "qwen25_gsm8k_r1_zero", "--set", "learner.lr=-1"]) == 2
    assert "learner.lr = -1.0 is out of range" in capsys.readouterr().err


def test_oversize_plan_is_refused_with_the_numbers(capsys):
    assert main(["plan", "--example", "qwen25_math_r1_zero", "--set", "cluster.gpu_memory_gib=24"]) == 1
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    err = captured.err
    assert "learner rank GPU: needs 43.9 GiB of 24 GiB per GPU" in err
    assert "--set cluster.gpu_memory_gib=44" in err


def test_engine_without_room_for_one_sequence_is_refused(capsys):
    assert main(["plan", "--example", "qwen25_math_r1_zero", "--set", "rollout.gpu_memory_utilization=0.18"]) == 1
    err = capsys.readouterr().err
    assert "rollout engine GPU: the KV cache holds 0 tokens, fewer than one sequence of " \
           "rollout.max_model_len = 4096" in err


def test_colocated_gpu_holds_the_larger_phase():
    cfg = resolve("qwen25_gsm8k_r1_zero", ["cluster.colocate=true"])
    (kind,) = make_plan(cfg).gpu_kinds
    phases = {what: gib for what, gib, _ in kind.lines if what.startswith("phase")}
    assert kind.peak_gib == max(phases.values())
    assert phases["phase: engine generates, learner on host"] == pytest.approx(0.85 * 80 + LEARNER_RUNTIME_GIB)
    assert kind.count == 4


def test_reference_on_its_own_ranks_gets_gpus():
    cfg = resolve("qwen25_gsm8k_r1_zero", ["learner.reference_colocated=false", "rollout.num_engines=2"])
    plan = make_plan(cfg)
    assert [k.name for k in plan.gpu_kinds] == ["rollout engine GPU", "learner rank GPU", "reference rank GPU"]
    assert sum(len(n) for n in plan.nodes) == 2 + 4 + 4
    assert not any(what == "reference weights" for what, _, _ in plan.gpu_kinds[1].lines)


def test_tensor_parallel_engines_never_straddle_a_node():
    cfg = resolve("qwen25_gsm8k_r1_zero", ["rollout.tensor_parallel_size=2", "rollout.num_engines=3",
                                           "cluster.gpus_per_node=5"])
    nodes = make_plan(cfg).nodes
    for node in nodes:
        engines = [g.split(" tp")[0] for g in node if g.startswith("engine")]
        assert all(engines.count(e) == 2 for e in engines)   # both TP ranks of an engine on this node
    assert [len(n) for n in nodes] == [4, 5, 1]  # engine 2 does not fit the 1 GPU left on node 0


def test_shape_from_config_json_or_known_table(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    shape, source = model_shape(str(tmp_path))
    assert shape == ModelShape(64, 2, 2, 1, 32, 128, 100, True) and source.endswith("config.json")
    shape, source = model_shape("/nowhere/Qwen2.5-7B")
    assert shape is KNOWN_SHAPES["Qwen2.5-7B"] and "known shape" in source
    # published sizes: Qwen2.5-1.5B has 1.54B parameters, Qwen2.5-7B 7.62B
    assert round(KNOWN_SHAPES["Qwen2.5-1.5B"].num_params / 1e9, 2) == 1.54
    assert round(KNOWN_SHAPES["Qwen2.5-7B"].num_params / 1e9, 2) == 7.62


def test_model_path_without_a_known_name_falls_back_to_the_example():
    shape, source = model_shape("/nowhere/hf", "tiny_cpu_r1_rl")
    assert shape is KNOWN_SHAPES["tiny-qwen2"] and "example 'tiny_cpu_r1_rl'" in source
    plan = make_plan(resolve("qwen25_math_r1_zero", ["model.path=/nowhere/MyModel"]), example="qwen25_math_r1_zero")
    assert plan.shape is KNOWN_SHAPES["Qwen2.5-7B"]


def test_unknown_model_without_config_is_an_error_naming_the_table(monkeypatch, capsys):
    import examples.configs
    from trainer.config import ModelConfig, TrainConfig

    monkeypatch.setitem(examples.configs.EXAMPLES, "mystery", lambda: TrainConfig(model=ModelConfig(path="/x/MyModel")))
    assert main(["plan", "--example", "mystery"]) == 2
    err = capsys.readouterr().err
    assert "/x/MyModel/config.json not found" in err and "Qwen2.5-7B" in err and "example 'mystery'" in err


def test_token_budget_and_recomputation_settings_change_the_activations(tmp_path, capsys):
    from trainer.plan import learner_memory

    cfg = _small_cfg(tmp_path, "learner.tokens_per_microbatch=20")
    lm = learner_memory(make_plan(cfg).shape, cfg)
    # min(2 x 16, max(20, 16)) = 20 tokens: 20 x 2 layers x 832 x 2 bytes + 20 x 100 x 6 bytes of logits
    assert lm.microbatch_tokens == 20 and lm.activations["none"] == 66560 + 12000
    none = make_plan(resolve("qwen25_math_r1_zero", []))
    full = make_plan(resolve("qwen25_math_r1_zero", ["learner.activation_recompute=full"]))
    assert full.recompute == "full" and full.gpu_kinds[1].peak_gib < none.gpu_kinds[1].peak_gib
    assert main(["plan", "--example", "qwen25_math_r1_zero", "--set", "learner.activation_recompute=full"]) == 0
    assert "learner activations with recompute=full" in capsys.readouterr().out


# --- the R1 stages beyond GRPO: an SFT learner alone, rejection sampling's engines alone ---------------


def _stage_examples():
    from examples.configs import REJECTION_EXAMPLES, SFT_EXAMPLES

    return [(n, "sft") for n in sorted(SFT_EXAMPLES)] + [(n, "reject") for n in sorted(REJECTION_EXAMPLES)]


@pytest.mark.parametrize(("name", "stage"), _stage_examples())
def test_every_stage_example_has_a_plan(name, stage, capsys):
    code = main(["plan", "--example", name])
    out = capsys.readouterr().out
    assert code in (0, 1) and f"plan for {name}" in out
    assert ("learner (Megatron)" in out) == (stage == "sft")
    assert ("rollout engines (vLLM)" in out) == (stage == "reject")
    assert "reward actors" in out or stage == "sft"


def test_sft_plan_golden(tmp_path):
    from examples.configs import SFT_EXAMPLES
    from trainer.plan import learner_memory, sft_view

    sft = apply_overrides(SFT_EXAMPLES["tiny_cpu_sft"](), [f"model.path={_small_cfg(tmp_path).model.path}",
                                                         "tokens_per_microbatch=40", "data.max_sample_tokens=16",
                                                         "learner.sequences_per_microbatch=4"]).validate()
    view = sft_view(sft)
    plan = make_plan(view, stage="sft")
    assert [r.role for r in plan.roles] == ["learner (Megatron)"] and len(plan.gpu_kinds) == 1
    lm = learner_memory(plan.shape, view)
    # min(4 x 16, max(40, 16)) = 40 tokens. Per token and layer 832 elements plus, on CPU (unfused attention),
    # 2 heads x 16 softmax probabilities; 4 bytes each (fp32). Logits: 40 x 100 x (4 + 4) bytes.
    assert lm.microbatch_tokens == 40 and lm.activations["none"] == 40 * 2 * (832 + 32) * 4 + 40 * 100 * 8
    assert lm.activations["selective"] == 40 * 2 * 832 * 4 + 40 * 100 * 8    # probabilities recomputed
    assert lm.reference == 0 and lm.optimizer == 80704 * 8  # fp32 model: Adam m, v only, DP = 1
