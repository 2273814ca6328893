"""Where each role's actors run: a resource spec per role, turned into placement groups, so a role's
actors are reserved together or not at all.

Disaggregated (default): one placement group per role, one bundle per actor. Colocated: the roles
named in `ResourceSpec.colocated` (rollout engines and learner ranks) share one placement group;
bundle i holds actor i of each of them and one whole device, and each actor asks the bundle for its own
share of it (`gpus_per_actor`, a fraction; verl's and OpenRLHF's "hybrid engine" layout). Ray keeps a
fractional demand made inside a bundle on that bundle's device (the bundle's resource instances are the
device it reserved), and a bundle of one whole device shares it with no other bundle; bundles of half a
device each could instead be best-fit two to one device, which puts two learner ranks on one GPU (NCCL:
"Duplicate GPU detected"). The engines sleep while the learner trains.

What goes where is decided by two pure functions, `group_bundles` (every placement group's bundles) and
`actor_slot` (the group, bundle and demand of one actor), so a layout is checked without a cluster.

Tensor-parallel engines on GPUs (`bundles_per_actor` > 1): vLLM's Ray executor refuses bundles of more
than one GPU and starts one worker per one-GPU bundle of the placement group its engine's actor runs
in. So each such engine gets a placement group of its own, STRICT_PACK (a TP group shares a node and
its NVLink): k bundles of one GPU, the first also holding the actor itself without a GPU; the actor
passes the bundle indices to vLLM (`actors.rollout.engine_executor_args`), as verl and NeMo-RL do.

Actor i of a role is not simply bundle i: PACK does not keep consecutive bundles on one node (Ray sorts
equal bundles with an unstable sort and fills nodes as they have room), and learner ranks that are
consecutive form a tensor-parallel group that must share a node. Once a group is ready, its bundles are
put in order of (node address, bundle index) and actor i takes the i-th (`rank_order`), as verl, OpenRLHF
and SkyRL order their workers; actors of colocated roles still share bundles index for index (colocated
roles of different sizes have bundles of different shapes, which keep their index).

On one CPU machine the bundles are logical CPUs only (`cpus_per_actor` each, small enough that every
role fits on two cores); Ray does not pin them to cores.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

T = TypeVar("T")

PLACEMENT_TIMEOUT_S = 120.0
NODE_RESOURCE_SHARE = 0.001
"""What a bundle asks of a role's node resource: a node given 1 of it hosts up to 1000 bundles."""


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
    """Devices each actor reserves (0 on CPU; an engine reserves its tensor-parallel size); in a colocated
    role, the share of its bundle's one device that the actor asks for."""
    bundles_per_actor: int = 1
    """One-device bundles an actor's workers span (a GPU engine's TP size); > 1: a placement group each."""
    node_resource: str = ""
    """Custom Ray resource every bundle asks a little of, so the role runs only on nodes that have it."""


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


COLOCATED_GROUP = "colocated"
"""Key of the placement group that the colocated roles share (`group_bundles`, `Slot.group`)."""


@dataclass(frozen=True)
class Slot:
    """Where one actor goes, as `actor_slot` decides it."""

    group: str
    """Key of its placement group in `group_bundles`: COLOCATED_GROUP, the role's name, or "<role>/<i>"
    for a group of its own (an engine whose workers span `bundles_per_actor` bundles)."""
    bundle_index: int
    num_cpus: float
    num_gpus: float
    """What the actor itself asks of the bundle (a share of its device when colocated; 0 for a TP engine's
    actor, whose workers take the devices)."""


def group_bundles(spec: ResourceSpec, *, strategy: str = "PACK") -> dict[str, tuple[list[dict[str, float]], str]]:
    """Every placement group of `spec`: key -> (bundles, strategy). Pure."""
    groups: dict[str, tuple[list[dict[str, float]], str]] = {}
    if spec.colocated:
        groups[COLOCATED_GROUP] = (colocated_bundles([spec.role(name) for name in spec.colocated]), strategy)
    for role in spec.roles:
        if role.num_actors == 0 or role.name in spec.colocated:
            continue
        if role.bundles_per_actor > 1:  # STRICT_PACK: a TP group shares a node (and its NVLink)
            groups.update({f"{role.name}/{i}": (actor_bundles(role), "STRICT_PACK") for i in range(role.num_actors)})
        else:
            groups[role.name] = ([_bundle(role.cpus_per_actor, role.gpus_per_actor, role.node_resource)]
                                 * role.num_actors, strategy)
    return groups


