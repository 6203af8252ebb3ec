"""Routes of usage: the tokens a user's executions used, and what they cost."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import Field, WithJsonSchema

from orchestrator.application import usage as use
from orchestrator.infrastructure.db.usage import SqlUsageSource
from orchestrator.presentation.api.deps import CallerDep, ContextDep
from orchestrator.presentation.api.schemas import WireModel

router = APIRouter(tags=["usage"])

INSTANT_FORMAT = "an ISO 8601 date or date-time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
Instant = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}], "maxLength": 64}
    ),
]


class UsageTotals(WireModel):
    """Tokens and cost of some root executions (sub-workflows are counted in their root's)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float = Field(description="By MODEL_PRICES; a model without a price costs 0")
    executions: int


class UsageGroup(WireModel):
    """One workflow, model or day."""

    key: str = Field(description="The workflow's id, the model, or the day (YYYY-MM-DD, UTC)")
    workflow_name: str | None = Field(None, description="groupBy=workflow, if it still exists")
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    executions: int = Field(description="By model: the executions that used the model")


class UsageOut(WireModel):
    """The usage in [from, to)."""

    start: dt.datetime = Field(alias="from")
    end: dt.datetime = Field(alias="to")
    group_by: use.GroupBy
    totals: UsageTotals
    groups: list[UsageGroup] = Field(
        description="Days in order; workflows and models by most tokens first"
    )
    unpriced_models: list[str] = Field(description="Models used that MODEL_PRICES has no price of")

    @classmethod
    def of(cls, report: use.UsageReport) -> UsageOut:
        """The wire form of a report."""
        t = report.totals
        return cls(
            start=report.window.start,
            end=report.window.end,
            group_by=report.group_by,
            totals=UsageTotals(
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
                total_tokens=t.total_tokens,
                cost_usd=t.cost_usd,
                executions=t.executions,
            ),
            groups=[
                UsageGroup(
                    key=g.key,
                    workflow_name=g.workflow_name,
                    input_tokens=g.input_tokens,
                    output_tokens=g.output_tokens,
                    total_tokens=g.total_tokens,
                    cost_usd=g.cost_usd,
                    executions=g.executions,
                )
                for g in report.groups
            ],
            unpriced_models=report.unpriced_models,
        )


def instant(name: str, text: str | None) -> dt.datetime | None:
    """A query parameter's date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        # RFC 3339 allows a lowercase `t` and `z`; fromisoformat only the uppercase ones.
        value = dt.datetime.fromisoformat(text.strip().upper())
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", name),
                    "msg": f"expected {INSTANT_FORMAT}",
                    "input": text,
                }
            ]
        ) from None


@router.get("/usage", response_model=UsageOut, response_model_exclude_none=True)
async def usage(
    context: ContextDep,
    caller: CallerDep,
    start: Annotated[
        Instant | None,
        Query(
            alias="from",
            max_length=64,
            description=f"Start of the range, included: {INSTANT_FORMAT} (default: 30 days "
            "before `to`)",
        ),
    ] = None,
    end: Annotated[
        Instant | None,
        Query(
            alias="to",
            max_length=64,
            description=f"End of the range, excluded: {INSTANT_FORMAT} (default: now); at "
            "most 366 days after `from`",
        ),
    ] = None,
    group_by: Annotated[use.GroupBy, Query(alias="groupBy")] = "day",
) -> UsageOut:
    """Tokens used by the caller's executions created in [from, to), with their cost by
    MODEL_PRICES, in total and per workflow, model or day (UTC).

    A caller sees their own usage; without authentication and without `userId`, everyone's.
    `to` not after `from`, or a range over 366 days, is a 400.
    """
    span = use.window(instant("from", start), instant("to", end), context.clock.now())
    report = await use.usage_report(
        SqlUsageSource(context.engine), caller, span, group_by, context.settings.model_prices
    )
    return UsageOut.of(report)
