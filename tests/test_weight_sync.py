"""Weight sync into a real vLLM engine on CPU: a Hugging Face model plays the learner's rank 0.

One engine (model A, seed 0; vLLM's oneDNN kernels, the default: the suite's shared engine 0, which this
module takes over, tests/conftest.py) and one sender actor holding model B (seed 1), started once for the
module; one test starts a second engine with the in-place kernels. After
pushing B, the engine must generate what B generates and report B's logprobs.
"""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
import time

import pytest
import torch

from actors.weight_sync import (
    ChecksumStream,
    TensorMeta,
    TransferSpec,
    WeightSyncError,
    choose_backend,
    compare_checksums,
    decode_bucket,
    digest,
    encode_bucket,
    encode_end,
    expected_vllm_checksums,
    iter_buckets,
    pack_bucket,
    plan_buckets,
    unpack_bucket,
    worker_init_info,
)
from trainer.types import Prompt

SYNC_TIMEOUT_S = 20.0
LOGPROB_TOL = 1e-3
"""fp32 on both sides; vLLM's oneDNN GEMMs and HF's sum in different orders (measured ~1e-5)."""
PROMPTS = [Prompt(index=i, text=t, ground_truth="") for i, t in enumerate(
    ["What is 12+7?", "<think>3+4=7</think>", "Compute 999+1 step by step.", "1+1="])]


# --- pure pieces ---------------------------------------------------------------------------------


def test_backend_is_chosen_once_for_both_sides():
    def choose(use_gpu, on_gpu, on_node=None):
        return choose_backend(use_gpu=use_gpu, engines_colocated=on_gpu,
                              engines_on_sender_node=on_gpu if on_node is None else on_node)

    assert choose(False, [False, False]) == "gloo"  # CPU, engines on other nodes
    assert choose(False, [False, False], [True, True]) == "shm"  # CPU, every engine on rank 0's node
    assert choose(False, [False, False], [True, False]) == "gloo"  # one group must reach the other node
    assert choose(False, [True]) == "shm"  # CPU: no device to share, only the node
    assert choose(True, [False, False, False], [True, True, True]) == "nccl"  # GPUs: the node does not matter
    assert choose(True, [True]) == "ipc"
    assert choose(True, [True] * 8, [False] * 8) == "ipc"  # each learner rank serves the engine on its GPU
    with pytest.raises(ValueError, match=r"engines \[0\] share a learner rank's GPU and the others do not"):
        choose(True, [True, False])
    with pytest.raises(ValueError, match="at least one engine"):
        choose(True, [])
    with pytest.raises(ValueError, match="one fact per engine"):
        choose(False, [False], [True, True])


def test_shared_memory_only_where_dev_shm_has_room(caplog):
    """A container's default /dev/shm (64 MB) cannot hold two 64 MiB buckets: gloo then, with the reason."""
    from actors.weight_sync import SHM_SLOTS, shm_free_bytes

    def choose(free, bucket):
        return choose_backend(use_gpu=False, engines_colocated=[False], engines_on_sender_node=[True],
                              shm_free_bytes=free, bucket_bytes=bucket)

    mib = 2**20
    assert choose(64 * mib, 64 * mib) == "gloo"
    assert "64 MiB free on learner rank 0's node" in caplog.text
    assert choose(2 * SHM_SLOTS * 64 * mib, 64 * mib) == "shm"
    assert choose(None, 64 * mib) == "shm"  # not measured (a caller that knows the node)
    assert choose_backend(use_gpu=True, engines_colocated=[False], engines_on_sender_node=[True],
                          shm_free_bytes=0, bucket_bytes=64 * mib) == "nccl"  # GPUs never use it
    assert shm_free_bytes() > 0  # this machine has a /dev/shm


