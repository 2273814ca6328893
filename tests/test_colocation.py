"""Colocated GPU runs, checked where a CPU machine can check them: the layouts (engine i on learner rank i's
GPU) build their placement and pick per-rank CUDA IPC; the IPC handles our sender builds pass vLLM's own
msgpack encoder exactly when VLLM_ALLOW_INSECURE_SERIALIZATION is set, and the rollout worker sets it for
an IPC engine; the engines sleep at level 2 only where the reload restores what it drops; and Ray, given
GPUs it only believes in, keeps every learner rank on a GPU of its own with its engine beside it."""

from __future__ import annotations

import pickle
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from actors.weight_sync import (
    IPC_BACKEND,
    TensorMeta,
    TransferSpec,
    choose_backend,
    engine_scope,
    ipc_handles,
    worker_update_info,
)
from cluster.placement import COLOCATED_GROUP, RoleSpec, actor_slot, colocated_bundles, group_bundles
from trainer.config import ConfigError, TrainConfig
from trainer.roles import engines_colocated, resource_spec

LEARNER_RANKS = 8


def colocated(engines: int, *, judge: bool = False, judge_tp: int = 1, tp: int = 2) -> TrainConfig:
    """A colocated GPU run on 8 learner ranks (TP=tp x DP) with `engines` engines, and a judge if asked."""
    cfg = TrainConfig()
    cfg = replace(cfg, cluster=replace(cfg.cluster, use_gpu=True, colocate=True, cpus_per_actor=2.0),
                  learner=replace(cfg.learner, tensor_parallel_size=tp, data_parallel_size=LEARNER_RANKS // tp),
                  rollout=replace(cfg.rollout, num_engines=engines))
    if judge:
        cfg = replace(cfg, reward=replace(cfg.reward, routes=("trivia:judge",), judge=replace(
            cfg.reward.judge, model_path="/models/judge", num_engines=2, tensor_parallel_size=judge_tp)))
    return cfg


# --- item: every colocated layout builds its placement and picks per-rank IPC (pure) -------------------


@pytest.mark.parametrize("judge", [False, True])
@pytest.mark.parametrize("engines", [1, 2, 4, 8])
def test_colocated_layouts_place_engine_i_with_learner_rank_i(engines, judge):
    cfg = colocated(engines, judge=judge).validate()
    spec = resource_spec(cfg)
    groups = group_bundles(spec)
    bundles, _ = groups[COLOCATED_GROUP]
    # One bundle per learner rank, each one whole GPU: Ray cannot best-fit two ranks onto one device.
    assert len(bundles) == LEARNER_RANKS and all(b["GPU"] == 1.0 for b in bundles)
    assert [b["CPU"] for b in bundles] == [4.0] * engines + [2.0] * (LEARNER_RANKS - engines)
    demand = [0.0] * LEARNER_RANKS
    for role, count in (("learner", LEARNER_RANKS), ("rollout", engines)):
        for i in range(count):
            slot = actor_slot(spec, role, i)
            assert (slot.group, slot.bundle_index) == (COLOCATED_GROUP, i)  # engine i in learner rank i's bundle
            demand[i] += slot.num_gpus
    assert all(0 < d <= 1.0 for d in demand)  # what the actors ask of a bundle fits its one GPU
    with pytest.raises(IndexError, match=f"rollout actor {engines} out of range"):
        actor_slot(spec, "rollout", engines)
    if judge:  # another model: GPUs of its own, outside the colocated group (this raised KeyError before)
        assert groups["judge"][0] == [{"CPU": 2.0, "GPU": 1.0}] * 2
        assert [actor_slot(spec, "judge", j) for j in range(2)] == [
            actor_slot(spec, "judge", 0).__class__("judge", j, 2.0, 1.0) for j in range(2)]
    else:
        assert set(groups) == {COLOCATED_GROUP}
    # The layout `plan` prints is the one placed: a GPU per learner rank plus the judge's.
    from trainer.plan import make_plan

    plan = make_plan(cfg)
    reserved = sum(b.get("GPU", 0.0) for bs, _ in groups.values() for b in bs)
    assert sum(len(node) for node in plan.nodes) == reserved == LEARNER_RANKS + 2 * judge
    assert plan.nodes[0][engines - 1].startswith(f"engine {engines - 1} + learner {engines - 1} ")
    # Every engine colocated: CUDA IPC, learner rank e serving engine e, wherever the engines' nodes are.
    backend = choose_backend(use_gpu=True, engines_colocated=engines_colocated(cfg),
                             engines_on_sender_node=[e < 4 for e in range(engines)])
    assert backend == IPC_BACKEND
    spec_ = TransferSpec(host="10.0.0.1", port=1, world_size=1 + engines, num_engines=engines, backend=backend,
                         timeout_s=1.0, secret="s")
    assert spec_.sender_ranks == range(engines)
    assert replace(spec_, backend="nccl").sender_ranks == range(1)


def test_a_tensor_parallel_judge_keeps_its_own_strict_pack_groups():
    spec = resource_spec(colocated(2, judge=True, judge_tp=2))
    groups = group_bundles(spec)
    assert groups["judge/0"] == ([{"CPU": 2.0, "GPU": 1.0}, {"GPU": 1.0}], "STRICT_PACK")
    assert actor_slot(spec, "judge", 1).group == "judge/1" and actor_slot(spec, "judge", 1).num_gpus == 0.0


def test_layouts_that_cannot_work_are_refused_clearly():
    with pytest.raises(ConfigError, match="rollout.num_engines <= 8 learner ranks"):
        colocated(9).validate()
    with pytest.raises(ConfigError, match="rollout.tensor_parallel_size = 1"):
        replace(colocated(2), rollout=replace(colocated(2).rollout, tensor_parallel_size=2)).validate()
    with pytest.raises(ValueError, match="more than the one device it holds"):
        colocated_bundles([RoleSpec("rollout", 1, 1.0, 0.6), RoleSpec("learner", 2, 1.0, 0.5)])
    with pytest.raises(ValueError, match="cannot span 2 bundles"):
        colocated_bundles([RoleSpec("rollout", 1, 1.0, 2.0, bundles_per_actor=2), RoleSpec("learner", 1, 1.0, 0.5)])
    with pytest.raises(ValueError, match="Colocate every engine"):
        choose_backend(use_gpu=True, engines_colocated=[True, False], engines_on_sender_node=[True, True])


def test_each_engine_reads_only_its_own_senders_keys():
    """Under ipc, learner ranks 0 and 1 stream the same bucket indices at once, each to its own engine."""
    from torch.distributed import HashStore

    store = HashStore()
    spec = TransferSpec(host="h", port=1, world_size=3, num_engines=2, backend="ipc", timeout_s=1.0, secret="s")
    engine_scope(store, spec, 0).set("bucket/1/0", b"rank 0")
    engine_scope(store, spec, 1).set("bucket/1/0", b"rank 1")
    assert [engine_scope(store, spec, e).get("bucket/1/0") for e in (0, 1)] == [b"rank 0", b"rank 1"]
    assert engine_scope(store, replace(spec, backend="nccl"), 1) is store  # one stream for every engine
    from actors.weight_sync import WeightSender

    with pytest.raises(ValueError, match=r"learner rank 2 does not send over ipc \(senders: range\(0, 2\)\)"):
        WeightSender(spec, 2)  # refused before it opens anything
    with pytest.raises(ValueError, match="learner rank 1 does not send over nccl"):
        WeightSender(replace(spec, backend="nccl"), 1)


# --- item: CUDA IPC handles through vLLM's msgpack encoder ---------------------------------------------


def cuda_like_reduce(t: torch.Tensor) -> tuple:
    """What torch's `reduce_tensor` returns for a CUDA tensor, (rebuild_cuda_tensor, its 15 arguments), for
    a CPU stand-in: the same classes, torch.dtype, bytes and numbers in the same places."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    # torch passes type(tensor._typed_storage()), i.e. torch.TypedStorage
    return rebuild_cuda_tensor, (type(t), t.size(), t.stride(), t.storage_offset(), torch.TypedStorage, t.dtype, 0,
                                 b"\x01" * 64, t.untyped_storage().nbytes(), 0, t.requires_grad, b"refcount", 0,
                                 b"\x02" * 64, True)


def encoded_update_request(tensors: list[tuple[str, torch.Tensor]]):
    """The bytes `AsyncLLM.update_weights` sends its engine core for one IPC bucket, built as our sender
    (`ipc_handles`, pickled into the control store) and our rollout worker (`worker_update_info`) build it,
    and encoded by vLLM's own encoder the way its core client encodes a utility call."""
    from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest
    from vllm.v1.serial_utils import MsgpackEncoder

    handles = ipc_handles([t for _, t in tensors], "GPU-uuid-0", reduce=cuda_like_reduce)
    from_store = pickle.loads(pickle.dumps(handles))
    request = WeightTransferUpdateRequest(update_info=worker_update_info(
        [TensorMeta.of(n, t) for n, t in tensors], from_store))
    # AsyncLLM.update_weights -> collective_rpc_async -> _call_utility_async: (client, call id, method, args)
    message = (0, 7, "collective_rpc", ("update_weights", None, (), {"update_info": request.update_info}))
    return MsgpackEncoder().encode(message)


@pytest.fixture
def vllm_env(monkeypatch):
    """vLLM reads its settings at each use until an engine starts; a test must not see a cached value.
    The rollout worker writes its engine's settings into os.environ (where vLLM's processes read them), so
    the environment is put back whole afterwards: later tests' engines must not start with them."""
    import os

    from vllm import envs

    saved = dict(os.environ)
    if envs._is_envs_cache_enabled():
        envs.disable_envs_cache()
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    yield monkeypatch
    monkeypatch.undo()
    os.environ.clear()
    os.environ.update(saved)


def test_ipc_handles_reach_the_engine_core_only_with_insecure_serialization(vllm_env):
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo
    from vllm.v1.serial_utils import MsgpackDecoder

    tensors = [("model.norm.weight", torch.arange(4.0)), ("lm_head.weight", torch.ones(2, 3, dtype=torch.bfloat16))]
    with pytest.raises(TypeError, match="VLLM_ALLOW_INSECURE_SERIALIZATION"):
        encoded_update_request(tensors)  # what the first colocated push raised
    vllm_env.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    client, call, method, (rpc, _, _, kwargs) = MsgpackDecoder().decode(encoded_update_request(tensors))
    assert (method, rpc) == ("collective_rpc", "update_weights")
    info = IPCWeightTransferUpdateInfo(**kwargs["update_info"])  # as vLLM's worker parses it
    assert info.names == ["model.norm.weight", "lm_head.weight"] and info.dtype_names == ["float32", "bfloat16"]
    for (_, t), handle in zip(tensors, info.ipc_handles):
        args = list(handle["GPU-uuid-0"])  # vLLM's receiver: list(args), args[6] = its device, rebuild
        _, expected = cuda_like_reduce(t)
        assert args[0] is torch.Tensor and args[4] is torch.TypedStorage and args[5] is t.dtype
        assert tuple(args[1]) == tuple(t.shape) and args[7] == b"\x01" * 64 and len(args) == len(expected)


class FakeAsyncLLM:
    """Stands in for vLLM's AsyncLLM: records what reaches it and the setting it started under."""

    def __init__(self, quantization=None, **hf_config):
        self.calls: list[tuple] = []
        self.model_config = SimpleNamespace(quantization=quantization, hf_config=SimpleNamespace(**hf_config))

    def started(self, args):
        import os

        self.calls.append(("start", os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")))
        return self

    async def sleep(self, level):
        self.calls.append(("sleep", level))

    async def wake_up(self, tags):
        self.calls.append(("wake_up", tags))


def rollout_worker(monkeypatch, fake: FakeAsyncLLM, backend: str):
    """`RolloutWorker` as the builder starts engine 1 of a colocated GPU run (`actors.launch.engine_kwargs`
    of the run's plan), on a stand-in engine."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from actors.launch import engine_kwargs
    from actors.rollout import RolloutWorker
    from trainer.roles import plan_system

    monkeypatch.setattr(AsyncLLM, "from_engine_args", fake.started)
    engines = plan_system(colocated(2), "grpo").engines
    assert engines is not None and engines.enable_sleep_mode  # colocated engines must free their memory
    kwargs = engine_kwargs(engines, 1, backend, None)
    return RolloutWorker(**{**kwargs, "model_path": "artifacts/tiny-qwen2"})


def test_a_colocated_gpu_engine_starts_with_insecure_serialization_set(vllm_env):
    ipc = FakeAsyncLLM()
    rollout_worker(vllm_env, ipc, "ipc")
    assert ipc.calls == [("start", "1")]
    vllm_env.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION")
    nccl = FakeAsyncLLM()
    rollout_worker(vllm_env, nccl, "nccl")
    assert nccl.calls == [("start", None)]  # nothing but IPC needs vLLM to unpickle what it is sent


# --- item: sleep level 2 where the reload restores what it drops ---------------------------------------


def test_sleep_level_two_only_for_unquantized_dense_models():
    from actors.rollout import deepest_sleep_level

    dense = SimpleNamespace(hidden_size=3584, num_hidden_layers=28)
    assert deepest_sleep_level(quantization=None, hf_config=dense) == 2
    assert deepest_sleep_level(quantization="fp8", hf_config=dense) == 1
    assert deepest_sleep_level(quantization=None, hf_config=SimpleNamespace(num_experts=64)) == 1
    assert deepest_sleep_level(quantization=None, hf_config=SimpleNamespace(n_routed_experts=256)) == 1


@pytest.mark.parametrize(("engine", "level"), [(FakeAsyncLLM(), 2), (FakeAsyncLLM(quantization="awq"), 1),
                                               (FakeAsyncLLM(num_local_experts=8), 1)])
def test_engine_sleeps_as_deep_as_its_model_allows_then_wakes_in_stages(vllm_env, engine, level):
    import asyncio

    worker = rollout_worker(vllm_env, engine, "ipc")

    async def step():  # System: sleep_engines(until_sync=True) ... sync_weights
        slept = await worker.sleep(2)
        await worker.wake_up(["weights"])
        await worker.wake_up(["kv_cache"])
        return slept

    assert asyncio.run(step()) == level
    assert engine.calls[1:] == [("sleep", level), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]
    engine.calls.clear()
    assert asyncio.run(worker.sleep(1)) == 1 and engine.calls == [("sleep", 1)]  # woken without a sync later


# --- Ray's side: fractional demands inside a bundle stay on that bundle's GPU ---------------------------


@pytest.fixture(scope="module")
def ray_with_eight_gpus():
    """A local Ray that believes it has 8 GPUs (Ray assigns GPU ids it does not have like real ones)."""
    from cluster.ray_init import init_ray, shutdown_ray

    init_ray("local", num_cpus=2, num_gpus=8, log_to_driver=False)
    yield
    shutdown_ray()


@pytest.mark.slow
@pytest.mark.parametrize("engines", [1, 8])
def test_ray_gives_each_learner_rank_its_own_gpu_and_engine_i_rank_is(ray_with_eight_gpus, engines):
    """Built by the run's own Placement from the run's resource spec: learner ranks on 8 distinct GPU ids,
    engine i on learner rank i's; the judge's engines would need GPUs this Ray lacks, so none here."""
    import ray

    from cluster.placement import Placement

    @ray.remote(num_cpus=0)
    class Where:
        def gpu(self):
            return ray.get_gpu_ids()

    cfg = colocated(engines, tp=1)
    cfg = replace(cfg, cluster=replace(cfg.cluster, cpus_per_actor=0.1))
    placement = Placement(resource_spec(cfg))
    try:
        ranks = [Where.options(**placement.options("learner", r)).remote() for r in range(LEARNER_RANKS)]
        engines_ = [Where.options(**placement.options("rollout", e)).remote() for e in range(engines)]
        rank_gpus = ray.get([a.gpu.remote() for a in ranks], timeout=60)
        engine_gpus = ray.get([a.gpu.remote() for a in engines_], timeout=60)
        assert all(len(g) == 1 for g in rank_gpus)
        assert len({g[0] for g in rank_gpus}) == LEARNER_RANKS  # no two learner ranks on one GPU
        assert engine_gpus == rank_gpus[:engines]  # engine i on learner rank i's GPU
        for a in ranks + engines_:
            ray.kill(a)
    finally:
        placement.remove()
