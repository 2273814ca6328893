"""Placement: the bundle shapes vLLM requires (pure), and placement groups on a local Ray bound to
127.0.0.1: every role's actors are reserved together, scheduled into their own bundles, and a spec the
cluster cannot hold fails with a clear error. Remote calls have deadlines and name who failed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cluster.placement import Placement, ResourceSpec, RoleSpec, actor_bundles

# --- pure: bundle shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gpu_engine_bundles_hold_one_gpu_each(tp):
    """vLLM's Ray executor refuses bundles of more than one GPU and needs TP of them."""
    from actors.rollout import engine_executor_args
    from trainer.config import TrainConfig
    from trainer.roles import resource_spec

    cfg = TrainConfig()
    cfg = replace(cfg, cluster=replace(cfg.cluster, use_gpu=True, cpus_per_actor=2.0),
                  rollout=replace(cfg.rollout, num_engines=3, tensor_parallel_size=tp))
    rollout = resource_spec(cfg).role("rollout")
    bundles = actor_bundles(rollout)
    assert len(bundles) == tp and all(b["GPU"] == 1.0 for b in bundles)
    assert bundles[0]["CPU"] == 2.0 and all("CPU" not in b for b in bundles[1:])
    args, env = engine_executor_args(use_gpu=True, tensor_parallel_size=tp, bundle_indices=list(range(tp)))
    if tp == 1:
        assert (args, env) == ({}, {})  # one GPU: vLLM's in-process executor in the actor's own bundle
    else:
        assert args == {"distributed_executor_backend": "ray"}
        assert env["VLLM_RAY_BUNDLE_INDICES"] == ",".join(map(str, range(tp)))
        assert env["CUDA_VISIBLE_DEVICES"] is None  # Ray's '' for a GPU-less actor is removed, not kept