def colocated_bundles(shared: list[RoleSpec]) -> list[dict[str, float]]:
    """Bundle i holds actor i of each shared role: their CPUs, and one whole device (when any asks for
    one) of which each takes its share. Pure; refuses shares that do not fit one device."""
    for role in shared:
        if role.bundles_per_actor != 1 or role.gpus_per_actor > 1:
            raise ValueError(f"colocated role {role.name}: an actor shares one device with the others; it cannot "
                             f"span {role.bundles_per_actor} bundles or ask for {role.gpus_per_actor} devices")
    bundles = []
    for i in range(max(r.num_actors for r in shared)):
        here = [r for r in shared if i < r.num_actors]
        share = sum(r.gpus_per_actor for r in here)
        if share > 1:
            raise ValueError(f"colocated bundle {i}: {' + '.join(f'{r.name} {r.gpus_per_actor:g}' for r in here)} "
                             f"is more than the one device it holds")
        bundles.append(_bundle(sum(r.cpus_per_actor for r in here), 1.0 if share else 0.0,
                               *(r.node_resource for r in here)))
    return bundles


def actor_slot(spec: ResourceSpec, role: str, index: int) -> Slot:
    """The placement group, bundle and demand of actor `index` of `role`. Pure."""
    r = spec.role(role)
    if not 0 <= index < r.num_actors:
        raise IndexError(f"{role} actor {index} out of range: the spec has {r.num_actors}")
    if role in spec.colocated:
        return Slot(COLOCATED_GROUP, index, r.cpus_per_actor, r.gpus_per_actor)
    if r.bundles_per_actor > 1:  # the actor holds no device: its workers take one bundle each
        return Slot(f"{role}/{index}", 0, r.cpus_per_actor, 0.0)
    return Slot(role, index, r.cpus_per_actor, r.gpus_per_actor)


@dataclass(frozen=True)
class Placed:
    """Where every actor of a spec goes, asked of Ray once (`Placement.placed`): plain values to start
    the actors from."""

    options: dict[str, list[dict[str, Any]]]
    """Role -> the Ray options of each of its actors (`Placement.options`)."""
    bundle_indices: dict[str, list[int] | None]
    """Role -> the bundles an actor of it gives its workers (`Placement.bundle_indices`)."""
    nodes: dict[str, list[str]]
    """Role -> Ray's node id of each of its actors, for the roles that were located."""

    def options_for(self, role: str) -> Callable[[int], dict[str, Any]]:
        """`options` of one role as a function of the actor's index, for a group that places its own actors."""
        return self.options[role].__getitem__


