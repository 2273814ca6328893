"""Weight-sync deadlines: each bucket is bounded by `rollout.weight_sync_timeout_s`, the whole push by a figure
that grows with its bytes (`push_deadline_s`), so a 7B push is neither killed for being large nor left to
hang on one stalled bucket. Stand-ins for the engine, its control store and the two groups; no Ray, no vLLM."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from actors import rollout_sync
from actors.rollout_sync import WeightReceiver
from actors.weight_sync import (
    BUCKET_KEY,
    TensorMeta,
    TransferSpec,
    WeightSync,
    WeightSyncError,
    encode_bucket,
    encode_end,
    push_deadline_s,
)
from trainer.config import ConfigError, RolloutConfig, TrainConfig, apply_overrides
from trainer.plan import KNOWN_SHAPES

QWEN_7B_BF16 = KNOWN_SHAPES["Qwen2.5-7B"].num_params * 2
"""15.2 GB: what one push of Qwen2.5-7B in bf16 sends."""


def test_the_push_deadline_grows_with_the_bytes_and_doubles_on_checksum_steps():
    ro = RolloutConfig()
    kw = dict(bucket_timeout_s=ro.weight_sync_timeout_s, min_bytes_per_s=ro.weight_sync_min_bytes_per_s)
    tiny = push_deadline_s(1 << 20, checksums=False, **kw)
    big = push_deadline_s(QWEN_7B_BF16, checksums=False, **kw)
    assert tiny == pytest.approx(ro.weight_sync_timeout_s, rel=0.01)  # a tiny model: the bucket bound alone
    assert big == pytest.approx(ro.weight_sync_timeout_s + QWEN_7B_BF16 / ro.weight_sync_min_bytes_per_s)
    assert big > 3 * ro.weight_sync_timeout_s
    assert push_deadline_s(2 * QWEN_7B_BF16, checksums=False, **kw) - ro.weight_sync_timeout_s == \
        pytest.approx(2 * (big - ro.weight_sync_timeout_s))  # linear in the bytes
    with_checksums = push_deadline_s(QWEN_7B_BF16, checksums=True, **kw)
    assert with_checksums - ro.weight_sync_timeout_s == pytest.approx(2 * (big - ro.weight_sync_timeout_s))


def test_the_bandwidth_floor_is_a_checked_config_field():
    with pytest.raises(ConfigError, match=r"rollout\.weight_sync_min_bytes_per_s = 10\.0 is out of range"):
        apply_overrides(TrainConfig(), ["rollout.weight_sync_min_bytes_per_s=10"]).validate()
    assert apply_overrides(TrainConfig(), ["rollout.weight_sync_min_bytes_per_s=1e9"]).validate()


class _Groups:
    """Stand-ins for the learner and engine groups of a push: what the push waits on, and with what deadline."""

    def __init__(self, sent_bytes: int):
        self.names, self.tp_sizes, self.expected_version = ["engine 0"], [1], 0
        self.awaiting_weights: set[int] = set()
        self.sent_bytes = sent_bytes

    def push_weights_async(self, version, bucket_bytes, checksums=False):
        return [{"bytes": self.sent_bytes, "buckets": 3, "checksums": {"model.norm.weight": "d"} if checksums else {}}]

    def versions(self, with_checksums=False):
        return [SimpleNamespace(engine=0, policy_version=self.expected_version,
                                checksums={"dp0:pp0:pcp0:tp0:model.norm.weight": "d"})]

    def receive_weights_async(self, version):
        return [version]

    def check_versions(self):
        pass


def test_a_large_push_gets_a_deadline_for_its_size_not_the_bucket_bound(monkeypatch):
    """The push of a 7B model is waited on for the bucket bound plus its bytes at the floor (a stand-in for
    `get_all` records the deadline); the estimate is corrected upwards by what a push really sent."""
    import cluster.calls

    deadlines: list[float] = []

    def get_all(refs, *, what, names, timeout_s, error):
        deadlines.append(timeout_s)
        assert "GB, deadline" in what
        return list(refs)

    monkeypatch.setattr(cluster.calls, "get_all", get_all)
    groups = _Groups(sent_bytes=QWEN_7B_BF16)
    ro = RolloutConfig()
    sync = WeightSync(groups, groups, backend="nccl", timeout_s=ro.weight_sync_timeout_s, bucket_bytes=1 << 30,
                      checksum_every=2, push_bytes=QWEN_7B_BF16 // 2, min_bytes_per_s=ro.weight_sync_min_bytes_per_s)
    sync.spec = object()  # connected
    sync.push(1)  # estimate: half the model
    sync.push(2)  # corrected to the bytes sent; a checksum step
    sync.push(3)
    floor = ro.weight_sync_min_bytes_per_s
    assert deadlines == pytest.approx([ro.weight_sync_timeout_s + QWEN_7B_BF16 / 2 / floor,
                                       ro.weight_sync_timeout_s + 2 * QWEN_7B_BF16 / floor,
                                       ro.weight_sync_timeout_s + QWEN_7B_BF16 / floor])
    needed = QWEN_7B_BF16 / 100e6  # the push at a realistic 100 MB/s (NCCL does far more)
    assert needed > ro.weight_sync_timeout_s and deadlines[-1] > needed  # the old single deadline killed it


class _Store:
    """The control store as one engine sees it: buckets announced by the sender, waits bounded."""

    def __init__(self, entries: dict[str, bytes]):
        self.entries = entries

    def wait(self, keys, timeout):
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise RuntimeError(f"Wait timeout for {missing}")

    def get(self, key):
        return self.entries[key]


class _StallingEngine:
    """vLLM's AsyncLLM as the receive loop uses it: bucket `stall_at` never finishes loading."""

    def __init__(self, stall_at: int):
        self.stall_at, self.loaded = stall_at, 0

    async def update_weights(self, request):
        if self.loaded == self.stall_at:
            await asyncio.sleep(3600)
        self.loaded += 1


