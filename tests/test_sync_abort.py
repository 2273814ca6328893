"""An engine that dies during an NCCL weight push must not wedge the learner (actors.weight_sync): rank 0
aborts the communicator before anything else waits on its stream, never uses that group again, and each
reload forms one new communicator while the old one is gone, however often it happens.

The path is the one a run executes on a GPU (`LearnerWorker.init_weight_sync` / `push_weights` around
`WeightSender`), with two stand-ins where CUDA would be: vLLM's `PyNcclCommunicator` (`FakeCommunicator`
records broadcasts and `destroy`, vLLM's ncclCommAbort), and the wait on rank 0's stream (`stream_wait`:
a broadcast stays pending while any receiver is gone, until the communicator is aborted)."""

from __future__ import annotations

import types

import pytest
import torch

import actors.weight_sync.send as ws
from actors.learner import LearnerWorker
from actors.weight_sync import NCCL_BACKEND, TransferSpec, WeightSyncError
from cluster.network import free_port

LOOPBACK = "127.0.0.1"


class FakeCommunicator:
    """What rank 0 uses of vLLM's PyNcclCommunicator: broadcast (enqueued), destroy (ncclCommAbort)."""

    made: list[FakeCommunicator] = []

    def __init__(self, world_size: int, receivers_alive: bool):
        self.world_size, self.receivers_alive = world_size, receivers_alive
        self.broadcasts, self.destroyed = 0, 0
        FakeCommunicator.made.append(self)

    def broadcast(self, tensor, src, stream=None):
        assert not self.destroyed, "a broadcast on an aborted communicator"
        self.broadcasts += 1

    def destroy(self):
        self.destroyed += 1

    @property
    def stream_blocked(self) -> bool:
        """A broadcast a dead receiver never joined holds the stream until the communicator is aborted."""
        return self.broadcasts > 0 and not self.receivers_alive and not self.destroyed


@pytest.fixture
def fake_nccl(monkeypatch):
    """Rank 0's side of the NCCL group on CPU: communicators from `FakeCommunicator`; waits on the stream
    time out while any live communicator's broadcast is held by a dead receiver."""
    FakeCommunicator.made = []
    alive = {"receivers": True}
    waits: list[str] = []

    def communicator(store, spec):
        return FakeCommunicator(spec.world_size, alive["receivers"])

    def stream_wait(timeout_s, what):
        waits.append(what)
        if any(c.stream_blocked for c in FakeCommunicator.made):
            raise WeightSyncError(f"{what} did not complete within {timeout_s:.0f}s (a receiver is gone?)")

    monkeypatch.setattr(ws, "nccl_communicator", communicator)
    monkeypatch.setattr(ws, "wait_cuda", stream_wait)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: None)
    return types.SimpleNamespace(alive=alive, waits=waits)


def spec() -> TransferSpec:
    """A new group, as `WeightSync.connect` forms one (a new port and secret each time)."""
    return TransferSpec(host=LOOPBACK, port=free_port(LOOPBACK), world_size=3, num_engines=2,
                        backend=NCCL_BACKEND, timeout_s=2.0, secret=f"s{free_port(LOOPBACK)}")


def learner_rank0():
    """Learner rank 0 as the weight-sync verbs see it: its HF tensors and the sender it holds."""
    worker = types.SimpleNamespace(rank=0, role="policy", _sender=None,
                                   _offloader=types.SimpleNamespace(active=False))
    worker.hf_state_dict_iter = lambda receivers=(0,): iter([("a.weight", torch.ones(4, 4)), ("b.weight", torch.zeros(8))])
    return worker


def push(worker, version):
    return LearnerWorker.push_weights(worker, version, bucket_bytes=64)


