"""Every learner setting reaches the learner, in every entry point that starts one.

GRPO's policy and reference (`trainer.system.start_learner`) and SFT (`trainer.sft.start_sft_learner`)
build their learner ranks through one function, `start_learner_group`. These tests give every field of
`LearnerConfig` (and the cluster fields the learner uses) a value that is not its default, record what
reaches `LearnerGroup`, and check each value arrived: a setting an entry point dropped would silently
be ignored (SFT once dropped `activation_recompute`, `verb_timeout_s` and `learner_node_resource`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import trainer.system
from trainer.config import ClusterConfig, LearnerConfig, SFTConfig, TrainConfig

NON_DEFAULT = LearnerConfig(
    tensor_parallel_size=2, pipeline_parallel_size=3, data_parallel_size=5, lr=3e-4, lr_warmup_steps=7,
    lr_schedule="cosine", weight_decay=0.05, adam_beta1=0.8, adam_beta2=0.95, grad_clip=0.7,
    sequences_per_microbatch=11, tokens_per_microbatch=999, activation_recompute="selective",
    reference_colocated=False, verb_timeout_s=1234.0)
"""A value other than the default for every field (checked below, so a new field must be added here)."""
CLUSTER = ClusterConfig(cpus_per_actor=0.25, learner_node_resource="learner_node")


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
        "tokens_per_microbatch": group["tokens_per_microbatch"], "activation_recompute": group["recompute"],
        "verb_timeout_s": group["timeout_s"],
        "reference_colocated": lc.reference_colocated,  # decides whether a reference group starts, tested below
    }


@pytest.fixture()
def groups(monkeypatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(trainer.system, "LearnerGroup", lambda **kwargs: made.append(kwargs) or kwargs)
    return made


def test_the_non_default_config_differs_from_the_default_in_every_field():
    default = LearnerConfig()
    same = [f.name for f in dataclasses.fields(LearnerConfig) if getattr(NON_DEFAULT, f.name) == getattr(default, f.name)]
    assert same == [], f"give these fields a non-default value in NON_DEFAULT: {same}"


@pytest.mark.parametrize("role", ["policy", "reference"])
def test_grpo_learners_get_every_setting(groups, role):
    cfg = dataclasses.replace(TrainConfig(), learner=NON_DEFAULT, cluster=CLUSTER)
    trainer.system.start_learner(cfg, role=role)
    [group] = groups
    assert received(NON_DEFAULT, group) == dataclasses.asdict(NON_DEFAULT)
    assert (group["optimizer"] is None) == (role == "reference")
    assert group["cpus_per_actor"] == 0.25 and group["node_resource"] == "learner_node"
    assert group["role"] == role


def test_sft_learner_gets_every_setting(groups, tmp_path):
    lc = dataclasses.replace(NON_DEFAULT, tokens_per_microbatch=0)
    cfg = dataclasses.replace(SFTConfig(), learner=lc, cluster=CLUSTER, tokens_per_microbatch=2048,
                              model=dataclasses.replace(SFTConfig().model, path=str(tmp_path)))
    from trainer.sft import start_sft_learner

    start_sft_learner(cfg, optimizer_steps=17)
    [group] = groups
    assert received(lc, group) == dataclasses.asdict(lc) | {"tokens_per_microbatch": 2048}
    assert group["optimizer"].total_steps == 17
    assert group["cpus_per_actor"] == 0.25 and group["node_resource"] == "learner_node"


def test_sft_refuses_the_grpo_token_budget_it_would_ignore():
    from trainer.config import ConfigError

    cfg = dataclasses.replace(SFTConfig(), learner=dataclasses.replace(LearnerConfig(), tokens_per_microbatch=512))
    with pytest.raises(ConfigError, match="learner.tokens_per_microbatch = 512: SFT packs"):
        cfg.validate()
