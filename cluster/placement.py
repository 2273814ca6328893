"""Where each role's actors run: a resource spec per role, turned into one placement group per role
(one bundle per actor), so a role's actors are reserved together or not at all.

On one CPU machine the bundles are logical CPUs only (`cpus_per_actor` each, small enough that every
role fits on two cores); Ray does not pin them to cores.
"""

from __future__ import annotations

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
        for role in spec.roles:
            if role.num_actors == 0:
                continue
            bundle: dict[str, float] = {"CPU": role.cpus_per_actor}
            if role.gpus_per_actor:
                bundle["GPU"] = role.gpus_per_actor
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

    def remove(self) -> None:
        for group in self._groups.values():
            remove_placement_group(group)
        self._groups.clear()


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
