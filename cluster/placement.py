"""Where each role's actors run: one resource spec for every role, turned into placement groups.

Disaggregated (default): every role gets its own bundles. Colocated: rollout engines and learner ranks
share one placement group, one bundle per device; each takes a fraction of the device, and the engines
sleep while the learner trains (verl / OpenRLHF's "hybrid engine" layout).

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
COLOCATED_SHARE = 0.5
"""Device share of each of the two colocated roles (rollout engine, learner rank) in a shared bundle."""


@dataclass(frozen=True)
class RoleSpec:
    """Resources for the actors of one role."""

    name: str
    """'rollout', 'learner', 'reference' or 'reward'."""
    num_actors: int
    """Actors of this role (engines x their TP size count as one actor per device)."""
    cpus_per_actor: float
    """Logical CPUs each actor reserves."""
    gpus_per_actor: float
    """Devices each actor reserves (0 on CPU)."""


@dataclass(frozen=True)
class ResourceSpec:
    """Every role of a run, and whether rollout and learner share devices."""

    roles: tuple[RoleSpec, ...]
    colocate: bool = False

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
        shared = ("rollout", "learner") if spec.colocate else ()
        if shared:
            # One bundle per device; rollout engines and learner ranks each take a share of it.
            learner = spec.role("learner")
            bundles = [{"CPU": learner.cpus_per_actor * 2, "GPU": 1.0}] * learner.num_actors
            group = _create(bundles, strategy)
            for name in shared:
                self._groups[name] = group
        for role in spec.roles:
            if role.name in self._groups or role.num_actors == 0:
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
        colocated = self.spec.colocate and role in ("rollout", "learner")
        gpus = COLOCATED_SHARE if colocated else spec.gpus_per_actor
        return {
            "num_cpus": spec.cpus_per_actor,
            "num_gpus": gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._groups[role], placement_group_bundle_index=index
            ),
        }

    def remove(self) -> None:
        for group in {id(g): g for g in self._groups.values()}.values():
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
