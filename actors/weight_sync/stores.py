"""The control store and the process groups built on it, each wait bounded.

The control store is a TCPStore on learner rank 0's node (the sender is its master, every engine worker a
client), its keys under the run's secret; it carries each bucket's announcement (`actors.weight_sync.spec`
keys). The gloo group of the CPU backend is made directly from `ProcessGroupGloo` on a prefix of that
store, outside torch.distributed's default group. `bounded` gives a deadline to a call that has none (NCCL
init).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from actors.weight_sync.spec import IPC_BACKEND, TransferSpec, WeightSyncError


def control_store(spec: TransferSpec, *, is_master: bool) -> Any:
    """The transfer's control store (the master listens only on spec.host), keys under the run's secret."""
    from torch.distributed import PrefixStore

    from cluster.network import tcp_store

    return PrefixStore(spec.secret, tcp_store(spec.host, spec.port, is_master=is_master, timeout_s=spec.timeout_s))


def engine_scope(store: Any, spec: TransferSpec, engine: int) -> Any:
    """The control store as one engine and its sender see it: under ipc each (learner rank e, engine e) pair
    streams its own buckets, so their keys live under "engine<e>/"; the other backends share one stream."""
    from torch.distributed import PrefixStore

    return PrefixStore(f"engine{engine}", store) if spec.backend == IPC_BACKEND else store


def make_gloo_group(local_address: str, store: Any, rank: int, world_size: int, timeout_s: float) -> Any:
    """A ProcessGroupGloo outside torch.distributed's default group, listening on `local_address`.

    Construction waits for every rank (a missing peer raises after timeout_s), and the same timeout
    bounds every collective, so a dead peer raises instead of hanging.
    """
    from torch.distributed import PrefixStore, ProcessGroupGloo

    options = ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # private, absent from torch's stubs
    options._timeout = timedelta(seconds=timeout_s)
    options._devices = [ProcessGroupGloo.create_device(hostname=local_address)]
    return ProcessGroupGloo(PrefixStore("gloo", store), rank, world_size, options)


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking call that has no timeout of its own (NCCL init) and raise after timeout_s.

    The call keeps running on its daemon thread; the caller gets the error and the component name.
    """
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True, name=what)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WeightSyncError(f"{what} did not finish within {timeout_s:.0f}s")
    if failure:
        raise failure[0]
    return result[0]