def test_backend_from_run_layouts():
    """The system's plan: colocated GPU engine i shares learner rank i's GPU (bundle i holds both)."""
    from dataclasses import replace

    from trainer.config import TrainConfig
    from trainer.roles import engines_colocated

    cfg = TrainConfig()
    gpu = replace(cfg, cluster=replace(cfg.cluster, use_gpu=True))
    two = replace(gpu, rollout=replace(gpu.rollout, num_engines=2))
    coloc = replace(gpu, cluster=replace(gpu.cluster, colocate=True))

    def choose(c, on_node):
        return choose_backend(use_gpu=c.cluster.use_gpu, engines_colocated=engines_colocated(c),
                              engines_on_sender_node=on_node)

    assert choose(cfg, [False]) == "gloo" and choose(cfg, [True]) == "shm"
    assert choose(two, [True, True]) == "nccl"
    assert choose(coloc, [True]) == "ipc"
    coloc_two = replace(coloc, rollout=replace(coloc.rollout, num_engines=2))
    assert choose(coloc_two, [True, False]) == "ipc"  # engine 1 on learner rank 1's GPU, on another node


def test_engines_on_rank0_node_compares_the_bundles_node_ids():
    from actors.launch import engines_on_rank0_node

    nodes = {"learner": ["n1", "n2"], "rollout": ["n2", "n1", "n1"]}  # the node id of each actor's bundle
    assert engines_on_rank0_node(nodes) == [False, True, True]


def test_worker_init_payloads_match_the_backend():
    spec = TransferSpec(host="10.0.0.5", port=4000, world_size=3, num_engines=2, backend="gloo",
                        timeout_s=9.0, secret="s3")
    gloo = worker_init_info(spec, rank_offset=2)
    assert gloo["master_address"] == "10.0.0.5" and gloo["rank_offset"] == 2 and gloo["secret"] == "s3"
    assert gloo["transport"] == "gloo" and worker_init_info(replace_backend(spec, "shm"), 2)["transport"] == "shm"
    nccl = worker_init_info(replace_backend(spec, "nccl"), rank_offset=1, nccl_unique_id=bytes(range(128)))
    assert "master_address" not in nccl and nccl["packed"] is False and len(nccl["nccl_unique_id_b64"]) > 128
    with pytest.raises(WeightSyncError, match="unique id"):
        worker_init_info(replace_backend(spec, "nccl"), rank_offset=1)
    assert worker_init_info(replace_backend(spec, "ipc"), rank_offset=1) == {"packed": False}


def replace_backend(spec: TransferSpec, backend: str) -> TransferSpec:
    from dataclasses import replace

    return replace(spec, backend=backend)


def test_calls_without_a_timeout_of_their_own_are_bounded():
    """NCCL init has no timeout: `bounded` gives it one, and names what did not finish."""
    import threading

    from actors.weight_sync import bounded

    never = threading.Event()
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match="NCCL init of the weight-transfer group did not finish within 1s"):
        bounded(never.wait, 1.0, "NCCL init of the weight-transfer group")
    assert time.monotonic() - start < 5
    assert bounded(lambda: 7, 1.0, "quick") == 7
    with pytest.raises(KeyError, match="boom"):
        bounded(lambda: {}["boom"], 1.0, "failing")
    never.set()


def test_plan_buckets_respects_limit_and_order():
    sizes = [4, 4, 4, 10, 1, 1]
    buckets = plan_buckets(sizes, 8)
    assert [list(b) for b in buckets] == [[0, 1], [2], [3], [4, 5]]
    assert [i for b in buckets for i in b] == list(range(len(sizes)))
    assert plan_buckets([], 8) == []


def test_buckets_stream_as_produced():
    """iter_buckets cuts what plan_buckets plans, and yields each bucket before the next tensor exists."""
    sizes = [4, 4, 4, 10, 1, 1, 7]
    produced: list[int] = []

    def tensors():
        for i, n in enumerate(sizes):
            produced.append(i)
            yield f"t{i}", torch.zeros(n, dtype=torch.uint8)

    seen = []
    for bucket in iter_buckets(tensors(), 8):
        seen.append([int(name[1:]) for name, _ in bucket])
        # at most the tensor that overflowed this bucket was produced beyond it
        assert max(produced) <= seen[-1][-1] + 1
    assert seen == [list(b) for b in plan_buckets(sizes, 8)]
    assert list(iter_buckets(iter([]), 8)) == []


