"""Node addresses, ports and rendezvous stores that bind one address only.

Every rendezvous of a run (the learner's process groups, the weight-transfer group) sits at the address of
the process that hosts it, as Ray reports it on that node, with a port picked on that node. On a local
Ray (`cluster.ray_init`, address "local") that address is 127.0.0.1, so the single-machine mode stays on
loopback without a special case; in a cluster it is the node's outward address.

A server binds the one address it is given, never all interfaces: torch's `TCPStore` master listens on
`*:port` whatever host it is given, so `tcp_store` hands it a socket already bound to (host, port).

This module imports neither Ray nor torch at import time: learner ranks use it where Ray is absent.
"""

from __future__ import annotations

import errno
import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed import Store

LOOPBACK = "127.0.0.1"
LISTEN_BACKLOG = 1024
"""Pending connections a store accepts (a run opens one per rank and per engine worker)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(error: BaseException) -> bool:
    """Whether `error`, or an exception it was raised from, is a bind that found its port in use.

    Across Ray an actor's OSError arrives as text inside the actor-died error, so the chain's messages
    are searched for the system's own wording of EADDRINUSE.
    """
    wording = os.strerror(errno.EADDRINUSE)
    seen: BaseException | None = error
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE) or wording in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def node_address() -> str:
    """This process's node address as Ray reports it (127.0.0.1 on a local Ray, the outward one in a cluster)."""
    import ray

    return str(ray.util.get_node_ip_address())


def node_endpoint() -> tuple[str, int]:
    """(node address, a port free on it): run inside the actor or task that will host a rendezvous."""
    host = node_address()
    return host, free_port(host)


def endpoint_on(options: dict[str, Any], timeout_s: float) -> tuple[str, int]:
    """`node_endpoint()` run on the node that `options` (a placement-group bundle) schedules onto.

    For a rendezvous whose host process does not exist yet: the learner's rank 0 needs its master
    address and port before it is constructed. The task asks for no resources, so it never waits for
    the bundle's actor (or the actor for it).
    """
    import ray

    strategy = options.get("scheduling_strategy")
    task = ray.remote(num_cpus=0)(node_endpoint)
    ref = task.options(scheduling_strategy=strategy).remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        raise TimeoutError(f"no node address from the placement bundle within {timeout_s:.0f}s")
    host, port = ray.get(ready[0])
    return str(host), int(port)


def route_source_address(peer: str) -> str:
    """The local address this host uses to reach `peer` (no packet is sent: UDP connect only routes).

    A receiver binds its side of a rendezvous to this address: on another node the sender's address
    is not a local one, and 127.0.0.1 would not be reachable from the sender.
    """
    if peer == LOOPBACK or peer == "localhost":
        return LOOPBACK
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((peer, 9))  # discard port; connect() on UDP only picks the route
        return str(s.getsockname()[0])


def interface_of(address: str) -> str | None:
    """Name of the network interface holding `address` (e.g. 'lo', 'eth0'), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            return name
    return None


def gloo_interface_for(peer: str) -> str | None:
    """The interface gloo should use to reach `peer` (for GLOO_SOCKET_IFNAME).

    Without it gloo resolves the machine's hostname, which need not be an address of this node's
    network (a container, a network namespace) and then falls back to loopback: peers on other
    nodes would be told to connect to 127.0.0.1.
    """
    return interface_of(route_source_address(peer))


def tcp_store(host: str, port: int, *, is_master: bool, timeout_s: float, world_size: int | None = None) -> Store:
    """A torch TCPStore; the master listens on (host, port) only.

    torch's own server binds every interface; given an already bound socket (`master_listen_fd`) it
    listens on that one. The store's libuv server takes ownership of the descriptor.
    """
    from torch.distributed import TCPStore

    timeout = timedelta(seconds=timeout_s)
    if not is_master:
        return TCPStore(host, port, world_size=world_size, is_master=False, timeout=timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    fd = sock.detach()
    return TCPStore(host, port, world_size=world_size, is_master=True, timeout=timeout,
                    wait_for_workers=False, master_listen_fd=fd, use_libuv=True)
