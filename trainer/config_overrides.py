"""`--set a.b=value` overrides: each value is parsed against the field's declared type, and an unknown
key or a value of the wrong type is a `ConfigError` that names the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Literal

from cluster.untyped import JsonValue, TypeHint
from reward_server.config import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

AnyConfig = typing.TypeVar("AnyConfig", bound="DataclassInstance")
"""A config dataclass (`TrainConfig`, `SFTConfig`, `RejectionConfig`)."""


def apply_overrides(cfg: AnyConfig, overrides: list[str]) -> AnyConfig:
    """Return `cfg` with each `section.field=value` applied, parsed against the field type."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        cfg = _set_path(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set_path(obj: AnyConfig, path: list[str], raw: str, full_key: str) -> AnyConfig:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {full_key!r}: {type(obj).__name__} has no field {name!r} "
                          f"(fields: {known})")
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, name)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full_key!r} is a section; set one of its fields, e.g. {full_key}.<field>=...")
        value = parse_value(raw, hints[name], full_key)
    else:
        if not dataclasses.is_dataclass(current) or isinstance(current, type):
            raise ConfigError(f"unknown config key {full_key!r}: {name!r} is not a section")
        value = _set_path(current, path[1:], raw, full_key)
    return dataclasses.replace(obj, **{name: value})


def parse_value(raw: str, hint: TypeHint, key: str) -> object:
    """Parse the text `raw` as a value of type `hint` (bool, int, float, str, Literal, Optional, tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ConfigError(f"{key}={raw!r}: expected one of {', '.join(map(str, args))}")
    if origin is tuple:
        parts = [p.strip() for p in raw.split(",") if p.strip()] if raw else []
        return tuple(parse_value(p, args[0], key) for p in parts)
    if hint is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected a bool (true/false)")
    if hint in (int, float):
        try:
            value = hint(raw)  # int() and float() already accept 1_000
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected {hint.__name__}") from None
        if value != value:  # NaN passes every later comparison silently
            raise ConfigError(f"{key}={raw!r}: NaN is not a valid setting")
        return value
    if hint is str:
        return raw
    raise ConfigError(f"{key}: fields of type {hint} cannot be set from the command line")


def to_dict(cfg: DataclassInstance) -> dict[str, JsonValue]:
    """Plain nested dict of a config, for logging and checkpoints."""
    return dataclasses.asdict(cfg)