def test_pack_unpack_roundtrip_mixed_dtypes():
    tensors = [torch.randn(3, 5), torch.arange(7, dtype=torch.int64), torch.randn(2, 2).to(torch.bfloat16)]
    metas = [TensorMeta.of(f"t{i}", t) for i, t in enumerate(tensors)]
    flat = pack_bucket(tensors)
    assert flat.numel() == sum(m.nbytes for m in metas)
    for (name, got), want, meta in zip(unpack_bucket(flat, metas), tensors, metas):
        assert name == meta.name and torch.equal(got, want)
    assert decode_bucket(encode_bucket(metas)) == metas
    assert decode_bucket(encode_end(3)) is None


def test_expected_checksums_fuse_qkv_and_gate_up():
    t = {f"model.layers.0.self_attn.{p}.weight": torch.full((2, 2), float(i)) for i, p in
         enumerate(["q_proj", "k_proj", "v_proj"])}
    t["model.norm.weight"] = torch.ones(2)
    got = expected_vllm_checksums(t.items())
    assert set(got) == {"model.layers.0.self_attn.qkv_proj.weight", "model.norm.weight"}
    fused = torch.cat([t[f"model.layers.0.self_attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")])
    assert got["model.layers.0.self_attn.qkv_proj.weight"] == digest(fused)


def test_streamed_checksums_equal_whole_tensor_digests():
    """Parts arriving out of order and a vocabulary that needs padding: same digests as concatenating."""
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(70, 4, generator=gen)  # 70 rows -> padded to 128 by vLLM
    up, gate = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    stream = ChecksumStream()
    for name, tensor in [("model.layers.1.mlp.up_proj.weight", up), ("model.embed_tokens.weight", embed),
                         ("model.layers.1.mlp.gate_proj.weight", gate)]:
        stream.add(name, tensor)
    padded = torch.cat([embed, embed.new_zeros(58, 4)])
    assert stream.checksums == {"model.embed_tokens.weight": digest(padded),
                                "model.layers.1.mlp.gate_up_proj.weight": digest(torch.cat([gate, up]))}


def test_compare_checksums_counts_and_names_differences():
    expected = {"model.norm.weight": "a", "model.embed_tokens.weight": "b", "lm_head.weight": "c"}
    reported = {"dp0:pp0:pcp0:tp0:model.norm.weight": "a", "dp0:pp0:pcp0:tp0:model.embed_tokens.weight": "x",
                "dp0:pp0:pcp0:tp0:model.rotary.inv_freq": "z"}
    assert compare_checksums(expected, reported, tp_size=1) == (2, ["dp0:pp0:pcp0:tp0:model.embed_tokens.weight"])
    # TP > 1: an engine holds shards of the embedding; only replicated norms compare
    assert compare_checksums(expected, reported, tp_size=2) == (1, [])


def shm_leftovers(secret: str) -> list[str]:
    from actors.weight_sync import SHM_DIR, shm_prefix

    return sorted(glob.glob(f"{SHM_DIR}/{shm_prefix(secret)}*"))


@pytest.fixture
def shm_store():
    """(control store under a fresh secret, the secret): what rank 0 and the workers share."""
    from torch.distributed import PrefixStore

    from cluster.network import free_port, tcp_store

    secret = secrets.token_hex(8)
    port = free_port("127.0.0.1")
    master = tcp_store("127.0.0.1", port, is_master=True, timeout_s=5.0)
    yield PrefixStore(secret, master), secret
    assert shm_leftovers(secret) == []


