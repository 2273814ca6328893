"""The R1 pipeline's bookkeeping with fake stages (stamps, resume, reruns, the table), the base's marker
token on the real tiny model, and the plan of every pipeline example. Fast: nothing is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.pipeline import (
    DeriveConfig,
    PipelineConfig,
    PipelineEvalConfig,
    Stage,
    run_pipeline,
    stage_output,
)


def _pipeline(out: Path, *, rl_steps: int = 3) -> PipelineConfig:
    from trainer.config import RejectionConfig, SFTConfig, TrainConfig

    o = str(out)
    stages = (
        Stage("base", "derive", DeriveConfig(name="base", model_path="artifacts/tiny-qwen2", output_dir=o),
              template="r1_zero"),
        Stage("cold_start", "sft", SFTConfig(name="cold_start", output_dir=o), template="r1_zero_readable"),
        Stage("rl", "grpo", TrainConfig(name="rl", output_dir=o, total_steps=rl_steps), template="r1_zero_readable"),
        Stage("reject", "reject", RejectionConfig(name="reject", output_dir=o)),
        Stage("distill", "sft", SFTConfig(name="distill", output_dir=o, epochs=3), template="r1_zero_readable"),
        Stage("student_grpo", "grpo", TrainConfig(name="student_grpo", output_dir=o), template="r1_zero"),
    )
    return PipelineConfig(name="fake", output_dir=o, stages=stages, eval=PipelineEvalConfig(path="unused"),
                          student=("base", "distill", "student_grpo"))


class FakeStages:
    """Runners that write the stage's output file and count calls; `fail` names a stage that raises once."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[str] = []
        self.fail = fail

    def runner(self, kind: str):
        def run(cfg) -> dict:
            if cfg.name == self.fail:
                self.fail = ""
                raise RuntimeError(f"stage {cfg.name} broke")
            self.calls.append(cfg.name)
            out = Path(stage_output(Stage(cfg.name, kind, cfg)))  # type: ignore[arg-type]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(f"{cfg.name} output {len(self.calls)}")
            key = "data" if kind == "reject" else "model"
            extra = {"report": {"prompts": 2, "samples": 16, "kept": 3, "dropped": {"incorrect": 13}}} \
                if kind == "reject" else {"sequences": 96}
            return {key: str(out), **extra}
        return run

    def runners(self) -> dict:
        return {k: self.runner(k) for k in ("derive", "sft", "grpo", "reject")}


def _evaluator(calls: list[str]):
    def evaluate(model: str, template: str, cfg: PipelineEvalConfig) -> dict[str, float]:
        calls.append(model)
        score = {"base": 0.1, "distill": 0.5}.get(Path(model).parent.name, 0.3)
        return {"pass@1": score, "cons@4": score + 0.1, "response_tokens": 40.0}
    return evaluate


def test_first_run_runs_every_stage_and_writes_the_table(tmp_path, capsys):
    fakes, evals = FakeStages(), []
    result = run_pipeline(_pipeline(tmp_path), runners=fakes.runners(), evaluator=_evaluator(evals))
    names = [s.name for s in _pipeline(tmp_path).stages]
    assert fakes.calls == names and result.ran == names
    for name in names:
        stamp = json.loads((tmp_path / name / "stage.json").read_text())
        assert Path(stamp.get("model") or stamp["data"]).exists() and len(stamp["hash"]) == 64
    table = json.loads((tmp_path / "pipeline.json").read_text())
    assert [r["model"] for r in table["table"]] == ["base", "cold_start", "rl", "distill", "student_grpo"]
    assert table["rejection"]["reject"]["kept"] == 3
    assert table["student"]["distilled_minus_base"] == pytest.approx(0.4)
    assert table["student"]["distilled_sequences"] == table["student"]["grpo_sequences"] == 96
    printed = capsys.readouterr().out
    assert "kept 3 of 16 samples" in printed and "distilled - base = +0.400" in printed