class Placement:
    """Placement groups for a `ResourceSpec`; hands out scheduling options per actor."""

    def __init__(self, spec: ResourceSpec, *, strategy: str = "PACK") -> None:
        self.spec = spec
        self._groups: dict[str, PlacementGroup] = {}
        self._order: dict[str, list[int]] = {}
        """Per placement group: the bundle actor i takes (`rank_order`: node by node, as Ray placed them)."""
        try:
            for key, (bundles, group_strategy) in group_bundles(spec, strategy=strategy).items():
                self._groups[key] = group = _create(bundles, group_strategy)
                # Uneven colocation: bundle i holds actor i of each role that has one, so bundles differ and
                # keep their index (`rank_order` may not move an engine onto a bundle without its share).
                uneven = key == COLOCATED_GROUP and len({spec.role(r).num_actors for r in spec.colocated}) > 1
                self._order[key] = list(range(len(bundles))) if uneven else ordered_bundles(group)
        except BaseException:
            self.remove()  # the groups made so far hold resources nothing will use
            raise

    def options(self, role: str, index: int) -> dict[str, Any]:
        """`actor_class.options(**placement.options(role, i))` for actor i of `role`."""
        slot = actor_slot(self.spec, role, index)
        return {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=self._groups[slot.group],
                    placement_group_bundle_index=self._order[slot.group][slot.bundle_index])}

    def options_for(self, role: str) -> Callable[[int], dict[str, Any]]:
        """`options` for one role, for a group that places its own actors (the learner group)."""
        return lambda index: self.options(role, index)

    def placed(self, locate: Sequence[str] = (), timeout_s: float = PLACEMENT_TIMEOUT_S) -> Placed:
        """Every actor's options and bundles, and the nodes of the roles in `locate` (a task on each bundle)."""
        roles = [r for r in self.spec.roles if r.num_actors]
        return Placed(options={r.name: [self.options(r.name, i) for i in range(r.num_actors)] for r in roles},
                      bundle_indices={r.name: self.bundle_indices(r.name) for r in roles},
                      nodes={role: self.node_ids(role, timeout_s) for role in locate})

    def bundle_indices(self, role: str) -> list[int] | None:
        """The bundles of its own placement group that an actor of `role` gives its workers (None: its own)."""
        spec = self.spec.role(role)
        return list(range(spec.bundles_per_actor)) if spec.bundles_per_actor > 1 else None

    def node_ids(self, role: str, timeout_s: float = PLACEMENT_TIMEOUT_S) -> list[str]:
        """Ray's node id of each actor of `role`, as its bundle places it."""
        return [str(n) for n in self.run_on(role, _node_id, timeout_s)]

    def run_on(self, role: str, fn: Callable[[], T], timeout_s: float = PLACEMENT_TIMEOUT_S) -> list[T]:
        """`fn()` on the node of each actor of `role`, as its bundle places it (a task that asks for no
        resources runs there, so it never waits for the actor, nor the actor for it)."""
        task = ray.remote(num_cpus=0)(fn)
        refs = [task.options(scheduling_strategy=self.options(role, i)["scheduling_strategy"]).remote()
                for i in range(self.spec.role(role).num_actors)]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            for ref in refs:
                ray.cancel(ref, force=True)
            raise TimeoutError(f"placement: {getattr(fn, '__name__', fn)} on the {role} bundles did not answer within "
                               f"{timeout_s:.0f}s ({len(ready)} of {len(refs)}; are they schedulable?)")
        return list(ray.get(refs))

    def remove(self) -> None:
        for group in self._groups.values():
            remove_placement_group(group)
        self._groups.clear()


def actor_bundles(role: RoleSpec) -> list[dict[str, float]]:
    """The bundles one actor of `role` reserves: one, or `bundles_per_actor` of one device each (the
    first also holding the actor's CPUs). Pure, so the shapes vLLM requires are tested without Ray."""
    k = role.bundles_per_actor
    if k < 1:
        raise ValueError(f"{role.name}: bundles_per_actor must be >= 1, not {k}")
    if k == 1:
        return [_bundle(role.cpus_per_actor, role.gpus_per_actor, role.node_resource)]
    per_bundle = role.gpus_per_actor / k
    if per_bundle != 1:
        raise ValueError(f"{role.name}: {role.gpus_per_actor} devices over {k} bundles; vLLM's Ray executor "
                         f"needs exactly one device per bundle")
    return [_bundle(role.cpus_per_actor, 1.0, role.node_resource)] + [_bundle(0.0, 1.0, role.node_resource)
                                                                       for _ in range(k - 1)]


def rank_order(bundle_nodes: Sequence[str]) -> list[int]:
    """Bundle index of each rank: bundles grouped by node, nodes in order of their address (numerically
    where it is an IP address), bundles of a node in index order. `bundle_nodes[b]`: the address of the
    node bundle b was placed on. Consecutive ranks then share a node wherever a node holds enough of
    them: a tensor-parallel group (consecutive ranks) of size k stays on one node when every node holds
    a multiple of k bundles."""
    return sorted(range(len(bundle_nodes)), key=lambda b: (_address_key(bundle_nodes[b]), b))


def _address_key(address: str) -> tuple[int, str]:
    try:
        return int(ipaddress.ip_address(address)), ""
    except ValueError:  # not an IP address (a name): after the addresses, in text order
        return 1 << 128, address


def ordered_bundles(group: PlacementGroup) -> list[int]:
    """`rank_order` of a ready placement group, from where Ray placed its bundles (GCS's table)."""
    from ray.util.placement_group import placement_group_table

    node_of_bundle = placement_group_table(group)["bundles_to_node_id"]
    address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    return rank_order([address.get(node_of_bundle[b], "") for b in range(len(node_of_bundle))])


def _node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _bundle(cpus: float, gpus: float, *node_resources: str) -> dict[str, float]:
    """A bundle; resources of 0 are left out (Ray rejects them), node resources ask NODE_RESOURCE_SHARE."""
    bundle = {"CPU": cpus, "GPU": gpus} | {r: NODE_RESOURCE_SHARE for r in node_resources if r}
    return {k: v for k, v in bundle.items() if v}


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
