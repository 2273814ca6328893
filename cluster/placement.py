"""Where each role's actors run: a resource spec per role, turned into placement groups, so a role's
actors are reserved together or not at all.

Disaggregated (default): one placement group per role, one bundle per actor. Colocated: the roles
named in `ResourceSpec.colocated` (rollout engines and learner ranks) share one placement group;
bundle i holds actor i of each of them, and each takes its own share of the bundle's device (verl's
and OpenRLHF's "hybrid engine" layout). The engines sleep while the learner trains.

On one CPU machine the bundles are logical CPUs only (`cpus_per_actor` each, small enough that every
role fits on two cores); Ray does not pin them to cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PLACEMENT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RoleSpec:
    """Resources for the actors of one role."""

    name: str
    """'rollout', 'learner', 'reference' or 'reward'."""
    num_actors: int
    """Actors of this role (one rollout engine is one actor, whatever its tensor-parallel size)."""
    cpus_per_actor: float
    """Logical CPUs each actor reserves."""
    gpus_per_actor: float
    """Devices each actor reserves (0 on CPU; an engine reserves its tensor-parallel size)."""


@dataclass(frozen=True)
class ResourceSpec:
    """Every role of a run that this module places."""

    roles: tuple[RoleSpec, ...]
    colocated: tuple[str, ...] = ()
    """Roles whose actor i share bundle i of one placement group."""

    def role(self, name: str) -> RoleSpec:
        for spec in self.roles:
            if spec.name == name:
                return spec
        raise KeyError(f"no role {name!r} in the resource spec (roles: {[r.name for r in self.roles]})")


class Placement:
    """Placement groups for a `ResourceSpec`; hands out scheduling options per actor."""

    def __init__(self, spec: ResourceSpec, *, strategy: str = "PACK") -> None:
        self.spec = spec
        self._groups: dict[str, PlacementGroup] = {}
        if spec.colocated:
            shared = [spec.role(name) for name in spec.colocated]
            bundles = [_bundle(sum(r.cpus_per_actor for r in shared if i < r.num_actors),
                               sum(r.gpus_per_actor for r in shared if i < r.num_actors))
                       for i in range(max(r.num_actors for r in shared))]
            group = _create(bundles, strategy)
            self._groups.update({name: group for name in spec.colocated})
        for role in spec.roles:
            if role.num_actors == 0 or role.name in self._groups:
                continue
            bundle = _bundle(role.cpus_per_actor, role.gpus_per_actor)
            self._groups[role.name] = _create([bundle] * role.num_actors, strategy)

    def options(self, role: str, index: int) -> dict[str, Any]:
        """`actor_class.options(**placement.options(role, i))` for actor i of `role`."""
        spec = self.spec.role(role)
        if not 0 <= index < spec.num_actors:
            raise IndexError(f"{role} actor {index} out of range: the spec has {spec.num_actors}")
        return {
            "num_cpus": spec.cpus_per_actor,
            "num_gpus": spec.gpus_per_actor,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._groups[role], placement_group_bundle_index=index
            ),
        }

    def options_for(self, role: str) -> Callable[[int], dict[str, Any]]:
        """`options` for one role, for a group that places its own actors (the learner group)."""
        return lambda index: self.options(role, index)

    def remove(self) -> None:
        for group in {id(g): g for g in self._groups.values()}.values():
            remove_placement_group(group)
        self._groups.clear()


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def _create(bundles: list[dict[str, float]], strategy: str) -> PlacementGroup:
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        remove_placement_group(group)
        raise RuntimeError(
            f"placement group {bundles} not ready after {PLACEMENT_TIMEOUT_S:.0f} s: the cluster lacks "
            f"these resources ({ray.available_resources()} available)"
        )
    return group