def test_rerun_resumes_and_a_changed_stage_reruns_itself_and_the_later_ones(tmp_path):
    evals: list[str] = []
    run_pipeline(_pipeline(tmp_path), runners=FakeStages().runners(), evaluator=_evaluator(evals))
    first_evals = len(evals)

    again = FakeStages()
    assert run_pipeline(_pipeline(tmp_path), runners=again.runners(), evaluator=_evaluator(evals)).ran == []
    assert again.calls == [] and len(evals) == first_evals          # evaluations are stamped too

    changed = FakeStages()
    run_pipeline(_pipeline(tmp_path, rl_steps=5), runners=changed.runners(), evaluator=_evaluator(evals))
    assert changed.calls == ["rl", "reject", "distill", "student_grpo"]

    (tmp_path / "reject" / "sft.jsonl").unlink()                      # an output lost: rerun from there
    lost = FakeStages()
    run_pipeline(_pipeline(tmp_path, rl_steps=5), runners=lost.runners(), evaluator=_evaluator(evals))
    assert lost.calls == ["reject", "distill", "student_grpo"]


def test_a_failed_stage_leaves_the_earlier_stamps_and_the_rerun_starts_there(tmp_path):
    broken = FakeStages(fail="reject")
    with pytest.raises(RuntimeError, match="stage reject broke"):
        run_pipeline(_pipeline(tmp_path), runners=broken.runners(), evaluator=_evaluator([]))
    assert broken.calls == ["base", "cold_start", "rl"] and not (tmp_path / "reject" / "stage.json").exists()
    rerun = FakeStages()
    run_pipeline(_pipeline(tmp_path), runners=rerun.runners(), evaluator=_evaluator([]))
    assert rerun.calls == ["reject", "distill", "student_grpo"]


