"""Schedules: a 5-field cron expression in a timezone, its ticks, and which of them are due.

Times are computed in the schedule's timezone (by croniter, on zoneinfo datetimes) and kept
in UTC. Daylight saving time follows the timezone's rules:

- spring forward: a local time that does not exist that day (02:30 in Europe/Berlin on
  2026-03-29) fires at the first instant after the gap (03:00 local, croniter's behaviour);
  ticks whose hour is skipped whole (`0 * * * *` at 02:00) do not fire that day;
- fall back: a local time that happens twice (02:30 on 2026-10-25) fires once, at its first
  occurrence; only an expression that runs every hour (its hour field covers all 24) keeps
  firing through the repeated hour, since its ticks are meant as elapsed time.

Catch-up (`catchUp`) decides what fires when ticks were missed (every process was down):
"latest" (the default) fires only the most recent missed tick; "none" fires none of them
(a tick within the grace, about one poll interval plus a minute, is late, not missed, and
fires); "all" fires every missed tick oldest first, at most the cap (SCHEDULE_CATCH_UP_MAX):
when more were missed, the most recent ones fire and the older ones are skipped, as
`Plan.note` says.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter  # type: ignore[import-untyped]

from orchestrator.domain.errors import DomainError, Problem, ValidationFailed

MAX_CRON_LENGTH = 200
MAX_TIMEZONE_LENGTH = 64
DEFAULT_TIMEZONE = "UTC"
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
# Hashed (H) and random (R) values differ by process: every replica must compute the same ticks.
_UNSTABLE = re.compile(r"(^|,)[HR](\(|/|,|$)", re.IGNORECASE)
_HOURS_IN_DAY = 24


class NoTick(DomainError):
    """The expression matches no date (in the years croniter searches)."""

    def __init__(self) -> None:
        super().__init__("the cron expression matches no date")
        self.message = "the cron expression matches no date"


class CatchUp(StrEnum):
    """What fires of the ticks missed while no process ran (see the module)."""

    LATEST = "latest"
    NONE = "none"
    ALL = "all"


# Names some hosts' zoneinfo holds that mean that host's own zone: replicas could differ.
_HOST_ZONES = frozenset({"localtime", "posixrules"})


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _HOST_ZONES


def _cron_problem(expression: str) -> str | None:
    """Why the expression is not a 5-field cron expression (None: it is one)."""
    text = expression.strip()
    if not text:
        return "required"
    if len(text) > MAX_CRON_LENGTH:
        return f"at most {MAX_CRON_LENGTH} characters"
    if text.startswith("@"):
        if text.lower() not in MACROS:
            return f"unknown macro {text!r}; expected one of {', '.join(sorted(MACROS))}"
        return None
    fields = text.split()
    if len(fields) != len(CRON_FIELDS):
        return f"expected {len(CRON_FIELDS)} fields ({' '.join(CRON_FIELDS)}), got {len(fields)}"
    if any(_UNSTABLE.search(field) for field in fields):
        return "hashed (H) and random (R) values are not supported"
    try:
        croniter(text)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        return f"invalid: {exc}"
    return None


def _normalized(expression: str) -> str:
    """One space between fields; macros in lowercase."""
    text = " ".join(expression.split())
    return text.lower() if text.startswith("@") else text


def _timezone_problem(name: str) -> str | None:
    if len(name) > MAX_TIMEZONE_LENGTH or name not in _timezones():
        return "unknown timezone; expected an IANA name such as UTC or Europe/Berlin"
    return None


@dataclass(frozen=True)
class Cron:
    """A validated cron expression in a timezone; ticks are returned in UTC."""

    expression: str
    timezone: str

    @classmethod
    def parse(cls, expression: str, timezone: str | None, now: dt.datetime) -> Cron:
        """The cron, or ValidationFailed naming `cron` and/or `timezone` and why.

        An expression that never matches a date (`0 0 30 2 *`) is refused as well.
        """
        zone = DEFAULT_TIMEZONE if timezone is None else timezone
        problems = [
            Problem(path, message)
            for path, message in (
                ("cron", _cron_problem(expression)),
                ("timezone", _timezone_problem(zone)),
            )
            if message is not None
        ]
        if not problems:
            cron = cls(_normalized(expression), zone)
            try:
                cron.next_after(now)
            except NoTick:
                problems.append(Problem("cron", "never matches a date"))
            else:
                return cron
        raise ValidationFailed("; ".join(f"{p.path}: {p.message}" for p in problems), problems)

    @property
    def _zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @functools.cached_property
    def _every_hour(self) -> bool:
        hours: list[Any] = croniter(self.expression).expanded[1]
        return hours == ["*"] or len(hours) == _HOURS_IN_DAY

    def _repeated(self, tick: dt.datetime) -> bool:
        """True for the second occurrence of a local time that happens twice (fall back),
        unless the expression runs every hour."""
        if self._every_hour:
            return False
        wall = tick.astimezone(self._zone).replace(tzinfo=None)
        first = wall.replace(tzinfo=self._zone, fold=0)
        return first.astimezone(dt.UTC) != tick

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """The first tick strictly after `instant` (NoTick if there is none)."""
        return self._step(instant, forward=True)

    def previous_before(self, instant: dt.datetime) -> dt.datetime:
        """The last tick strictly before `instant` (NoTick if there is none)."""
        return self._step(instant, forward=False)

    def _step(self, instant: dt.datetime, forward: bool) -> dt.datetime:
        ticks = croniter(self.expression, instant.astimezone(self._zone))
        step = ticks.get_next if forward else ticks.get_prev
        try:
            while True:
                tick: dt.datetime = step(dt.datetime).astimezone(dt.UTC)
                if not self._repeated(tick):
                    return tick
        except CroniterBadDateError as exc:
            raise NoTick from exc

    def latest_at(self, instant: dt.datetime) -> dt.datetime:
        """The last tick at or before `instant`."""
        previous = self.previous_before(instant)
        following = self.next_after(previous)
        return following if following <= instant else previous


@dataclass(frozen=True)
class Plan:
    """What one claim of a due schedule does: the ticks to fire (oldest first), the next
    tick after `now`, and, when missed ticks were skipped, a note saying so."""

    ticks: list[dt.datetime]
    next_run_at: dt.datetime
    note: str | None = None


def plan(
    cron: Cron,
    catch_up: CatchUp,
    due_at: dt.datetime,
    now: dt.datetime,
    grace: dt.timedelta,
    cap: int,
) -> Plan:
    """The ticks due at `now` of a schedule whose next tick was `due_at` (<= now)."""
    following = cron.next_after(now)
    latest = cron.latest_at(now)
    if latest < due_at:  # nothing due (the expression or timezone changed since)
        return Plan([], following)
    if catch_up == CatchUp.LATEST:
        return Plan([latest], following)
    if catch_up == CatchUp.NONE:
        if now - latest > grace:
            note = f"catchUp none: missed ticks up to {iso(latest)} were skipped"
            return Plan([], following, note)
        missed = cron.previous_before(latest) >= due_at
        note = f"catchUp none: missed ticks before {iso(latest)} were skipped"
        return Plan([latest], following, note if missed else None)
    ticks = [latest]
    while len(ticks) < cap:
        earlier = cron.previous_before(ticks[-1])
        if earlier < due_at:
            return Plan(ticks[::-1], following)
        ticks.append(earlier)
    if cron.previous_before(ticks[-1]) < due_at:
        return Plan(ticks[::-1], following)
    note = (
        f"catchUp all: more than {cap} ticks were missed; those before {iso(ticks[-1])} "
        "were skipped"
    )
    return Plan(ticks[::-1], following, note)


def iso(instant: dt.datetime) -> str:
    """The wire form of a tick: UTC, seconds, `Z`."""
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Schedule:
    """A cron schedule of a workflow; `next_run_at` is its next due tick (None: disabled)."""

    id: str
    workflow_id: str
    user_id: str | None
    cron: str
    timezone: str
    input: Any
    enabled: bool
    catch_up: CatchUp
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    last_execution_id: str | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def parsed(self) -> Cron:
        """Its (stored, so valid) expression and timezone."""
        return Cron(self.cron, self.timezone)

    def reschedule(self, now: dt.datetime) -> None:
        """Recompute the next tick from `now` (None while disabled)."""
        self.next_run_at = self.parsed.next_after(now) if self.enabled else None
        self.updated_at = now

    def record(self, tick: dt.datetime, execution_id: str | None, error: str | None) -> None:
        """The outcome of firing `tick`: the execution it started, or why it started none."""
        self.last_run_at = tick
        if execution_id is not None:
            self.last_execution_id = execution_id
        self.last_error = error