def test_shared_memory_buckets_survive_a_layer_that_spans_two(shm_store):
    """Rank 0 reuses each of the SHM_SLOTS regions; a receiver that keeps tensors past load_weights (vLLM's
    layerwise reload does, for a layer not complete yet) still reads what was sent, not the next bucket."""
    from actors.weight_sync import (
        ACK_KEY,
        SHM_SLOTS,
        SharedMemorySlots,
        load_from_region,
        map_region,
        shm_prefix,
    )

    store, secret = shm_store
    slots = SharedMemorySlots(store, shm_prefix(secret), receivers=[1], timeout_s=5.0)
    gen = torch.Generator().manual_seed(0)
    buckets = [[(f"b{k}.t{i}", torch.randn(96 + 8 * i, generator=gen).to(dtype)) for i, dtype in
                enumerate([torch.float32, torch.bfloat16, torch.float32])] for k in range(2 * SHM_SLOTS + 1)]
    mapped: dict[str, torch.Tensor] = {}
    loaded: dict[str, torch.Tensor] = {}
    kept: list[tuple[str, torch.Tensor]] = []

    def load_weights(views):
        for name, t in views[:-1]:
            loaded[name] = t.clone()
        kept.append(views[-1])  # the last tensor stays unprocessed, as a layer that continues next bucket

    for version in (1, 2):
        for index, bucket in enumerate(buckets):
            region = slots.write([t for _, t in bucket], version, index)
            assert os.path.exists(region["path"]) or region["path"] in mapped
            if region["path"] not in mapped:
                mapped[region["path"]] = map_region(region["path"], region["size"])
            load_from_region(load_weights, mapped[region["path"]], [TensorMeta.of(n, t) for n, t in bucket])
            store.set(ACK_KEY.format(version=version, index=index, receiver=1), b"1")
        slots.drain(version)
        assert shm_leftovers(secret) == [], "every file is unlinked once every receiver mapped it"
    assert len({p for p in mapped}) == SHM_SLOTS, "regions are reused, not made anew per bucket"
    want = {n: t for bucket in buckets for n, t in bucket}
    assert {n: torch.equal(t, want[n]) for n, t in loaded.items()} == dict.fromkeys(loaded, True)
    assert all(torch.equal(t, want[n]) for n, t in kept), "a kept tensor was overwritten by a later bucket"
    slots.close()


def test_shared_memory_fails_naming_the_silent_rank_and_what_still_uses_the_region(shm_store):
    from actors.weight_sync import SHM_SLOTS, SharedMemorySlots, load_from_region, shm_prefix

    store, secret = shm_store
    slots = SharedMemorySlots(store, shm_prefix(secret), receivers=[1, 2], timeout_s=1.0)
    tensors = [torch.ones(10)]
    for index in range(SHM_SLOTS):
        slots.write(tensors, 1, index)
    assert len(shm_leftovers(secret)) == SHM_SLOTS  # nobody mapped them yet
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"shared memory: transfer ranks \[1, 2\] did not acknowledge "
                                              r"bucket 0 of version 1 within 1s"):
        slots.write(tensors, 1, SHM_SLOTS)
    assert time.monotonic() - start < 4
    slots.close()
    assert shm_leftovers(secret) == []  # a failed send leaves nothing behind

    from actors.weight_sync import PID_KEY

    exited = subprocess.Popen(["true"])
    exited.wait()
    store.set(PID_KEY.format(receiver=2), str(exited.pid).encode())  # as a worker publishes it
    slots = SharedMemorySlots(store, shm_prefix(secret), receivers=[1, 2], timeout_s=60.0)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"transfer ranks \[2\] exited before acknowledging bucket 0"):
        for index in range(SHM_SLOTS + 1):
            slots.write(tensors, 2, index)
    assert time.monotonic() - start < 5, "a dead receiver is noticed long before the timeout"
    slots.close()

    region = torch.zeros(64, dtype=torch.uint8)
    derived: list[torch.Tensor] = []
    with pytest.raises(WeightSyncError, match="tensors derived from the bucket still use its region"):
        load_from_region(lambda views: derived.append(views[0][1][:2]), region, [TensorMeta("w", "float32", (4,))])


def test_control_store_listens_only_on_its_address():
    """issue 10: torch's TCPStore master listens on *:port whatever host it is given; ours does not."""
    import subprocess

    from cluster.network import free_port, tcp_store

    port = free_port("127.0.0.1")
    store = tcp_store("127.0.0.1", port, is_master=True, timeout_s=5.0)
    client = tcp_store("127.0.0.1", port, is_master=False, timeout_s=5.0)
    client.set("k", b"v")
    assert store.get("k") == b"v"
    listening = [line.split()[3] for line in subprocess.run(["ss", "-ltnH"], capture_output=True, text=True,
                                                             check=True).stdout.splitlines()
                 if line.split()[3].endswith(f":{port}")]
    assert listening == [f"127.0.0.1:{port}"], listening


