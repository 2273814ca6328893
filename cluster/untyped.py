"""The values whose type stays `Any` to the type checker, each named here once with the reason.

Everything else in `trainer`, `reward_server` and `cluster` carries a real type or a protocol (the roles
the controller drives are in `trainer.protocols`). A bare `Any` remains only where the value comes from
or goes to one of these, or to a signature that is `Any` itself:
    - what an actor's method returns (`cluster.calls`: `ObjectRef[Any]`, the results), for the reason
      given under `ActorHandle`;
    - keyword arguments handed on unchanged: Ray's `.options(**...)` (`cluster.placement.Placement.options`),
      matplotlib's `plot(**style)`, a reward model actor's options to its scorer, which checks them.
"""

from __future__ import annotations

from typing import Any

ActorHandle = Any
"""A Ray actor handle. Ray's stubs type `ray.remote` on functions, but not an actor's methods:
`ray.actor.ActorHandle.__getattr__` is typed `Never`, so a handle typed as itself could not be called."""

RemoteActorClass = Any
"""A class wrapped by `ray.remote`: its stubs type `.remote(...)` as a handle or a class, and not `.options`."""

JsonValue = Any
"""A value decoded from JSON or about to be encoded (a metrics row, a manifest, a test case's expected
value): its shape is the data's, checked where it is read."""

TypeHint = Any
"""A type expression as `typing.get_type_hints` returns it (`int`, `Literal[...]`, `float | None`): Python
has no type for type expressions (PEP 747's TypeForm is not in 3.11)."""

TorchLoaded = Any
"""What `torch.load(weights_only=True)` returns: tensors, numbers, strings and containers of them, as the
file holds them (torch types it `Any`)."""