def test_cpu_and_learner_bundles_stay_single():
    from actors.rollout import engine_executor_args
    from trainer.config import TrainConfig
    from trainer.roles import resource_spec

    cfg = TrainConfig()
    cpu = replace(cfg, rollout=replace(cfg.rollout, tensor_parallel_size=2))
    assert actor_bundles(resource_spec(cpu).role("rollout")) == [{"CPU": cfg.cluster.cpus_per_actor}]
    assert engine_executor_args(use_gpu=False, tensor_parallel_size=2, bundle_indices=None) == ({}, {})
    assert engine_executor_args(use_gpu=False, tensor_parallel_size=1, bundle_indices=None) == (
        {}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # the worker inside the engine core
    assert engine_executor_args(use_gpu=True, tensor_parallel_size=1, bundle_indices=None) == ({}, {})
    gpu = replace(cfg, cluster=replace(cfg.cluster, use_gpu=True))
    assert actor_bundles(resource_spec(gpu).role("learner")) == [{"CPU": cfg.cluster.cpus_per_actor, "GPU": 1.0}]
    with pytest.raises(ValueError, match="one device per bundle"):
        actor_bundles(RoleSpec("rollout", 1, 1.0, 3.0, bundles_per_actor=2))
    with pytest.raises(ValueError, match="needs 2 bundles"):
        engine_executor_args(use_gpu=True, tensor_parallel_size=2, bundle_indices=[0])



def test_engines_run_eager_on_cpu_and_compiled_on_gpu_unless_the_config_says():
    """`rollout.enforce_eager` as the builder hands it to every engine (rollout and judge) and the engine
    resolves it: compiling costs CPU engines 20-40 s at each start."""
    from actors.launch import engine_kwargs
    from actors.rollout import runs_eager
    from trainer.config import TrainConfig
    from trainer.roles import plan_system

    assert runs_eager(None, on_gpu=False) and not runs_eager(None, on_gpu=True)
    assert not runs_eager(False, on_gpu=False) and runs_eager(True, on_gpu=True)
    cfg = TrainConfig()
    cfg = replace(cfg, rollout=replace(cfg.rollout, enforce_eager=False))
    engines = plan_system(cfg, "grpo").engines
    assert engines is not None and engine_kwargs(engines, 0, "gloo", None)["enforce_eager"] is False

# --- local Ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    import ray

    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"


@pytest.mark.slow
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


@pytest.mark.slow
def test_unsatisfiable_spec_fails_clearly(local_ray, monkeypatch):
    import cluster.placement as placement_module

    monkeypatch.setattr(placement_module, "PLACEMENT_TIMEOUT_S", 2.0)
    with pytest.raises(RuntimeError, match="lacks these resources"):
        Placement(ResourceSpec(roles=(RoleSpec("rollout", 1, 0.0, 1.0),)))   # a GPU this machine lacks


@pytest.mark.slow
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


@pytest.mark.slow
def test_remote_calls_name_the_failed_actor_and_the_cause(local_ray):
    import time

    import ray

    from cluster.calls import RemoteCallError, get_all
    from cluster.network import endpoint_on

    @ray.remote(num_cpus=0)
    class Worker:
        def ok(self):
            return 1

        def fail(self):
            raise KeyError("no such weight")

        def hang(self):
            time.sleep(60)

    a, b = Worker.remote(), Worker.remote()
    assert get_all([a.ok.remote(), b.ok.remote()], what="ok", names=["w0", "w1"], timeout_s=30) == [1, 1]
    with pytest.raises(RemoteCallError, match=r"fail: w1 failed: KeyError: 'no such weight'"):
        get_all([a.ok.remote(), b.fail.remote()], what="fail", names=["w0", "w1"], timeout_s=30)
    start = time.monotonic()
    with pytest.raises(RemoteCallError, match=r"hang: no answer within 2s from w0"):
        get_all([a.hang.remote(), b.ok.remote()], what="hang", names=["w0", "w1"], timeout_s=2)
    assert time.monotonic() - start < 10
    ray.kill(b)
    # ray.kill only asks for the kill: a call sent at once may still run, so wait until b is gone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(b.ok.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.2)
    with pytest.raises(RemoteCallError, match=r"ok: w1 failed: the actor died"):
        get_all([b.ok.remote()], what="ok", names=["w1"], timeout_s=30)
    ray.kill(a)
    # a rendezvous endpoint is found on the node of a bundle, before its actor exists
    placement = Placement(ResourceSpec(roles=(RoleSpec("learner", 1, 0.5, 0.0),)))
    try:
        host, port = endpoint_on(placement.options("learner", 0), timeout_s=60)
        assert host == "127.0.0.1" and 0 < port < 65536
    finally:
        placement.remove()


def test_rank_order_puts_each_tensor_parallel_group_on_one_node():
    """Ray's PACK may place equal bundles on nodes in any order; ranks are then taken node by node."""
    import random

    from cluster.placement import rank_order

    nodes = ["10.0.0.10"] * 8 + ["10.0.0.9"] * 8 + ["10.0.1.2"] * 8  # 3 nodes x 8 GPUs; .9 sorts before .10
    for seed in range(20):
        shuffled = nodes[:]
        random.Random(seed).shuffle(shuffled)  # shuffled[b]: the node bundle b landed on
        order = rank_order(shuffled)
        assert sorted(order) == list(range(24))
        ranks_nodes = [shuffled[b] for b in order]
        for tp in (2, 4, 8):
            groups = [set(ranks_nodes[g: g + tp]) for g in range(0, 24, tp)]
            assert all(len(g) == 1 for g in groups), (seed, tp, ranks_nodes)
        assert ranks_nodes == ["10.0.0.9"] * 8 + ["10.0.0.10"] * 8 + ["10.0.1.2"] * 8  # numeric address order
        per_node = [[b for b in order if shuffled[b] == n] for n in ("10.0.0.9", "10.0.0.10")]
        assert all(p == sorted(p) for p in per_node)  # within a node, bundle order
    assert rank_order(["b", "a", "10.0.0.1", "a"]) == [2, 1, 3, 0]  # names after addresses, in text order
    assert rank_order(["10.0.0.1"] * 4) == [0, 1, 2, 3]  # one node: bundle i is rank i, as before


def test_a_tensor_parallel_group_across_nodes_is_named():
    from actors.learner_group import straddling_tp_groups

    assert straddling_tp_groups(["a", "a", "b", "b"], 2) == []
    [line] = straddling_tp_groups(["a", "a", "a", "b"], 2)  # a node with 3 learner bundles, TP=2
    assert line.startswith("ranks 2-3 form one tensor-parallel group but run on 2 nodes (a, b)")