def test_route_source_and_interface_of_loopback():
    from cluster.network import gloo_interface_for, interface_of, route_source_address

    assert route_source_address("127.0.0.1") == "127.0.0.1"
    assert interface_of("127.0.0.1") == "lo" and gloo_interface_for("127.0.0.1") == "lo"
    assert interface_of("203.0.113.7") is None  # TEST-NET-3: never local


@pytest.mark.slow  # imports vLLM's reload (~10 s)
def test_reload_warnings_for_layers_no_checkpoint_holds_are_dropped_and_others_kept():
    """vLLM's layerwise reload warns "<layer>: Failed to load weights" on every sync for rotary embeddings and
    a tied lm_head, which hold nothing to load; those are dropped inside the block, any other stays."""
    import inspect
    import logging

    from vllm.model_executor.model_loader.reload import layerwise

    from actors.weight_sync import RELOAD_MISSING, quiet_expected_reload_warnings

    assert f'"{RELOAD_MISSING}"' in inspect.getsource(layerwise)  # vLLM still words it so
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    layerwise.logger.addHandler(handler)
    try:
        layers = ("RotaryEmbedding", "Llama3RotaryEmbedding", "ParallelLMHead", "QKVParallelLinear")
        for tied in (True, False):
            with quiet_expected_reload_warnings(tied_lm_head=tied):
                for layer in layers:
                    layerwise.logger.warning(RELOAD_MISSING, layer)
        layerwise.logger.warning(RELOAD_MISSING, "RotaryEmbedding")  # outside the block: kept
    finally:
        layerwise.logger.removeHandler(handler)
    assert seen == ["QKVParallelLinear: Failed to load weights", "ParallelLMHead: Failed to load weights",
                    "QKVParallelLinear: Failed to load weights", "RotaryEmbedding: Failed to load weights"]


@pytest.mark.slow  # imports vLLM's layers (~15 s)
def test_torch_linear_dispatch_keeps_weights_and_loads_in_place(monkeypatch):
    """`use_torch_linear` gives 2-D weights `torch_linear` and keeps the parameter (vLLM's oneDNN dispatch
    would empty it); `loads_in_place` holds only when every layer with a weight-processing method is an
    unquantized one that reads its own parameter."""
    from vllm.model_executor.layers import utils
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from actors.weight_sync import loads_in_place, torch_linear, use_torch_linear

    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", utils.dispatch_cpu_unquantized_gemm)
    use_torch_linear()
    use_torch_linear()  # idempotent: one wrapper, not two
    assert utils.dispatch_cpu_unquantized_gemm.grpo_ray_torch_linear
    layers = torch.nn.ModuleList([torch.nn.Linear(8, 4), torch.nn.Linear(4, 8, bias=False)])
    for layer in layers:
        layer.quant_method = UnquantizedLinearMethod()
        weight = layer.weight
        utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
        assert layer.cpu_linear is torch_linear and layer.weight is weight and weight.numel() > 0
    assert loads_in_place(layers)
    x = torch.randn(3, 8)
    with torch.no_grad():
        layers[0].weight.mul_(2)  # what a weight sync does: copy into the parameter
    assert torch.equal(layers[0].cpu_linear(x, layers[0].weight, layers[0].bias), layers[0](x))
    other = torch.nn.Linear(8, 8)
    other.quant_method = object()  # e.g. a fused MoE or a quantized layer: its own processing after a load
    assert not loads_in_place(torch.nn.ModuleList([*layers, other]))
    layers[1].cpu_linear = lambda x, weight, bias: x  # e.g. a kernel over a packed copy
    assert not loads_in_place(layers)
    assert not loads_in_place(torch.nn.Linear(2, 2)), "a model without vLLM's layers is not in place"


# --- real engine ---------------------------------------------------------------------------------


