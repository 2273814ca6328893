"""Tool classes for the tests of multi-turn rollouts, named by `module:Class` like a user's own tools.

`Echo` ends a call at a character that a random or tiny model writes often, so a real engine makes tool
calls without being trained to; the others misbehave in the ways a tool can.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar


class _Base:
    name: ClassVar[str] = "test"
    description: ClassVar[str] = "a test tool"
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    call_start: ClassVar[str] = "<t>"
    call_end: ClassVar[str] = "</t>"
    output_start: ClassVar[str] = "["
    output_end: ClassVar[str] = "]"


class Echo(_Base):
    """Every "e" the model writes ends a call (empty start marker: the argument is the turn's text)."""

    call_start = ""
    call_end = "e"

    def __call__(self, argument: str) -> str:
        return "12"


class Hang(_Base):
    def __call__(self, argument: str) -> str:
        time.sleep(3600)
        return "never"


class Raise(_Base):
    def __call__(self, argument: str) -> str:
        raise ZeroDivisionError("the tool divided by zero")


class Die(_Base):
    def __call__(self, argument: str) -> str:
        os._exit(3)


class Chatty(_Base):
    """Prints to stdout (which must not corrupt the tool process's replies) and returns a long output."""

    def __call__(self, argument: str) -> str:
        print("noise on stdout")
        return "x" * 10_000
