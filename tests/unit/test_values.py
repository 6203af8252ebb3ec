"""Bounds on stored values: depth, JSON size, and the marker reads show instead of a value;
and the one format of times in the values REST and Socket.IO carry."""

from __future__ import annotations

import datetime as dt
import random
from collections import OrderedDict
from enum import StrEnum
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from orchestrator.application.views import iso
from orchestrator.domain.values import (
    READABLE_DEPTH,
    UNREADABLE,
    ValueLimits,
    ValueTooLarge,
    json_size,
    readable,
    value_depth,
)


def nested(levels: int) -> Any:
    """`levels` containers, alternating objects and arrays, around a scalar."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def reference_depth(value: Any) -> int:
    """The definition of depth, recursively."""
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(reference_depth, value), default=0)
    return 0


def random_value(rng: random.Random, level: int = 0) -> Any:
    roll = rng.random()
    if level > 7 or roll < 0.3:
        return rng.choice([1, -2.5, "text", None, True, ""])
    width = rng.randint(0, 4)
    if roll < 0.6:
        return [random_value(rng, level + 1) for _ in range(width)]
    if roll < 0.85:
        return {f"k{i}": random_value(rng, level + 1) for i in range(width)}
    if roll < 0.95:
        return tuple(random_value(rng, level + 1) for _ in range(width))
    return OrderedDict(a=random_value(rng, level + 1))


class Colour(StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (None, 0),
        ("text", 0),
        (Colour.RED, 0),
        ({}, 1),
        ([], 1),
        ((), 1),
        ({"a": 1, "b": [1, 2]}, 2),
        ([[], [[]], {"a": {"b": {}}}], 4),
        (OrderedDict(a=OrderedDict(b=[1])), 3),
        (nested(64), 64),
    ],
)
def test_value_depth_counts_nested_containers(value: Any, depth: int) -> None:
    assert value_depth(value, 100) == depth


@pytest.mark.parametrize("seed", range(20))
def test_value_depth_agrees_with_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        value = random_value(rng)
        expected = reference_depth(value)
        assert value_depth(value, 100) == expected
        assert value_depth(value, 2) == min(expected, 3)


def test_a_hostile_depth_is_counted_only_one_past_the_bound() -> None:
    hostile = nested(100_000)
    assert value_depth(hostile, 64) == 65
    with pytest.raises(ValueTooLarge) as caught:
        ValueLimits().check(hostile, "input")
    assert caught.value.limit == "MAX_VALUE_DEPTH"
    assert readable(hostile) == {UNREADABLE: f"value nested deeper than {READABLE_DEPTH} levels"}


def test_check_returns_the_json_size_within_bounds() -> None:
    value = {"text": "héllo", "items": [1, 2.5, None, True]}
    assert ValueLimits().check(value, "input") == len(orjson.dumps(value)) == json_size(value)
    assert ValueLimits(max_depth=64).check(nested(64), "input") == json_size(nested(64))


def test_one_level_too_deep_names_max_value_depth() -> None:
    with pytest.raises(ValueTooLarge) as caught:
        ValueLimits(max_depth=64).check(nested(65), "input")
    assert caught.value.message == "input is nested deeper than MAX_VALUE_DEPTH (64 levels)"
    assert str(caught.value) == caught.value.message
    assert caught.value.limit == "MAX_VALUE_DEPTH"


def test_one_byte_too_large_names_the_size_limit() -> None:
    value = "x" * 98
    assert json_size(value) == 100
    assert ValueLimits(max_bytes=100).check(value, "input") == 100
    with pytest.raises(ValueTooLarge) as caught:
        ValueLimits(max_bytes=99, limit_name="MAX_BODY").check(value, "the output of node 'a'")
    assert caught.value.message == (
        "the output of node 'a' is larger than MAX_BODY (100 bytes, at most 99)"
    )
    assert caught.value.limit == "MAX_BODY"


@pytest.mark.parametrize("value", ["\ud800", {"k": ["\udfff"]}, 2**64, {1: "non-text key"}])
def test_a_value_json_cannot_carry_is_refused(value: Any) -> None:
    with pytest.raises(ValueTooLarge) as caught:
        ValueLimits().check(value, "input")
    assert caught.value.message.startswith("input cannot be stored as JSON: ")
    assert caught.value.limit == "JSON"
    with pytest.raises(ValueTooLarge) as by_size:
        json_size(value)
    assert by_size.value.message.startswith("value cannot be stored as JSON: ")


@pytest.mark.parametrize(
    "value", [None, 0, "text", {"a": [1, {"b": None}]}, nested(READABLE_DEPTH), [float("nan")]]
)
def test_a_value_a_read_can_write_is_shown_as_it_is(value: Any) -> None:
    assert readable(value) is value


def test_a_value_a_read_cannot_write_is_shown_as_a_small_marker() -> None:
    too_deep = readable(nested(READABLE_DEPTH + 1))
    not_json = readable({"text": "\ud800"})

    assert too_deep == {UNREADABLE: "value nested deeper than 200 levels"}
    assert not_json == {
        UNREADABLE: "value cannot be written as JSON: "
        "str is not valid UTF-8: surrogates not allowed"
    }
    for marker in (too_deep, not_json):
        assert readable(marker) is marker


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 12, 0, 0, 120, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 12, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2026, 3, 1, 12, 0, 5, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ],
)
def test_iso_writes_times_exactly_as_the_rest_models_do(moment: dt.datetime) -> None:
    assert iso(moment) == TypeAdapter(dt.datetime).dump_python(moment, mode="json")
    assert iso(None) is None
