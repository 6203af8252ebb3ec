"""Schedules, pure: the cron grammar, ticks across daylight saving time, and catch-up."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator.domain.errors import ValidationFailed
from orchestrator.domain.schedules import CatchUp, Cron, NoTick, Plan, iso, plan

NOW = dt.datetime(2026, 6, 1, 12, 0, 30, tzinfo=dt.UTC)
GRACE = dt.timedelta(seconds=61)
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    """A UTC instant."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


def ticks_after(cron: Cron, start: dt.datetime, count: int) -> list[str]:
    """The next `count` ticks after `start`, as `Z` strings."""
    ticks = []
    for _ in range(count):
        start = cron.next_after(start)
        ticks.append(iso(start))
    return ticks


def ticks_before(cron: Cron, end: dt.datetime, count: int) -> list[str]:
    """The `count` ticks before `end`, latest first."""
    ticks = []
    for _ in range(count):
        end = cron.previous_before(end)
        ticks.append(iso(end))
    return ticks


def problems(expression: str, timezone: str | None = None) -> dict[str, str]:
    """The problems that parsing reports, by field."""
    with pytest.raises(ValidationFailed) as caught:
        Cron.parse(expression, timezone, NOW)
    return {p.path: p.message for p in caught.value.problems}


# --- the grammar -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("", "required"),
        ("* * * * * *", "expected 5 fields"),
        ("0 0 * * * 2026", "expected 5 fields"),
        ("* * *", "got 3"),
        ("@reboot", "unknown macro"),
        ("@sometimes", "unknown macro"),
        ("61 * * * *", "invalid"),
        ("1-70 * * * *", "invalid"),
        ("* * * * funday", "invalid"),
        ("H * * * *", "hashed (H) and random (R)"),
        ("0 R * * *", "hashed (H) and random (R)"),
        ("0 0 30 2 *", "never matches"),
        ("* " * 150, "at most 200 characters"),
    ],
)
def test_bad_expressions_are_refused_naming_the_field(expression: str, why: str) -> None:
    found = problems(expression)
    assert set(found) == {"cron"}, found
    assert why in found["cron"], found


def test_bad_timezones_are_refused_naming_the_field() -> None:
    for name in ("Mars/Olympus", "../../etc/passwd", "localtime", "", "x" * 65):
        assert "unknown timezone" in problems("* * * * *", name)["timezone"], name
    both = problems("* *", "Nowhere")
    assert set(both) == {"cron", "timezone"}


@pytest.mark.parametrize(
    ("expression", "stored", "first"),
    [
        ("*/15   9-17 * * MON-FRI", "*/15 9-17 * * MON-FRI", "2026-06-01T12:15:00Z"),
        ("@hourly", "@hourly", "2026-06-01T13:00:00Z"),
        ("@Daily", "@daily", "2026-06-02T00:00:00Z"),
        ("0 0 L * *", "0 0 L * *", "2026-06-30T00:00:00Z"),
        ("0 0 * * 1#2", "0 0 * * 1#2", "2026-06-08T00:00:00Z"),
        ("0 12 * jan,jun thu", "0 12 * jan,jun thu", "2026-06-04T12:00:00Z"),
    ],
)
def test_good_expressions_are_kept_normalised(expression: str, stored: str, first: str) -> None:
    cron = Cron.parse(expression, None, NOW)
    assert (cron.expression, cron.timezone) == (stored, "UTC")
    assert iso(cron.next_after(NOW)) == first


def test_ticks_are_strictly_after_and_before() -> None:
    cron = Cron("0 * * * *", "UTC")
    on_tick = utc(2026, 6, 1, 12)
    assert cron.next_after(on_tick) == utc(2026, 6, 1, 13)
    assert cron.previous_before(on_tick) == utc(2026, 6, 1, 11)
    assert cron.latest_at(on_tick) == on_tick
    assert cron.latest_at(on_tick + dt.timedelta(seconds=59)) == on_tick


def test_ticks_follow_the_timezone() -> None:
    cron = Cron.parse("0 9 * * *", "Asia/Kolkata", NOW)
    assert iso(cron.next_after(NOW)) == "2026-06-02T03:30:00Z"


# --- daylight saving time (2026: Berlin on 03-29 and 10-25, New York on 03-08 and 11-01) ----


def test_spring_forward_a_missing_local_time_fires_after_the_gap_once() -> None:
    daily = Cron("30 2 * * *", BERLIN)  # 02:30 does not exist on 2026-03-29: croniter gives 03:00
    assert ticks_after(daily, utc(2026, 3, 27, 12), 3) == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]
    assert ticks_before(daily, utc(2026, 3, 30, 12), 3) == [
        "2026-03-30T00:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-28T01:30:00Z",
    ]


def test_spring_forward_hourly_skips_the_missing_hour() -> None:
    hourly = Cron("0 * * * *", BERLIN)
    assert ticks_after(hourly, utc(2026, 3, 28, 23, 30), 4) == [
        "2026-03-29T00:00:00Z",  # 01:00 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST: 02:00 never happened
        "2026-03-29T02:00:00Z",
        "2026-03-29T03:00:00Z",
    ]


