"""Token usage of a user over a time range: totals and groups by workflow, model or day, priced
per model.

Only root executions are read: an execution's usage already holds its sub-workflows', so
reading children too would count their tokens twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestrator.application.access import Caller
from orchestrator.domain import usage as tokens
from orchestrator.domain.errors import Problem, ValidationFailed

GroupBy = Literal["workflow", "model", "day"]
Prices = Mapping[str, Mapping[str, float]]

DEFAULT_SPAN = dt.timedelta(days=30)
MAX_SPAN = dt.timedelta(days=366)
COST_DIGITS = 6  # USD to the millionth: a token of the cheapest model still shows


@dataclass(frozen=True)
class UsageRow:
    """A root execution's stored usage (its summary form: totals and `byModel`)."""

    workflow_id: str
    created_at: dt.datetime
    usage: Any


class UsageSource(Protocol):
    """Where the stored usages are read."""

    def chunks(
        self, user_id: str | None, start: dt.datetime, end: dt.datetime
    ) -> AsyncIterator[Sequence[UsageRow]]:
        """The root executions of `user_id` (None: everyone's) created in [start, end) that
        reported usage, a bounded chunk at a time."""
        ...

    async def workflow_names(self, workflow_ids: Collection[str]) -> dict[str, str]:
        """The names of the workflows that still exist among `workflow_ids`."""
        ...


@dataclass(frozen=True)
class Window:
    """The time range [start, end), in UTC."""

    start: dt.datetime
    end: dt.datetime


@dataclass
class Tally:
    """The tokens of some executions, by model, and how many executions they are."""

    executions: int = 0
    by_model: tokens.Usage = field(default_factory=dict)

    def add(self, usage: tokens.Usage) -> None:
        """Count one more execution with this usage."""
        self.executions += 1
        for model, counts in usage.items():
            into = self.by_model.setdefault(model, dict.fromkeys(tokens.FIELDS, 0))
            for name in tokens.FIELDS:
                into[name] += counts.get(name, 0)

    def line(self, key: str, prices: Prices, workflow_name: str | None = None) -> UsageLine:
        """The tally as a line of the report."""
        summed = tokens.totals(self.by_model)
        return UsageLine(
            key=key,
            workflow_name=workflow_name,
            input_tokens=summed["inputTokens"],
            output_tokens=summed["outputTokens"],
            total_tokens=summed["totalTokens"],
            cost_usd=round(tokens.cost_usd(self.by_model, prices), COST_DIGITS),
            executions=self.executions,
        )


@dataclass(frozen=True)
class UsageLine:
    """The tokens and cost of one group (or of all: `key` is empty)."""

    key: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    executions: int
    workflow_name: str | None = None


@dataclass(frozen=True)
class UsageReport:
    """What GET /usage answers."""

    window: Window
    group_by: GroupBy
    totals: UsageLine
    groups: list[UsageLine]
    unpriced_models: list[str]


def window(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime) -> Window:
    """The range asked for: `end` defaults to now, `start` to DEFAULT_SPAN before `end`.

    ValidationFailed when it is empty or longer than MAX_SPAN: a longer one would read an
    unbounded number of executions.
    """
    end = now if end is None else end
    try:
        start = end - DEFAULT_SPAN if start is None else start
    except OverflowError:
        raise ValidationFailed(
            "Usage range is invalid", [Problem("from", "give `from`: `to` is too early")]
        ) from None
    if end <= start:
        raise ValidationFailed("Usage range is invalid", [Problem("to", "must be after `from`")])
    if end - start > MAX_SPAN:
        raise ValidationFailed(
            "Usage range is invalid",
            [Problem("to", f"the range may span at most {MAX_SPAN.days} days")],
        )
    return Window(start, end)


async def usage_report(
    source: UsageSource, caller: Caller, span: Window, group_by: GroupBy, prices: Prices
) -> UsageReport:
    """The caller's usage in `span` (everyone's for a caller that reads all, or that names
    no user without authentication), grouped by `group_by`.

    A group by model counts each execution once per model it used, so the executions of the
    groups can add up to more than the total.
    """
    total = Tally()
    groups: dict[str, Tally] = {}
    async for chunk in source.chunks(caller.only, span.start, span.end):
        for row in chunk:
            usage = tokens.parse(row.usage)
            if usage:
                total.add(usage)
                for key, part in _parts(row, usage, group_by):
                    groups.setdefault(key, Tally()).add(part)
    names = await source.workflow_names(list(groups)) if group_by == "workflow" else {}
    lines = [tally.line(key, prices, names.get(key)) for key, tally in groups.items()]
    return UsageReport(
        window=span,
        group_by=group_by,
        totals=total.line("", prices),
        groups=_ordered(lines, group_by),
        unpriced_models=sorted(set(total.by_model) - set(prices)),
    )


def _parts(row: UsageRow, usage: tokens.Usage, group_by: GroupBy) -> list[tuple[str, tokens.Usage]]:
    """The groups one execution counts in, with the part of its usage each gets."""
    if group_by == "model":
        return [(model, {model: counts}) for model, counts in usage.items()]
    if group_by == "workflow":
        return [(row.workflow_id, usage)]
    return [(row.created_at.astimezone(dt.UTC).date().isoformat(), usage)]


def _ordered(lines: list[UsageLine], group_by: GroupBy) -> list[UsageLine]:
    """Days in order; workflows and models by most tokens first (ties by key)."""
    if group_by == "day":
        return sorted(lines, key=lambda line: line.key)
    return sorted(lines, key=lambda line: (-line.total_tokens, line.key))