class HFSender:
    """Test stand-in for the learner's rank 0: a HF model, a WeightSender, and HF reference outputs."""

    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def weight_sync_endpoint(self) -> tuple[str, int]:
        from cluster.network import node_endpoint

        return node_endpoint()

    def init_weight_sync(self, spec) -> None:
        from actors.weight_sync import WeightSender

        self.sender = WeightSender(spec)

    def scale(self, factor: float) -> None:
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(factor)

    def push_weights(self, version: int, bucket_bytes: int, checksums: bool = False) -> dict:
        from actors.weight_sync import iter_module_tensors

        return self.sender.send(iter_module_tensors(self.model), bucket_bytes=bucket_bytes, version=version,
                                checksums=checksums)

    def checksums(self) -> dict[str, str]:
        tied = bool(self.model.config.tie_word_embeddings)
        return expected_vllm_checksums(self.model.state_dict().items(), tie_word_embeddings=tied)

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
        return out[0, len(prompt_ids):].tolist()

    @torch.no_grad()
    def logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + completion_ids])                # [1, P + T]
        logits = self.model(ids).logits[0, len(prompt_ids) - 1: -1]     # [T, V] predicts each completion token
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


class OneRankLearner:
    """The learner group's weight-sync half (LearnerGroup's methods) around the one HFSender actor."""

    def __init__(self, sender_actor):
        self.actor, self.names = sender_actor, ["learner rank 0"]

    def weight_sync_endpoint(self):
        import ray

        return ray.get(self.actor.weight_sync_endpoint.remote())

    def init_weight_sync_async(self, spec):
        return [self.actor.init_weight_sync.remote(spec)]

    def push_weights_async(self, version, bucket_bytes, *, checksums=False):
        return [self.actor.push_weights.remote(version, bucket_bytes, checksums)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_engines):
    import ray
    from ray import cloudpickle

    from actors.engine_group import EngineGroup
    from actors.weight_sync import WeightSync
    from examples.tiny_model import write_test_model

    sender_dir = write_test_model(tmp_path_factory.mktemp("models") / "b", seed=1, hidden_size=128, num_layers=2)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    # The suite's engine 0 (model A), taken over: its weights change here. vLLM's oneDNN kernels (the
    # default) and its layerwise reload; the in-place kernels have a test of their own.
    engine = tiny_engines.take(0)
    sender = ray.remote(num_cpus=1)(HFSender).remote(str(sender_dir))
    group = EngineGroup([engine], control_timeout_s=60.0)
    try:
        sync = WeightSync(group, OneRankLearner(sender), backend="gloo", timeout_s=SYNC_TIMEOUT_S,
                          bucket_bytes=1 << 16, checksum_every=1)
        spec = sync.connect()
        assert spec.host == "127.0.0.1"  # a local Ray reports loopback as the node address
        yield group, engine, sender, sync
    finally:
        if group.recorded:  # unless test_sync_to_killed_engine_fails_within_timeout removed it already
            group.shutdown()
        ray.kill(sender)


def _sync(sync, version: int, bucket_bytes: int = 1 << 16) -> dict:
    sync.bucket_bytes = bucket_bytes
    return sync.push(version)


@pytest.mark.slow
def test_greedy_after_sync_equals_hf_model(setup):
    import ray

    group, _, sender, sync = setup
    before = group.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, stop=(), seed=0)
    stats = _sync(sync, 1)
    assert stats["weight_sync_buckets"] > 1 and stats["weight_sync_bytes"] > 0
    assert stats["weight_sync_checksums_compared"] >= 5
    after = group.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, stop=(), seed=0)
    assert after.policy_version == 1 and before.policy_version == 0
    want = ray.get([sender.greedy.remote(list(ids), 12) for ids in after.prompt_token_ids])
    got = [list(g[0].token_ids) for g in after.completions]
    assert got == want
    assert got != [list(g[0].token_ids) for g in before.completions], "the new weights changed nothing"


@pytest.mark.slow
def test_sampling_logprobs_match_hf(setup):
    import ray

    group, _, sender, _ = setup
    batch = group.generate(PROMPTS, n=4, temperature=1.0, top_p=1.0, max_tokens=16, stop=(), seed=3)
    pairs = [(list(ids), list(c.token_ids), c.rollout_logprobs)
             for ids, g in zip(batch.prompt_token_ids, batch.completions) for c in g]
    ref = ray.get([sender.logprobs.remote(p, t) for p, t, _ in pairs])
    diff = max(abs(a - b) for (_, _, lp), r in zip(pairs, ref) for a, b in zip(lp, r))
    print(f"max |vLLM - HF| logprob = {diff:.2e} over {batch.num_tokens} tokens")
    assert diff < LOGPROB_TOL