def test_fall_back_a_repeated_local_time_fires_once() -> None:
    daily = Cron("30 2 * * *", BERLIN)
    assert ticks_after(daily, utc(2026, 10, 24, 12), 2) == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST; not 02:30 CET an hour later
        "2026-10-26T01:30:00Z",
    ]
    assert ticks_before(daily, utc(2026, 10, 26, 12), 3) == [
        "2026-10-26T01:30:00Z",
        "2026-10-25T00:30:00Z",
        "2026-10-24T00:30:00Z",
    ]
    # From inside the repeated hour, the next tick is the next day's.
    assert iso(daily.next_after(utc(2026, 10, 25, 0, 45))) == "2026-10-26T01:30:00Z"
    assert iso(daily.latest_at(utc(2026, 10, 25, 1, 45))) == "2026-10-25T00:30:00Z"


def test_fall_back_a_repeated_hour_fires_once_in_new_york() -> None:
    every_10_min_at_1 = Cron("*/10 1 * * *", NEW_YORK)
    ticks = ticks_after(every_10_min_at_1, utc(2026, 11, 1, 4), 7)
    # 01:00-01:50 EDT (05:00Z-05:50Z) fire; 01:00-01:50 EST (06:00Z-06:50Z) do not.
    assert ticks == [f"2026-11-01T05:{m}0:00Z" for m in range(6)] + ["2026-11-02T06:00:00Z"]


def test_fall_back_every_hour_runs_through_the_repeated_hour() -> None:
    hourly = Cron("0 * * * *", BERLIN)
    assert ticks_after(hourly, utc(2026, 10, 24, 23, 30), 4) == [
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET: an hour later, so it fires
        "2026-10-25T02:00:00Z",
        "2026-10-25T03:00:00Z",
    ]


# --- catch-up ---------------------------------------------------------------------------------

MINUTELY = Cron("* * * * *", "UTC")


def test_a_tick_due_now_fires_under_every_policy() -> None:
    due = utc(2026, 6, 1, 12, 0)
    for policy in CatchUp:
        assert plan(MINUTELY, policy, due, NOW, GRACE, 100) == Plan([due], utc(2026, 6, 1, 12, 1))


def test_latest_fires_only_the_most_recent_missed_tick() -> None:
    outage_end = utc(2026, 6, 1, 15, 0, 10)
    result = plan(MINUTELY, CatchUp.LATEST, utc(2026, 6, 1, 12, 0), outage_end, GRACE, 100)
    assert result == Plan([utc(2026, 6, 1, 15, 0)], utc(2026, 6, 1, 15, 1))


def test_none_skips_missed_ticks_but_fires_a_late_one() -> None:
    hourly = Cron("0 * * * *", "UTC")
    due = utc(2026, 6, 1, 12)
    late = plan(hourly, CatchUp.NONE, due, due + dt.timedelta(seconds=45), GRACE, 100)
    assert late.ticks == [due]
    missed = plan(hourly, CatchUp.NONE, due, utc(2026, 6, 1, 14, 30), GRACE, 100)
    assert missed.ticks == []
    assert missed.next_run_at == utc(2026, 6, 1, 15)
    assert missed.note is not None
    assert "2026-06-01T14:00:00Z were skipped" in missed.note


def test_all_fires_every_missed_tick_oldest_first() -> None:
    result = plan(
        MINUTELY, CatchUp.ALL, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 12, 4, 1), GRACE, 5
    )
    assert [iso(t) for t in result.ticks] == [f"2026-06-01T12:0{m}:00Z" for m in range(5)]
    assert result.note is None
    assert result.next_run_at == utc(2026, 6, 1, 12, 5)


def test_all_over_the_cap_fires_the_most_recent_and_says_so() -> None:
    result = plan(
        MINUTELY, CatchUp.ALL, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 12, 9, 1), GRACE, 3
    )
    assert [iso(t) for t in result.ticks] == [f"2026-06-01T12:0{m}:00Z" for m in (7, 8, 9)]
    assert result.note is not None
    assert "more than 3 ticks were missed" in result.note
    assert "before 2026-06-01T12:07:00Z were skipped" in result.note


def test_all_with_a_cap_of_one_and_one_missed_tick_notes_nothing() -> None:
    result = plan(
        MINUTELY, CatchUp.ALL, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 12, 0, 5), GRACE, 1
    )
    assert result == Plan([utc(2026, 6, 1, 12, 0)], utc(2026, 6, 1, 12, 1))


def test_catch_up_across_the_repeated_hour_fires_each_tick_once() -> None:
    daily = Cron("30 2 * * *", BERLIN)
    result = plan(daily, CatchUp.ALL, utc(2026, 10, 24, 0, 30), utc(2026, 10, 26, 12), GRACE, 10)
    assert [iso(t) for t in result.ticks] == [
        "2026-10-24T00:30:00Z",
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ]


def test_an_expression_without_dates_raises_no_tick() -> None:
    never = Cron("0 0 30 2 *", "UTC")
    with pytest.raises(NoTick):
        never.next_after(NOW)
    with pytest.raises(NoTick):
        plan(never, CatchUp.LATEST, NOW, NOW, GRACE, 10)