def test_derived_base_carries_the_marker_as_one_token_where_the_base_saw_think(tmp_path):
    """The cold start's fix: the readable response starts exactly where the base's pretraining responses did."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.pipeline import derive_model
    from trainer.templates import COLD_START_MARKER, r1_zero, r1_zero_readable

    base = "artifacts/tiny-qwen2"
    cfg = DeriveConfig(name="student", model_path=base, output_dir=str(tmp_path), tokens=(COLD_START_MARKER,),
                       init_from=("<think>",), keep_every_layer=2)
    record = derive_model(cfg)
    tok = AutoTokenizer.from_pretrained(record["model"])
    marker = tok.convert_tokens_to_ids(COLD_START_MARKER)
    think = tok.convert_tokens_to_ids("<think>")
    zero = tok(r1_zero("What is 12+34?"))["input_ids"]
    readable = tok(r1_zero_readable("What is 12+34?"))["input_ids"] + tok(COLD_START_MARKER + "4+2")["input_ids"]
    assert readable[:len(zero)] == zero[:-1] + [marker] and zero[-1] == think
    assert tok.decode([marker]) == COLD_START_MARKER                 # decoding keeps it in the text
    teacher = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(record["model"], dtype=torch.float32)
    emb = student.get_input_embeddings().weight
    assert torch.equal(emb[marker], emb[think]) and emb.shape[0] == len(tok) == teacher.config.vocab_size + 1
    assert student.config.num_hidden_layers == teacher.config.num_hidden_layers // 2 == record["layers"]
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)


def test_derive_refuses_an_unknown_source_token(tmp_path):
    from trainer.pipeline import derive_model

    with pytest.raises(ValueError, match="not tokens of"):
        derive_model(DeriveConfig(name="x", model_path="artifacts/tiny-qwen2", output_dir=str(tmp_path),
                                  tokens=("<new>",), init_from=("<no-such-token>",)))


@pytest.mark.parametrize("name", ["r1_tiny", "r1_qwen25_7b"])
def test_every_pipeline_example_has_a_plan_that_fits(name, capsys):
    from trainer.__main__ import main

    assert main(["plan", "--example", name]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("plan for ") >= 5


def test_quick_variant_keeps_the_stage_list_and_the_student_comparison_fair():
    from examples.configs import r1_tiny

    full, quick = r1_tiny(), r1_tiny(quick=True)
    assert [s.name for s in full.stages] == [s.name for s in quick.stages]
    for cfg in (full, quick):
        by = {s.name: s.config for s in cfg.stages}
        distilled = by["distill"].max_steps * by["distill"].samples_per_step
        grpo = by["student_grpo"].total_steps * by["student_grpo"].algorithm.prompts_per_step * \
            by["student_grpo"].algorithm.group_size
        assert distilled == grpo
        assert by["all_scenarios"].reward.routes                  # rewards chosen per data source
        assert by["rl"].reward.format_weight > 0 and by["rl"].reward.language_weight > 0


def test_a_derive_stage_reruns_when_the_model_it_copies_changes(tmp_path):
    """The student is installed from shipped files under a fixed path: new files under that path rerun it."""
    from trainer.config import SFTConfig

    model = tmp_path / "student_model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first build")
    o = str(tmp_path / "run")
    cfg = PipelineConfig(name="fake", output_dir=o, eval=PipelineEvalConfig(path="unused"), stages=(
        Stage("student", "derive", DeriveConfig(name="student", model_path=str(model), output_dir=o)),
        Stage("distill", "sft", SFTConfig(name="distill", output_dir=o))))
    run_pipeline(cfg, runners=FakeStages().runners(), evaluator=_evaluator([]))
    same = FakeStages()
    run_pipeline(cfg, runners=same.runners(), evaluator=_evaluator([]))
    assert same.calls == []
    (model / "model.safetensors").write_bytes(b"second build")
    rebuilt = FakeStages()
    run_pipeline(cfg, runners=rebuilt.runners(), evaluator=_evaluator([]))
    assert rebuilt.calls == ["student", "distill"]


def test_the_stages_share_one_ray_started_before_the_first_that_needs_it(tmp_path, monkeypatch):
    """The real runners run in one Ray: started after the derive stage, before the first stage that uses Ray,
    stopped once at the end (the stages' own init/shutdown nest inside it); fake runners get none."""
    import cluster.ray_init
    from trainer.pipeline import SharedRay

    events: list[str] = []
    monkeypatch.setattr(cluster.ray_init, "init_ray", lambda address, num_cpus=None: events.append(f"init {address}"))
    monkeypatch.setattr(cluster.ray_init, "shutdown_ray", lambda: events.append("shutdown"))
    stages = _pipeline(tmp_path).stages
    with SharedRay(stages) as ray:
        for stage in stages:
            ray.before(stage)
            events.append(stage.name)
    assert events == ["base", "init local", "cold_start", "rl", "reject", "distill", "student_grpo", "shutdown"]

    events.clear()
    run_pipeline(_pipeline(tmp_path / "fakes"), runners=FakeStages().runners(), evaluator=_evaluator([]))
    assert events == []


def test_one_ray_refuses_stages_on_different_clusters(tmp_path):
    from dataclasses import replace

    from trainer.config import ClusterConfig
    from trainer.pipeline import SharedRay

    stages = list(_pipeline(tmp_path).stages)
    stages[2] = replace(stages[2], config=replace(stages[2].config, cluster=ClusterConfig(address="auto")))
    with pytest.raises(ValueError, match="one Ray"):
        SharedRay(stages)


def test_a_stage_whose_config_is_not_its_kinds_is_refused_by_name(tmp_path):
    from trainer.config import SFTConfig
    from trainer.pipeline import RUNNERS

    with pytest.raises(TypeError, match="stage cold_start: derive_model takes a DeriveConfig, got a SFTConfig"):
        RUNNERS["derive"](SFTConfig(name="cold_start", output_dir=str(tmp_path)))
