"""Every learner setting reaches the learner, in every entry point that starts one.

GRPO (`python -m trainer train`: `System.build`), SFT (`python -m trainer sft`: `train_sft`) and the pipeline's
grpo and sft stages start their learner ranks through the one builder (`trainer.roles` decides,
`actors.launch` starts). These tests give every field of `LearnerConfig` (and the cluster fields the learner
reads) a value that is not its default, run each entry point's own build path with a recording stand-in
where the builder looks up `LearnerGroup` (and stand-ins for Ray, placement and the other roles, so nothing
starts), and check each value arrived: a setting an entry point dropped would silently be ignored (SFT once
dropped `activation_recompute`, `verb_timeout_s` and `learner_node_resource`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

import actors.launch
from cluster.placement import Placed
from trainer.config import (
    AlgorithmConfig,
    ClusterConfig,
    LearnerConfig,
    SFTConfig,
    SFTDataConfig,
    TrainConfig,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("GRPO_RAY_TINY_MODEL", ROOT / "artifacts" / "tiny-qwen2"))
"""A model directory with a tokenizer and config.json (the entry points read both before they start roles)."""

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").exists(),
                                reason="run `python -m examples.build_tiny` (make test does) first")

NON_DEFAULT = LearnerConfig(
    tensor_parallel_size=2, pipeline_parallel_size=3, data_parallel_size=5, lr=3e-4, lr_warmup_steps=7,
    lr_schedule="cosine", weight_decay=0.05, adam_beta1=0.8, adam_beta2=0.95, grad_clip=0.7,
    sequences_per_microbatch=11, tokens_per_microbatch=999, pack_sequences=True, activation_recompute="selective",
    reference_colocated=False, verb_timeout_s=1234.0)
"""A value other than the default for every field (checked below, so a new field must be added here)."""
CLUSTER = ClusterConfig(use_gpu=True, cpus_per_actor=0.25, learner_node_resource="learner_node")
"""The cluster fields the learner reads, none at its default."""


def received(lc: LearnerConfig, group: dict[str, Any]) -> dict[str, Any]:
    """Where each LearnerConfig field must show up in the LearnerGroup's arguments (None: not the learner's)."""
    opt = group["optimizer"]
    return {
        "tensor_parallel_size": group["tp"], "pipeline_parallel_size": group["pp"], "data_parallel_size": group["dp"],
        "lr": opt.lr if opt else lc.lr, "lr_warmup_steps": opt.warmup_steps if opt else lc.lr_warmup_steps,
        "lr_schedule": opt.schedule if opt else lc.lr_schedule,
        "weight_decay": opt.weight_decay if opt else lc.weight_decay,
        "adam_beta1": opt.beta1 if opt else lc.adam_beta1, "adam_beta2": opt.beta2 if opt else lc.adam_beta2,
        "grad_clip": opt.grad_clip if opt else lc.grad_clip,
        "sequences_per_microbatch": group["sequences_per_microbatch"],
        "tokens_per_microbatch": group["tokens_per_microbatch"], "pack_sequences": group["pack_sequences"],
        "activation_recompute": group["recompute"],
        "verb_timeout_s": group["timeout_s"],
        "reference_colocated": lc.reference_colocated,  # decides whether a reference group starts, tested below
    }


def assert_cluster_fields(group: dict[str, Any]) -> None:
    assert group["use_gpu"] is True and group["cpus_per_actor"] == 0.25 and group["node_resource"] == "learner_node"


class LearnerStarted(Exception):
    """Raised by the stand-in once the policy's arguments are recorded, where the rest of the run would train."""


class Part:
    """Stand-in for a started group: every verb does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.engine_actors: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class OneNode:
    """Stand-in for cluster.placement.Placement: every bundle on one node, with room in /dev/shm."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def placed(self, locate: Any = (), timeout_s: float = 0.0) -> Placed:
        roles = self.spec.roles
        return Placed(options={r.name: [{"role": r.name, "index": i} for i in range(r.num_actors)] for r in roles},
                      bundle_indices={r.name: None for r in roles},
                      nodes={role: ["node"] * self.spec.role(role).num_actors for role in locate})

    def run_on(self, role: str, fn: Any, timeout_s: float = 0.0) -> list[Any]:
        return [2**40] * self.spec.role(role).num_actors

    def remove(self) -> None:
        pass


class Recorder(list):
    """The arguments of every LearnerGroup the builder starts, in order."""

    stop_at_policy = False
    """Raise LearnerStarted once the policy's arguments are recorded (SFT trains right after)."""


@pytest.fixture()
def groups(monkeypatch) -> Recorder:
    """Records the builder's LearnerGroups; nothing starts (no Ray, no actors)."""
    made = Recorder()

    def learner_group(**kwargs: Any) -> Part:
        made.append(kwargs)
        if kwargs["role"] == "policy" and made.stop_at_policy:
            raise LearnerStarted()
        return Part(**kwargs)

    monkeypatch.setattr(actors.launch, "LearnerGroup", learner_group)
    for name in ("EngineGroup", "RewardGroup", "WeightSync"):
        monkeypatch.setattr(actors.launch, name, Part)
    monkeypatch.setattr(actors.launch, "start_engine", lambda *args: Part())
    monkeypatch.setattr(actors.launch, "Placement", OneNode)
    monkeypatch.setattr(actors.launch, "init_ray", lambda *args, **kwargs: "")
    monkeypatch.setattr(actors.launch, "shutdown_ray", lambda: None)
    monkeypatch.setattr(actors.launch, "check_shared_dir", lambda *args, **kwargs: [])
    return made


