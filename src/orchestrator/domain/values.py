"""Bounds on stored values: how deeply a value nests and how many bytes of JSON it takes.

Every value that can be stored (a workflow's config, an execution's input, a node's output)
is measured against these bounds before it is stored, so that nothing stored can later make
a read, a serialization or a payload fail or grow without limit. Values stored before the
bounds existed are shown by reads through `readable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

import orjson

from orchestrator.domain.errors import DomainError

READABLE_DEPTH = 200
"""The deepest value a read shows as it is; MAX_VALUE_DEPTH may not exceed it."""

UNREADABLE = "_unreadable"
"""The one key of the marker that a read shows instead of a value it cannot write."""

_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})


@dataclass(frozen=True)
class ValueLimits:
    """The bounds a stored value must meet; the names are those of the settings."""

    max_depth: int = 64
    max_bytes: int = 1_048_576
    limit_name: str = "MAX_NODE_OUTPUT_BYTES"

    def check(self, value: Any, what: str) -> int:
        """The size of `value` in bytes of JSON; raises ValueTooLarge naming the limit."""
        try:
            size = _encoded_size(value, what)
        except ValueTooLarge:
            self._check_depth(value, what)  # too deep is the better reason, when it is one
            raise
        # A value nested d levels deep takes at least 2d bytes of JSON: most values are too
        # small to need the walk.
        if size > 2 * self.max_depth:
            self._check_depth(value, what)
        if size > self.max_bytes:
            raise ValueTooLarge(
                f"{what} is larger than {self.limit_name} ({size} bytes, at most {self.max_bytes})",
                self.limit_name,
            )
        return size

    def _check_depth(self, value: Any, what: str) -> None:
        if value_depth(value, self.max_depth) > self.max_depth:
            raise ValueTooLarge(
                f"{what} is nested deeper than MAX_VALUE_DEPTH ({self.max_depth} levels)",
                "MAX_VALUE_DEPTH",
            )


class ValueTooLarge(DomainError):
    """A value over a depth or size bound; `limit` names the setting."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


def value_depth(value: Any, stop_after: int) -> int:
    """How many containers nest in `value` (a scalar is 0), counting no further than one past
    `stop_after`, so a hostile value costs no more than the bound.

    One level at a time, with the work per item done in C (`map`, `compress`).
    """
    level: list[Any] = [value]
    depth = 0
    while True:
        kinds = list(map(type, level))
        dicts: list[Any] = list(compress(level, map(is_, kinds, repeat(dict))))
        sequences: list[Any] = list(compress(level, map(is_, kinds, repeat(list))))
        for kind in set(kinds) - _PLAIN:
            if issubclass(kind, dict):
                dicts += [item for item in level if type(item) is kind]
            elif issubclass(kind, list | tuple):
                sequences += [item for item in level if type(item) is kind]
        if not dicts and not sequences:
            return depth
        depth += 1
        if depth > stop_after:
            return depth
        children = chain.from_iterable(map(dict.values, dicts))
        level = list(chain(children, chain.from_iterable(sequences)))


def json_size(value: Any) -> int:
    """Bytes of the value as compact JSON (orjson; a value it cannot encode is refused)."""
    return _encoded_size(value, "value")


def _encoded_size(value: Any, what: str) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise ValueTooLarge(f"{what} cannot be stored as JSON: {exc}", "JSON") from exc


def readable(value: Any) -> Any:
    """`value` itself when a read can write it, else the marker `{"_unreadable": why}`.

    A read cannot write a value nested deeper than READABLE_DEPTH or one that is not JSON
    (e.g. a lone surrogate that SQLite kept); such values were stored before the bounds.
    """
    if value_depth(value, READABLE_DEPTH) > READABLE_DEPTH:
        return {UNREADABLE: f"value nested deeper than {READABLE_DEPTH} levels"}
    try:
        orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        return {UNREADABLE: f"value cannot be written as JSON: {exc}"}
    return value