def test_a_failed_push_aborts_the_communicator_and_a_reload_forms_a_new_one(fake_nccl):
    worker = learner_rank0()
    LearnerWorker.init_weight_sync(worker, spec())
    assert push(worker, 1)["tensors"] == 2
    [first] = FakeCommunicator.made
    assert first.broadcasts == 2 and first.destroyed == 0

    fake_nccl.alive["receivers"] = False  # an engine dies while the next version is on the wire
    first.receivers_alive = False
    with pytest.raises(WeightSyncError, match="sending version 2 failed .*did not complete"):
        push(worker, 2)
    assert first.destroyed == 1, "the communicator must be aborted on the failure"
    assert not first.stream_blocked
    assert fake_nccl.waits[-1] == "rank 0's stream after ncclCommAbort"  # checked free again after the abort
    broadcasts = first.broadcasts
    with pytest.raises(WeightSyncError, match="torn down"):  # the old group is never used again
        push(worker, 3)
    assert first.broadcasts == broadcasts

    fake_nccl.alive["receivers"] = True  # the replacement engines are up: WeightSync.reload forms a new group
    LearnerWorker.init_weight_sync(worker, spec())
    second = FakeCommunicator.made[-1]
    assert second is not first and first.destroyed == 1
    assert push(worker, 2)["tensors"] == 2 and second.broadcasts == 2


def test_repeated_failures_leave_one_communicator_alive(fake_nccl):
    worker = learner_rank0()
    for version in range(1, 6):  # every push fails, every reload forms a new group
        fake_nccl.alive["receivers"] = False
        LearnerWorker.init_weight_sync(worker, spec())
        with pytest.raises(WeightSyncError):
            push(worker, version)
        alive = [c for c in FakeCommunicator.made if not c.destroyed]
        assert alive == [], f"after failure {version}: {len(alive)} communicators not aborted"
    fake_nccl.alive["receivers"] = True
    LearnerWorker.init_weight_sync(worker, spec())
    push(worker, 6)
    assert len(FakeCommunicator.made) == 6
    assert [c.destroyed for c in FakeCommunicator.made] == [1] * 5 + [0]  # each aborted once, the last in use
    worker._sender.close()  # what LearnerWorker.shutdown does with it at the end of a run
    assert FakeCommunicator.made[-1].destroyed == 1


def test_a_reload_while_the_group_is_healthy_aborts_the_old_communicator(fake_nccl):
    worker = learner_rank0()
    LearnerWorker.init_weight_sync(worker, spec())
    push(worker, 1)
    LearnerWorker.init_weight_sync(worker, spec())  # e.g. an engine died in generate, not in a push
    first, second = FakeCommunicator.made
    assert first.destroyed == 1 and second.destroyed == 0


class FakeAsyncLLM:
    """What RolloutWorker.init_weight_sync (actors.rollout_sync.WeightReceiver.join) calls on vLLM's AsyncLLM,
    recorded in order."""

    def __init__(self):
        self.calls: list[str] = []

    async def init_weight_transfer_engine(self, request):
        self.calls.append("init")

    async def shutdown_weight_transfer_engine(self):  # vLLM 0.32: every worker's engine.shutdown() (ncclCommAbort)
        self.calls.append("shutdown")


def test_an_engine_leaves_its_previous_group_before_joining_a_new_one():
    """A surviving engine is told to join every new group (another engine was replaced): vLLM's
    `init_transfer_engine` alone would replace its communicator without freeing it."""
    import asyncio

    from actors.rollout_sync import WeightReceiver
    from cluster.network import tcp_store

    engine = WeightReceiver(FakeAsyncLLM(), engine_index=1, backend="gloo")  # RolloutWorker.init_weight_sync's
    masters = []
    for _ in range(3):
        group = TransferSpec(host=LOOPBACK, port=free_port(LOOPBACK), world_size=2, num_engines=1,
                             backend="gloo", timeout_s=5.0, secret="s")
        masters.append(tcp_store(LOOPBACK, group.port, is_master=True, timeout_s=5.0))  # learner rank 0's
        asyncio.run(engine.join(group, 1))
    assert engine.engine.calls == ["init", "shutdown", "init", "shutdown", "init"]
