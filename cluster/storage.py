"""One directory for the whole cluster: a probe that every node sees the same files under a path.

A run writes its outputs from several processes: the driver (config, metrics, the checkpoint manifest)
and every learner rank (its checkpoint shard; rank 0 the Hugging Face export). Resume reads them all
back from one place. Under `ray job submit --working-dir`, a relative path is each node's own unpacked
copy of the working directory, and a local absolute path is each node's own disk: the files then land
on different nodes and a resume finds half a checkpoint. `check_shared_dir` refuses such a path before
anything is written there:

    driver (its node)  writes  <dir>/.grpo-ray-probe-<token>            (a random token)
    a task pinned to each node (NodeAffinitySchedulingStrategy, no resources):
        reads that file under the same path string, resolved where it runs (relative: in its working
        directory, as the learner ranks resolve it), and writes <dir>/.grpo-ray-probe-<token>-<node>
    driver  reads every node's file; all of them must hold the token, or `SharedDirError` names the nodes;
            then every file is removed (each node removes its own: in a directory of its own only it can).

On one node the probe passes trivially (it still runs). This module knows no RL.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray

PROBE_PREFIX = ".grpo-ray-probe-"
PROBE_TIMEOUT_S = 120.0
"""A task asks for no resources, so it starts as soon as the node has a worker process for it."""


class SharedDirError(RuntimeError):
    """A directory that must be shared by the nodes of a run is not the same on all of them."""


@dataclass(frozen=True)
class NodeView:
    """What one node saw of the probe."""

    node_ip: str
    path: str
    """The probed path as that node resolved it."""
    read: bool
    """It found the driver's token file, holding the token."""
    write_error: str
    """Why it could not write its own token file there (empty: it did)."""


def check_shared_dir(path: str | Path, node_ids: Sequence[str], *, what: str = "output_dir",
                     timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeView]:
    """Raise SharedDirError unless the driver and every node in `node_ids` (Ray node ids) read and write
    the same files under `path` (created if missing). `what` names the path in the error (a config key).
    Returns what each node saw; the probe's files are removed."""
    token = secrets.token_hex(16)
    here = Path(path)
    here.mkdir(parents=True, exist_ok=True)
    mine = here / f"{PROBE_PREFIX}{token}"
    mine.write_text(token)
    nodes = sorted(set(node_ids))
    try:
        views = _probe_nodes(str(path), token, nodes, timeout_s)
        seen = [_their_file_seen(here, token, n) for n in nodes]
        failed = [(v, s) for v, s in zip(views, seen, strict=True) if not (v.read and s)]
    finally:
        for f in here.glob(f"{PROBE_PREFIX}{token}*"):
            f.unlink(missing_ok=True)
        _remove_on_nodes(str(path), token, nodes, timeout_s)  # a node's own directory keeps what it wrote
    if failed:
        raise SharedDirError(_explain(what, str(path), here.resolve(), failed))
    return views


def _probe_nodes(path: str, token: str, nodes: list[str], timeout_s: float) -> list[NodeView]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_probe_here)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path, token, node)
            for node in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if len(ready) < len(refs):
        for ref in refs:
            ray.cancel(ref, force=True)
        raise SharedDirError(f"probing {path!r} on every node: {len(refs) - len(ready)} of {len(refs)} nodes did "
                             f"not answer within {timeout_s:.0f}s")
    return list(ray.get(refs))


def _probe_here(path: str, token: str, node_id: str) -> NodeView:
    """On one node: read the driver's token file, write this node's own."""
    here = Path(path)
    try:
        read = (here / f"{PROBE_PREFIX}{token}").read_text() == token
    except OSError:
        read = False
    error = ""
    try:
        here.mkdir(parents=True, exist_ok=True)
        (here / f"{PROBE_PREFIX}{token}-{node_id}").write_text(token)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    return NodeView(node_ip=ray.util.get_node_ip_address(), path=str(here.resolve()), read=read, write_error=error)


def _remove_here(path: str, token: str, node_id: str) -> None:
    (Path(path) / f"{PROBE_PREFIX}{token}-{node_id}").unlink(missing_ok=True)


def _remove_on_nodes(path: str, token: str, nodes: list[str], timeout_s: float) -> None:
    """Best effort: a node that cannot be reached keeps a small file, never the run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_remove_here)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path, token, node)
            for node in nodes]
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def _their_file_seen(here: Path, token: str, node_id: str) -> bool:
    try:
        return (here / f"{PROBE_PREFIX}{token}-{node_id}").read_text() == token
    except OSError:
        return False


def _explain(what: str, path: str, resolved: Path, failed: list[tuple[NodeView, bool]]) -> str:
    lines = []
    for view, seen in failed:
        problems = []
        if not view.read:
            problems.append("does not see the file the driver wrote")
        if view.write_error:
            problems.append(f"cannot write there ({view.write_error})")
        elif not seen:
            problems.append("wrote a file the driver does not see")
        lines.append(f"node {view.node_ip} (where it is {view.path}) {' and '.join(problems)}")
    return (f"{what}={path!r} is not one directory for the whole cluster: the driver wrote to {resolved}, and "
            + "; ".join(lines) + ". Every node that runs a learner rank writes its part of each checkpoint there "
            f"and a resume reads all of them from one place. Set {what} to a path on a filesystem that every node "
            f"mounts at the same place (NFS, Lustre, a bucket mounted by FUSE), e.g. --set {what}=/shared/runs; "
            "under `ray job submit --working-dir`, a relative path is each node's own unpacked copy of the "
            "working directory.")