def grpo_config(**changes: Any) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), learner=NON_DEFAULT, cluster=CLUSTER,
                               algorithm=dataclasses.replace(AlgorithmConfig(), kl_coef=0.01),
                               model=dataclasses.replace(TrainConfig().model, path=str(MODEL)), **changes)


def sft_config(tmp_path: Path, base: SFTConfig | None = None) -> SFTConfig:
    """`base` (default SFTConfig()) with every learner setting off its default, on 4 samples, 17 epochs
    of one step each."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1", "response": str(i + 1)}) + "\n" for i in range(4)))
    base = base or SFTConfig()
    return dataclasses.replace(
        base, learner=dataclasses.replace(NON_DEFAULT, tokens_per_microbatch=0), cluster=CLUSTER,
        tokens_per_microbatch=2048, output_dir=str(tmp_path / "runs"), epochs=17, max_steps=0, samples_per_step=8,
        resume=False, model=dataclasses.replace(base.model, path=str(MODEL)),
        data=dataclasses.replace(base.data if base.data else SFTDataConfig(), train_path=str(data),
                                 valid_path=str(data)))


def test_the_non_default_config_differs_from_the_default_in_every_field():
    default = LearnerConfig()
    same = [f.name for f in dataclasses.fields(LearnerConfig) if getattr(NON_DEFAULT, f.name) == getattr(default, f.name)]
    assert same == [], f"give these fields a non-default value in NON_DEFAULT: {same}"
    cluster = ClusterConfig()
    assert (CLUSTER.use_gpu, CLUSTER.cpus_per_actor, CLUSTER.learner_node_resource) != \
        (cluster.use_gpu, cluster.cpus_per_actor, cluster.learner_node_resource)


def check_grpo_learners(cfg: TrainConfig, made: Recorder) -> None:
    policy, reference = made
    for role, group in (("policy", policy), ("reference", reference)):
        assert received(NON_DEFAULT, group) == dataclasses.asdict(NON_DEFAULT), role
        assert (group["optimizer"] is None) == (role == "reference")
        assert_cluster_fields(group)
        assert group["role"] == role
    a = cfg.algorithm
    assert policy["optimizer"].total_steps == cfg.total_steps * a.updates_per_step * a.epochs_per_step
    assert policy["placement"](1) == {"role": "learner", "index": 1} and reference["placement"] is None
    assert policy["temperature"] == cfg.rollout.sampling.temperature


def test_grpo_learners_get_every_setting(groups):
    from trainer.system import System

    cfg = grpo_config(total_steps=13)
    system = System.build(cfg)  # what `python -m trainer train` runs (trainer.controller.Run.start)
    check_grpo_learners(cfg, groups)
    assert system.learner is not None and system.reference is not None
    system.shutdown()


def test_sft_learner_gets_every_setting(groups, tmp_path):
    from trainer.sft import train_sft

    cfg = sft_config(tmp_path)
    groups.stop_at_policy = True
    with pytest.raises(LearnerStarted):
        train_sft(cfg)  # what `python -m trainer sft` runs
    [group] = groups
    assert received(cfg.learner, group) == dataclasses.asdict(cfg.learner) | {"tokens_per_microbatch": 2048}
    assert group["optimizer"].total_steps == 17
    assert_cluster_fields(group)
    assert group["temperature"] == 1.0 and group["role"] == "policy"


def test_pipeline_stages_get_every_setting(groups, tmp_path):
    """The learner stages of the R1 pipeline, each through the runner the pipeline calls for its kind."""
    from examples.configs import PIPELINE_EXAMPLES
    from trainer.pipeline import RUNNERS

    stages = [s for s in PIPELINE_EXAMPLES["r1_tiny"](quick=True).stages if s.kind in ("sft", "grpo")]
    assert {s.kind for s in stages} == {"sft", "grpo"}
    groups.stop_at_policy = True
    for stage in stages:
        groups.clear()
        if stage.kind == "sft":
            cfg = sft_config(tmp_path / stage.name, stage.config)
            with pytest.raises(LearnerStarted):
                RUNNERS["sft"](cfg)
            [group] = groups
            assert received(cfg.learner, group) == dataclasses.asdict(cfg.learner) | {"tokens_per_microbatch": 2048}
        else:
            from trainer.system import System

            # The grpo runner trains once its system is built; its build is `System.build` (as above).
            cfg = dataclasses.replace(stage.config, learner=NON_DEFAULT, cluster=CLUSTER,
                                      algorithm=dataclasses.replace(stage.config.algorithm, kl_coef=0.01),
                                      model=dataclasses.replace(stage.config.model, path=str(MODEL)))
            with pytest.raises(LearnerStarted):
                System.build(cfg)
            [group] = groups
            assert received(NON_DEFAULT, group) == dataclasses.asdict(NON_DEFAULT), stage.name
        assert_cluster_fields(group)


def test_sft_refuses_the_grpo_token_budget_it_would_ignore():
    from trainer.config import ConfigError

    cfg = dataclasses.replace(SFTConfig(), learner=dataclasses.replace(LearnerConfig(), tokens_per_microbatch=512))
    with pytest.raises(ConfigError, match="learner.tokens_per_microbatch = 512: SFT packs"):
        cfg.validate()