def _worker(store: _Store, engine, timeout_s: float) -> WeightReceiver:
    worker = WeightReceiver(engine, engine_index=0, backend="gloo")  # the receive loop alone: no vLLM engine
    worker.store = store
    worker.spec = TransferSpec(host="127.0.0.1", port=1, world_size=2, num_engines=1, backend="gloo",
                               timeout_s=timeout_s, secret="s")
    return worker


def _announced(version: int, buckets: int) -> dict[str, bytes]:
    metas = [TensorMeta("model.norm.weight", "float32", (4,))]
    entries = {BUCKET_KEY.format(version=version, index=i): encode_bucket(metas) for i in range(buckets)}
    entries[BUCKET_KEY.format(version=version, index=buckets)] = encode_end(buckets)
    return entries


def test_a_bucket_that_stalls_in_the_engine_raises_naming_the_bucket(monkeypatch):
    monkeypatch.setattr(rollout_sync, "RPC_MARGIN_S", 0.0)
    worker = _worker(_Store(_announced(version=7, buckets=4)), _StallingEngine(stall_at=2), timeout_s=0.2)
    with pytest.raises(WeightSyncError, match=r"engine 0: bucket 2 of version 7 \(1 tensors, 16 bytes\) was not "
                                              r"loaded within 0s"):
        asyncio.run(worker.receive_buckets(7))
    assert worker.engine.loaded == 2


def test_a_bucket_the_sender_never_announces_raises_naming_the_bucket():
    entries = _announced(version=3, buckets=4)
    del entries[BUCKET_KEY.format(version=3, index=1)]  # the sender stalled after bucket 0
    worker = _worker(_Store(entries), _StallingEngine(stall_at=-1), timeout_s=0.2)
    with pytest.raises(WeightSyncError, match=r"engine 0: no bucket 1 of version 3 from learner rank 0 within 0\.2s"):
        asyncio.run(worker.receive_buckets(3))


def test_a_complete_push_loads_every_bucket():
    worker = _worker(_Store(_announced(version=1, buckets=3)), _StallingEngine(stall_at=-1), timeout_s=0.2)
    assert asyncio.run(worker.receive_buckets(1)) == 3 and worker.engine.loaded == 3
    assert replace(worker.spec, timeout_s=1.0).timeout_s == 1.0
