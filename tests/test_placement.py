"""Placement groups on a local Ray bound to 127.0.0.1: every role's actors are reserved together,
scheduled into their own bundles, and a spec the cluster cannot hold fails with a clear error."""

from __future__ import annotations

import pytest

from cluster.placement import Placement, ResourceSpec, RoleSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from cluster.ray_init import init_ray, shutdown_ray

    init_ray("local", num_cpus=2, log_to_driver=False)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    yield
    shutdown_ray()


def test_actors_land_in_their_bundles(local_ray):
    import ray

    @ray.remote
    class Where:
        def bundle(self):
            return ray.get_runtime_context().get_placement_group_id()

    spec = ResourceSpec(roles=(RoleSpec("rollout", 2, 0.5, 0.0), RoleSpec("reward", 1, 0.25, 0.0)))
    placement = Placement(spec)
    try:
        actors = [Where.options(**placement.options("rollout", i)).remote() for i in range(2)]
        reward = Where.options(**placement.options("reward", 0)).remote()
        groups = ray.get([a.bundle.remote() for a in actors] + [reward.bundle.remote()])
        assert groups[0] == groups[1] != groups[2]
        with pytest.raises(IndexError, match="rollout actor 2 out of range"):
            placement.options("rollout", 2)
        with pytest.raises(KeyError, match="no role 'learner'"):
            placement.options("learner", 0)
        for a in [*actors, reward]:
            ray.kill(a)
    finally:
        placement.remove()


def test_unsatisfiable_spec_fails_clearly(local_ray, monkeypatch):
    import cluster.placement as placement_module

    monkeypatch.setattr(placement_module, "PLACEMENT_TIMEOUT_S", 2.0)
    with pytest.raises(RuntimeError, match="lacks these resources"):
        Placement(ResourceSpec(roles=(RoleSpec("rollout", 1, 0.0, 1.0),)))   # a GPU this machine lacks


def test_colocated_roles_share_bundles(local_ray):
    import ray
    from ray.util.placement_group import placement_group_table

    @ray.remote
    class Where:
        def group(self):
            return ray.get_runtime_context().get_placement_group_id()

    spec = ResourceSpec(roles=(RoleSpec("rollout", 2, 0.25, 0.0), RoleSpec("learner", 2, 0.5, 0.0),
                               RoleSpec("reward", 1, 0.25, 0.0)), colocated=("rollout", "learner"))
    placement = Placement(spec)
    try:
        engines = [Where.options(**placement.options("rollout", i)).remote() for i in range(2)]
        ranks = [Where.options(**placement.options_for("learner")(i)).remote() for i in range(2)]
        groups = ray.get([a.group.remote() for a in engines + ranks])
        assert len(set(groups)) == 1
        table = placement_group_table()[groups[0]]
        # Bundle i holds engine i and learner rank i: 0.25 + 0.5 CPUs each.
        assert [b["CPU"] for b in table["bundles"].values()] == [0.75, 0.75]
        for a in engines + ranks:
            ray.kill(a)
    finally:
        placement.remove()
