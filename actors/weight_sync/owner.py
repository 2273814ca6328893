"""The owner of weight sync, on the controller: `WeightSync` forms the transfer group once, pushes each
version and proves what every engine holds.

    WeightSync (controller) ── connect() once: rank 0's node address + a port picked there, a per-run secret
        │                       learner rank 0: WeightSender (send.py) ── control TCPStore (host, port), the group
        │                       engine e, worker w: joins as rank 1 + sum(tp of engines < e) + w (receive.py)
        └─ push(version): rank 0 streams buckets as the TP/PP gather produces them, the engines load them
           concurrently; then every engine must report v, and every `checksum_every` versions its checksums
           must equal the ones rank 0 computed from the bytes it sent.

It sees the two groups through the small protocols below, what it uses of them and nothing else:
`Senders` (actors.learner_group.LearnerGroup) and `Receivers` (actors.engine_group.EngineGroup). The
engine group needs the owner back only when it replaced an engine: its `reload_weights` hook, which the
builder sets to `WeightSync.reload` (trainer.system).

Every wait has a deadline: the controller's wait on all sides by `cluster.calls.get_all`, per bucket
`timeout_s` on the two sides, and a whole push `push_deadline_s`, which grows with the model's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from actors.weight_sync.checksums import compare_checksums
from actors.weight_sync.spec import Backend, TransferSpec, WeightSyncError
from trainer.config import RolloutConfig

if TYPE_CHECKING:
    from trainer.types import WeightVersion


class Senders(Protocol):
    """The learner ranks as the owner uses them (actors.learner_group.LearnerGroup): rank 0 (ipc: rank e)
    sends, every rank takes part in the gather."""

    @property
    def names(self) -> list[str]: ...

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """(learner rank 0's node address as Ray reports it there, a port picked on that node)."""
        ...

    def init_weight_sync_async(self, spec: TransferSpec) -> list:
        """Refs of every rank joining the transfer group."""
        ...

    def push_weights_async(self, version: int, bucket_bytes: int, *, checksums: bool = False) -> list:
        """Refs of a push, rank 0's first: its result holds the stats and the checksums of what it sent."""
        ...


class Receivers(Protocol):
    """The engines as the owner uses them (actors.engine_group.EngineGroup)."""

    tp_sizes: list[int]
    expected_version: int
    """The version every engine must hold before it may sample: set by the owner once every engine holds it."""
    start_engine: Callable[[int], Any] | None
    """None: a failed engine cannot be replaced (a sync broken by an engine's death then fails the run)."""
    awaiting_weights: set[int]
    """Engines replaced since the last push that have not joined the transfer group (async rollouts)."""

    @property
    def names(self) -> list[str]: ...

    @property
    def world_size(self) -> int:
        """1 (the sender) + every vLLM worker of every engine."""
        ...

    def wait_until_up(self) -> list[WeightVersion]: ...

    def init_weight_sync_async(self, spec: TransferSpec) -> list[Any]: ...

    def receive_weights_async(self, version: int) -> list[Any]: ...

    def versions(self, with_checksums: bool = False) -> list[WeightVersion]: ...

    def check_versions(self) -> None:
        """Raise unless every engine holds `expected_version`."""
        ...

    def dead_engines(self) -> Mapping[int, Any]:
        """The engines whose actor died or does not answer, each with its failure."""
        ...

    def replace(self, failed: Any, *, with_others: bool = False) -> None:
        """Start new engines for the failed ones (`with_others`: every engine) and load the current weights
        into them (through `reload_weights`, i.e. `WeightSync.reload`)."""
        ...


CONNECT_MARGIN_S = 30.0
"""Extra time the controller gives the group to form beyond the transfer timeout (actor start-up)."""


def push_deadline_s(nbytes: int, *, bucket_timeout_s: float, min_bytes_per_s: float, checksums: bool) -> float:
    """The controller's deadline for one whole push of `nbytes`: every bucket has `bucket_timeout_s` of its own,
    and the push as a whole (the TP/PP gathers, every bucket, the engines' reload) gets that plus its bytes at
    a conservative bandwidth floor; a checksum step hashes every byte on both sides too, so twice the bytes.
    A 7B model in bf16 (15 GB) at a floor of 50 MB/s: 120 s + 300 s, 720 s with checksums."""
    passes = 2 if checksums else 1
    return bucket_timeout_s + passes * nbytes / min_bytes_per_s


class WeightSync:
    """Weight sync end to end, from the controller: form the group once, push a version, verify it.

    `learner_group` (`Senders`) hosts the sender on rank 0 (ipc: rank e serves engine e);
    `engine_group` (`Receivers`) the receivers. Checksums of every engine are compared
    with the sender's every `checksum_every` versions (0: never), since hashing costs a pass over the
    weights on both sides.
    """

    def __init__(self, engine_group: Receivers, learner_group: Senders, *, backend: Backend, timeout_s: float,
                 bucket_bytes: int, checksum_every: int = 1, push_bytes: int = 0,
                 min_bytes_per_s: float = RolloutConfig.weight_sync_min_bytes_per_s) -> None:
        """`timeout_s` bounds each bucket; a whole push gets `push_deadline_s` of `push_bytes` (the model's
        size in its dtype, as the builder estimates it; raised to what a push really sent once one has)."""
        self.engine_group, self.learner_group = engine_group, learner_group
        self.backend, self.timeout_s = backend, timeout_s
        self.bucket_bytes, self.checksum_every = bucket_bytes, checksum_every
        self.push_bytes, self.min_bytes_per_s = push_bytes, min_bytes_per_s
        self.spec: TransferSpec | None = None

    def connect(self) -> TransferSpec:
        """Form the transfer group: rank 0 and every engine worker join together (once per run)."""
        import secrets

        from cluster.calls import get_all

        self.engine_group.wait_until_up()  # the engines must be up before the group's timeout starts ticking
        host, port = self.learner_group.weight_sync_endpoint()
        self.spec = TransferSpec(host=host, port=port, world_size=self.engine_group.world_size,
                                 num_engines=len(self.engine_group.tp_sizes), backend=self.backend,
                                 timeout_s=self.timeout_s, secret=secrets.token_hex(16))
        learner_refs = self.learner_group.init_weight_sync_async(self.spec)
        engine_refs = self.engine_group.init_weight_sync_async(self.spec)
        get_all([*learner_refs, *engine_refs], what=f"forming the {self.backend} weight-transfer group at "
                f"{host}:{port}", names=self.learner_group.names + self.engine_group.names,
                timeout_s=self.timeout_s + CONNECT_MARGIN_S, error=WeightSyncError)
        return self.spec

    def reload(self) -> None:
        """After engines were replaced: form the transfer group anew (a new port, secret and sender) and
        send the current weights again as `expected_version` (none to send at version 0: every engine
        loaded those from disk); every engine must then hold it."""
        self.connect()
        if self.engine_group.expected_version > 0:
            self._send(self.engine_group.expected_version)

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's weights to every engine as `version`; every engine must then hold it, and
        on a checksum step hold exactly the bytes rank 0 sent.

        When the sync fails because an engine died, the error says so (not the sender's broken pipe);
        if replacements are allowed, every engine is restarted (the survivors hold half a version),
        given the previous version, and the push repeated."""
        if self.spec is None:
            raise WeightSyncError("push before connect: the transfer group was never formed")
        if version <= self.engine_group.expected_version:
            raise ValueError(f"weight versions must increase: {version} after {self.engine_group.expected_version}")
        try:
            if self.engine_group.awaiting_weights:  # replaced during an asynchronous generate: they join now
                self.connect()
            metrics = self._send(version)
            self.engine_group.awaiting_weights.clear()
            return metrics
        except WeightSyncError as e:
            dead = self.engine_group.dead_engines()
            if not dead:
                raise
            cause = "; ".join(str(f) for f in dead.values())
            if self.engine_group.start_engine is None:
                raise WeightSyncError(f"weight sync of version {version} failed because {cause} "
                                      f"(what the other side saw: {e})") from e
        self.engine_group.replace(dead, with_others=True)
        metrics = self._send(version)
        self.engine_group.awaiting_weights.clear()
        return metrics

    def _send(self, version: int) -> dict[str, float]:
        from cluster.calls import get_all

        verify = bool(self.checksum_every) and version % self.checksum_every == 0
        deadline = push_deadline_s(self.push_bytes, bucket_timeout_s=self.timeout_s,
                                   min_bytes_per_s=self.min_bytes_per_s, checksums=verify)
        start = time.perf_counter()
        learner_refs = self.learner_group.push_weights_async(version, self.bucket_bytes, checksums=verify)
        engine_refs = self.engine_group.receive_weights_async(version)
        results = get_all([*learner_refs, *engine_refs], what=f"weight sync of version {version} "
                          f"({self.push_bytes / 1e9:.2f} GB, deadline {deadline:.0f}s)",
                          names=self.learner_group.names + self.engine_group.names,
                          timeout_s=deadline, error=WeightSyncError)
        stats = results[0]
        self.push_bytes = max(self.push_bytes, int(stats["bytes"]))  # the estimate, corrected by the real size
        self.engine_group.expected_version = version
        self.engine_group.check_versions()
        metrics = {"weight_sync_bytes": float(stats["bytes"]), "weight_sync_buckets": float(stats["buckets"]),
                   "weight_sync_s": time.perf_counter() - start}
        if verify:
            metrics["weight_sync_checksums_compared"] = float(self.verify(stats["checksums"]))
        return metrics

    def verify(self, expected: dict[str, str]) -> int:
        """Compare every engine's checksums with the sender's; returns how many parameters matched."""
        total = 0
        for held, tp in zip(self.engine_group.versions(with_checksums=True), self.engine_group.tp_sizes):
            compared, differ = compare_checksums(expected, held.checksums, tp_size=tp)
            if differ:
                raise WeightSyncError(f"engine {held.engine} holds version {held.policy_version} but "
                                      f"{len(differ)} of {compared} parameters differ from what learner rank 0 "
                                      f"sent, e.g. {differ[:3]}")
            if compared == 0:
                raise WeightSyncError(f"engine {held.engine} reported no checksum comparable with the sender's "
                                      f"({len(held.checksums)} reported, {len(expected)} sent)")
            total += compared
        return total
