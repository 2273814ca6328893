"""The one builder (`trainer.roles` decides, `actors.launch` starts): each entry point's plan starts only the
roles its row of ENTRY_ROLES names, and the builder owns exactly what it started, Ray included. Stand-ins
take the place of Ray, placement and the groups, so nothing starts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import actors.launch
from cluster.placement import Placed
from trainer.config import AlgorithmConfig, LearnerConfig, TrainConfig
from trainer.roles import ENTRY_ROLES, plan_system, resource_spec


def grpo_config(**changes: Any) -> TrainConfig:
    cfg = TrainConfig()
    return replace(cfg, algorithm=replace(AlgorithmConfig(), kl_coef=0.01),
                   learner=replace(LearnerConfig(), reference_colocated=False),
                   model=replace(cfg.model, path="Qwen2.5-0.5B"), **changes)


def started_roles(plan: actors.launch.SystemPlan) -> set[str]:
    names = {"engines": "rollout", "learner": "learner", "reference": "reference", "judge": "judge", "rewards": "reward"}
    return {role for attr, role in names.items() if getattr(plan, attr) is not None}


@pytest.mark.parametrize("entry", sorted(ENTRY_ROLES))
def test_a_plan_starts_only_the_roles_of_its_entry(entry):
    cfg = grpo_config()
    cfg = replace(cfg, reward=replace(cfg.reward, routes=("trivia:judge",),
                                      judge=replace(cfg.reward.judge, model_path="/models/judge")))
    plan = plan_system(cfg, entry)
    assert started_roles(plan) == set(ENTRY_ROLES[entry])  # every optional role is asked for by this config
    assert {r.name for r in plan.resources.roles} == set(ENTRY_ROLES[entry]) & {"rollout", "learner", "judge"}
    assert plan.resources == resource_spec(cfg, entry)  # what `python -m trainer plan` lays out
    assert (plan.sync is not None) == ({"rollout", "learner"} <= set(ENTRY_ROLES[entry]))


def test_optional_roles_start_only_when_the_config_needs_them():
    plan = plan_system(replace(grpo_config(), algorithm=AlgorithmConfig()), "grpo")  # no KL term, no judge route
    assert started_roles(plan) == {"rollout", "learner", "reward"}


class Part:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name, self.engine_actors = log, name, []

    def shutdown(self) -> None:
        self.log.append(f"shutdown {self.name}")

    def __getattr__(self, verb: str) -> Any:
        return lambda *args, **kwargs: None


@pytest.fixture()
def log(monkeypatch) -> list[str]:
    """What the builder did, in order; LearnerGroup fails when the log holds 'fail learner'."""
    events: list[str] = []

    class OneNode:
        def __init__(self, spec: Any) -> None:
            self.spec = spec
            events.append("placement")

        def placed(self, locate: Any = (), timeout_s: float = 0.0) -> Placed:
            roles = self.spec.roles
            return Placed(options={r.name: [{}] * r.num_actors for r in roles},
                          bundle_indices={r.name: None for r in roles},
                          nodes={role: ["node"] * self.spec.role(role).num_actors for role in locate})

        def run_on(self, role: str, fn: Any, timeout_s: float = 0.0) -> list[Any]:
            return [2**40]

        def remove(self) -> None:
            events.append("remove placement")

    def learner(**kwargs: Any) -> Part:
        if "fail learner" in events:
            raise RuntimeError("the learner did not start")
        events.append(f"start {kwargs['role']}")
        return Part(events, kwargs["role"])

    def group(name: str) -> Any:
        def start(*args: Any, **kwargs: Any) -> Part:
            events.append(f"start {name}")
            return Part(events, name)
        return start

    monkeypatch.setattr(actors.launch, "LearnerGroup", learner)
    monkeypatch.setattr(actors.launch, "EngineGroup", group("engines"))
    monkeypatch.setattr(actors.launch, "RewardGroup", group("rewards"))
    monkeypatch.setattr(actors.launch, "WeightSync", group("weight sync"))
    monkeypatch.setattr(actors.launch, "start_engine", lambda *args: None)
    monkeypatch.setattr(actors.launch, "Placement", OneNode)
    monkeypatch.setattr(actors.launch, "init_ray", lambda *args, **kwargs: events.append("init_ray"))
    monkeypatch.setattr(actors.launch, "shutdown_ray", lambda: events.append("shutdown_ray"))
    monkeypatch.setattr(actors.launch, "check_shared_dir", lambda *args, **kwargs: events.append("probe output_dir"))
    return events


def test_the_builder_shuts_down_exactly_what_it_started_then_ray(log):
    started = actors.launch.start_system(plan_system(grpo_config(), "grpo"))
    assert log == ["init_ray", "placement", "probe output_dir", "start engines", "start policy", "start reference",
                   "start weight sync", "start rewards"]
    log.clear()
    started.shutdown()
    started.shutdown()  # twice: nothing left to stop
    assert log == ["shutdown engines", "shutdown policy", "shutdown reference", "shutdown rewards",
                   "remove placement", "shutdown_ray"]


def test_a_start_that_fails_stops_what_had_started(log):
    log.append("fail learner")
    with pytest.raises(RuntimeError, match="the learner did not start"):
        actors.launch.start_system(plan_system(grpo_config(), "grpo"))
    assert log[-3:] == ["shutdown engines", "remove placement", "shutdown_ray"]
    assert "start rewards" not in log