@pytest.mark.slow
def test_versions_increase_and_checksums_match_sender(setup):
    import ray

    from actors.rollout import StaleEngineError

    group, _, sender, sync = setup
    version = group.expected_version + 1
    ray.get(sender.scale.remote(0.5))
    _sync(sync, version, bucket_bytes=1 << 20)
    [held] = group.versions(with_checksums=True)
    assert held.policy_version == version
    want = ray.get(sender.checksums.remote())
    got = {k.split(":")[-1]: v for k, v in held.checksums.items()}
    assert len(got) >= 5, f"too few checksums to prove anything: {sorted(got)}"
    assert {k: want.get(k) for k in got} == got
    with pytest.raises(ValueError, match="increase"):
        _sync(sync, version)
    group.expected_version = version + 7  # as if a sync had been missed
    with pytest.raises(StaleEngineError):
        group.generate(PROMPTS, n=2, temperature=1.0, top_p=1.0, max_tokens=4, stop=(), seed=0)
    group.expected_version = version


@pytest.mark.slow
def test_shared_memory_sync_delivers_the_senders_weights(setup):
    """The module's engine (started for gloo: one engine class serves both CPU backends) joins a shm group:
    every bucket through two reused /dev/shm files, the engine then generates what the sender does,
    its checksums equal the sender's bytes, and nothing is left in /dev/shm."""
    import ray

    from actors.weight_sync import WeightSync

    group, _, sender, sync = setup
    shm = WeightSync(group, OneRankLearner(sender), backend="shm", timeout_s=SYNC_TIMEOUT_S,
                     bucket_bytes=1 << 16, checksum_every=1)
    try:
        spec = shm.connect()
        ray.get(sender.scale.remote(1.5))
        stats = shm.push(group.expected_version + 1)
        assert stats["weight_sync_buckets"] > 4 and stats["weight_sync_checksums_compared"] >= 5
        assert shm_leftovers(spec.secret) == []
        batch = group.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, stop=(), seed=0)
        want = ray.get([sender.greedy.remote(list(ids), 12) for ids in batch.prompt_token_ids])
        assert [list(g[0].token_ids) for g in batch.completions] == want
    finally:
        sync.connect()  # the tests after this one use the module's gloo group


@pytest.mark.slow
def test_torch_linear_engine_takes_the_weights_in_place(setup, tmp_path):
    """An engine with `rollout.cpu_linear: torch` keeps its linear weights as parameters (no
    oneDNN repacking), so a sync copies into them without vLLM's layerwise reload: afterwards the engine
    generates what the sender does, and its checksums, which now cover the fused qkv and gate_up weights
    too, equal the sender's bytes."""
    import ray

    from actors.engine_group import EngineGroup
    from actors.rollout import RolloutWorker
    from actors.weight_sync import WeightSync
    from examples.tiny_model import write_test_model

    _, _, sender, sync = setup
    model_dir = write_test_model(tmp_path / "c", seed=2, hidden_size=128, num_layers=2)  # the sender's shapes
    engine = ray.remote(num_cpus=1)(RolloutWorker).remote(str(model_dir), max_model_len=128, seed=0,
                                                          cpu_linear="torch")
    group = EngineGroup([engine], control_timeout_s=60.0)
    group.wait_until_up()  # records its vLLM processes, which group.shutdown() then removes
    shm = WeightSync(group, OneRankLearner(sender), backend="shm", timeout_s=SYNC_TIMEOUT_S,
                     bucket_bytes=1 << 16, checksum_every=1)
    try:
        before = group.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, stop=(), seed=0)
        shm.connect()
        stats = shm.push(1)
        assert stats["weight_sync_checksums_compared"] >= 5
        [held] = group.versions(with_checksums=True)
        got = {k.split(":")[-1]: v for k, v in held.checksums.items()}
        want = ray.get(sender.checksums.remote())
        assert "model.layers.0.self_attn.qkv_proj.weight" in got and "model.layers.1.mlp.down_proj.weight" in got
        assert {k: want.get(k) for k in got} == got
        after = group.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, stop=(), seed=0)
        hf = ray.get([sender.greedy.remote(list(ids), 12) for ids in after.prompt_token_ids])
        assert [list(g[0].token_ids) for g in after.completions] == hf
        assert hf != [list(g[0].token_ids) for g in before.completions], "the new weights changed nothing"
    finally:
        group.shutdown()
        sync.connect()  # the tests after this one use the module's gloo group


@pytest.mark.slow
def test_a_push_during_a_generate_lets_it_finish_on_its_version_and_the_next_samples_the_new_one(setup):
    """Async rollouts (trainer.overlap): the push of version v+1 reaches the engine while a request still
    generates with version v. The request finishes on v (sampling and receiving share one lock, so each
    completion is sampled by one version, recorded on its batch and hence on every token): its tokens and
    logprobs are those the same seeded request gave before the push. Then the engine loads v+1, and the
    next generate samples with v+1: its logprobs are the sender's new weights'."""
    import ray

    group, engine, sender, sync = setup
    version = group.expected_version
    sampled = dict(n=1, temperature=1.0, top_p=1.0, stop=(), seed=7)
    before = group.generate(PROMPTS, max_tokens=12, **sampled)
    ray.get(sender.scale.remote(0.8))
    in_flight = engine.generate.remote(PROMPTS * 24, max_tokens=160, expected_version=version, **sampled)
    time.sleep(0.3)
    assert ray.wait([in_flight], timeout=0)[1], "the generate finished before the push began: nothing overlapped"
    _sync(sync, version + 1)
    assert ray.wait([in_flight], timeout=5)[0], "the push returned before the generate in flight finished"
    old = ray.get(in_flight)
    assert old.policy_version == version
    for g_old, g_before in zip(old.completions[:len(PROMPTS)], before.completions, strict=True):
        n = len(g_before[0].token_ids)
        assert list(g_old[0].token_ids[:n]) == list(g_before[0].token_ids)
        assert max(abs(a - b) for a, b in zip(g_old[0].rollout_logprobs[:n], g_before[0].rollout_logprobs)) < LOGPROB_TOL

    def gap_to_sender(batch) -> float:
        pairs = [(list(ids), list(g[0].token_ids), g[0].rollout_logprobs)
                 for ids, g in zip(batch.prompt_token_ids, batch.completions)]
        ref = ray.get([sender.logprobs.remote(p, t) for p, t, _ in pairs])
        return max(abs(a - b) for (_, _, lp), r in zip(pairs, ref) for a, b in zip(lp, r))

    after = group.generate(PROMPTS, max_tokens=12, **sampled)
    assert after.policy_version == version + 1
    assert gap_to_sender(after) < LOGPROB_TOL  # sampled by the new weights
    assert gap_to_sender(before) > 10 * LOGPROB_TOL  # which the old version's logprobs are not


@pytest.mark.slow
def test_sync_to_killed_engine_fails_within_timeout(setup):
    """... and what the killed engine left (its vLLM engine core, which outlives the actor, and the
    /dev/shm files it maps) is removed by the engine group's reap, as an engine replacement does."""
    import psutil
    import ray

    from tests.test_end_to_end import VLLM_SHM

    group, engine, sender, sync = setup
    recorded = group.recorded[0]  # by connect's wait_until_up
    assert len(recorded.processes) >= 2 and any(os.path.basename(p).startswith(VLLM_SHM) for p in recorded.shm), recorded
    ray.kill(engine)
    try:
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match="engine 0 failed: the actor died"):
            _sync(sync, group.expected_version + 1)
        assert time.monotonic() - start < SYNC_TIMEOUT_S + 5
    finally:
        group.reap([0])
    left = [pid for pid, _ in recorded.processes
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [] and [p for p in recorded.shm if os.path.exists(p)] == [], (left, recorded.shm)
