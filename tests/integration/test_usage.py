"""Usage per user, read from PostgreSQL and SQLite: every grouping, totals, costs, the range's
bounds, per-user scoping, and sub-workflows counted once (in their root)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sqlalchemy import JSON, func, null, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.access import ANYONE, Caller
from orchestrator.application.usage import GroupBy, UsageLine, UsageReport, Window, usage_report
from orchestrator.domain.workflow import Workflow
from orchestrator.infrastructure.db import usage as usage_db
from orchestrator.infrastructure.db.tables import executions
from orchestrator.infrastructure.db.usage import SqlUsageSource
from tests.integration.test_repositories import (
    new_execution,
    new_workflow,
    store_execution,
    store_workflow,
)

PRICES = {"gpt-4o": {"input": 2.5, "output": 10.0}, "claude": {"input": 3.0, "output": 15.0}}
DAY1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SPAN = Window(DAY1, DAY1 + dt.timedelta(days=2))
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def summary(**by_model: tuple[int, int]) -> dict[str, Any]:
    """A stored usage as the runner writes it: totals and `byModel`."""
    models = {
        model: {"inputTokens": i, "outputTokens": o, "totalTokens": i + o}
        for model, (i, o) in by_model.items()
    }
    return {
        "inputTokens": sum(i for i, _ in by_model.values()),
        "outputTokens": sum(o for _, o in by_model.values()),
        "totalTokens": sum(i + o for i, o in by_model.values()),
        "byModel": models,
    }


@dataclass
class Stored:
    """The workflows of the scenario."""

    alpha: Workflow
    beta: Workflow
    gamma: Workflow


async def run(
    engine: AsyncEngine,
    workflow: Workflow,
    created_at: dt.datetime,
    usage: dict[str, Any] | None,
    user_id: str | None = "alice",
    parent: str | None = None,
) -> str:
    """Store a root execution (or a child of `parent`) with this usage; returns its id."""
    execution = replace(
        new_execution(workflow, user_id=user_id, created_at=created_at),
        usage=usage,
        parent_execution_id=parent,
        parent_node_id=None if parent is None else "mid",
        depth=0 if parent is None else 1,
    )
    await store_execution(engine, execution)
    return execution.id


@pytest.fixture
async def stored(engine: AsyncEngine) -> Stored:
    """Alice's executions in and around SPAN, a child of one of them, and Bob's."""
    alpha = await store_workflow(engine, replace(new_workflow("alice"), name="alpha"))
    beta = await store_workflow(engine, replace(new_workflow("alice"), name="beta"))
    gamma = await store_workflow(engine, replace(new_workflow("bob"), name="gamma"))
    at = DAY1
    await run(engine, alpha, at + dt.timedelta(hours=10), summary(**{"gpt-4o": (1000, 200)}))
    await run(engine, alpha, at + dt.timedelta(hours=11), summary(claude=(500, 100)))
    last_moment = at + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    await run(engine, alpha, last_moment, summary(**{"gpt-4o": (2000, 0)}))
    root = await run(
        engine, beta, at + dt.timedelta(days=1), summary(unknown=(10, 20), mistral=(100, 100))
    )
    # Already rolled up into its root's usage above: never counted again.
    await run(
        engine, beta, at + dt.timedelta(days=1), summary(**{"gpt-4o": (999, 999)}), "alice", root
    )
    # 01:00 at UTC+2 is still the first day in UTC.
    await run(engine, beta, dt.datetime(2026, 3, 2, 1, tzinfo=PLUS_TWO), summary(claude=(0, 1000)))
    await run(engine, alpha, at + dt.timedelta(hours=12), None)
    await run(engine, alpha, at - dt.timedelta(microseconds=1), summary(claude=(5, 5)))
    await run(engine, alpha, SPAN.end, summary(claude=(7, 7)))
    await run(engine, gamma, at + dt.timedelta(hours=3), summary(**{"gpt-4o": (7000, 777)}), "bob")
    return Stored(alpha, beta, gamma)


def line(
    key: str, i: int, o: int, t: int, cost: float, n: int, name: str | None = None
) -> UsageLine:
    return UsageLine(key, i, o, t, cost, n, name)


async def report(engine: AsyncEngine, group_by: GroupBy, caller: Caller) -> UsageReport:
    return await usage_report(SqlUsageSource(engine), caller, SPAN, group_by, PRICES)


ALICE = Caller(user_id="alice")
# gpt-4o: 3000 in, 200 out = 0.0075 + 0.002; claude: 500 in, 1100 out = 0.0015 + 0.0165.
ALICE_TOTALS = line("", 3610, 1420, 5030, 0.0275, 5)


async def test_by_day_in_utc_days_in_order(engine: AsyncEngine, stored: Stored) -> None:
    found = await report(engine, "day", ALICE)
    assert found.totals == ALICE_TOTALS
    assert found.groups == [
        line("2026-03-01", 3500, 1300, 4800, 0.0275, 4),
        line("2026-03-02", 110, 120, 230, 0.0, 1),
    ]
    assert found.unpriced_models == ["mistral", "unknown"]
    assert (found.window, found.group_by) == (SPAN, "day")


async def test_by_workflow_with_names_most_tokens_first(
    engine: AsyncEngine, stored: Stored
) -> None:
    found = await report(engine, "workflow", ALICE)
    assert found.totals == ALICE_TOTALS
    assert found.groups == [
        line(stored.alpha.id, 3500, 300, 3800, 0.0125, 3, "alpha"),
        line(stored.beta.id, 110, 1120, 1230, 0.015, 2, "beta"),
    ]


async def test_by_model_counts_each_execution_per_model_it_used(
    engine: AsyncEngine, stored: Stored
) -> None:
    found = await report(engine, "model", ALICE)
    assert found.totals == ALICE_TOTALS
    assert found.groups == [
        line("gpt-4o", 3000, 200, 3200, 0.0095, 2),
        line("claude", 500, 1100, 1600, 0.018, 2),
        line("mistral", 100, 100, 200, 0.0, 1),
        line("unknown", 10, 20, 30, 0.0, 1),
    ]
    assert found.unpriced_models == ["mistral", "unknown"]


async def test_each_user_sees_only_their_own(engine: AsyncEngine, stored: Stored) -> None:
    bob = await report(engine, "workflow", Caller(user_id="bob"))
    assert bob.totals == line("", 7000, 777, 7777, 0.02527, 1)
    assert bob.groups == [line(stored.gamma.id, 7000, 777, 7777, 0.02527, 1, "gamma")]
    assert bob.unpriced_models == []
    scoped = await report(engine, "day", Caller(user_id="alice", scoped=True))
    assert scoped.totals == ALICE_TOTALS
    nobody = await report(engine, "model", Caller(user_id="carol", scoped=True))
    assert (nobody.totals, nobody.groups, nobody.unpriced_models) == (
        line("", 0, 0, 0, 0, 0),
        [],
        [],
    )


@pytest.mark.parametrize(
    "caller", [ANYONE, Caller(user_id="admin", scoped=True, reads_all=True)], ids=["none", "admin"]
)
async def test_everyone_without_a_user_or_for_an_admin(
    engine: AsyncEngine, stored: Stored, caller: Caller
) -> None:
    found = await report(engine, "model", caller)
    assert found.totals == line("", 10610, 2197, 12807, 0.05277, 6)
    assert found.groups[0] == line("gpt-4o", 10000, 977, 10977, 0.03477, 3)


async def test_the_range_includes_from_and_excludes_to(engine: AsyncEngine, stored: Stored) -> None:
    before = Window(DAY1 - dt.timedelta(days=1), DAY1)
    found = await usage_report(SqlUsageSource(engine), ALICE, before, "day", PRICES)
    assert found.groups == [line("2026-02-28", 5, 5, 10, 0.00009, 1)]
    after = Window(SPAN.end, SPAN.end + dt.timedelta(microseconds=1))
    found = await usage_report(SqlUsageSource(engine), ALICE, after, "day", PRICES)
    assert found.groups == [line("2026-03-03", 7, 7, 14, 0.000126, 1)]


async def test_rows_are_read_in_chunks(
    engine: AsyncEngine, stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_db, "CHUNK_ROWS", 2)
    monkeypatch.setattr(usage_db, "NAMES_PER_QUERY", 1)
    source = SqlUsageSource(engine)
    sizes = [len(chunk) async for chunk in source.chunks("alice", SPAN.start, SPAN.end)]
    assert sizes == [2, 2, 1]
    found = await report(engine, "workflow", ALICE)
    assert found.totals == ALICE_TOTALS
    assert [g.workflow_name for g in found.groups] == ["alpha", "beta"]


async def test_executions_without_usage_are_not_even_fetched(
    engine: AsyncEngine, stored: Stored
) -> None:
    """Without usage, an execution holds JSON `null` (as inserted) or SQL NULL."""
    sql_null = await run(engine, stored.alpha, DAY1, None)
    async with engine.begin() as connection:
        await connection.execute(
            update(executions).where(executions.c.id == sql_null).values(usage=null())
        )
        json_null = await connection.execute(
            select(func.count()).where(
                executions.c.usage.is_not(None), executions.c.usage == JSON.NULL
            )
        )
    assert json_null.scalar_one() == 1
    source = SqlUsageSource(engine)
    rows = [r async for chunk in source.chunks("alice", SPAN.start, SPAN.end) for r in chunk]
    assert len(rows) == 5
    assert all(isinstance(r.usage, dict) for r in rows)
    assert all(r.created_at.tzinfo is not None for r in rows)


async def test_older_flat_usages_count_as_an_unknown_model(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow("alice"))
    flat = {"inputTokens": 4, "outputTokens": 6, "totalTokens": 10}
    await run(engine, workflow, DAY1, flat)
    found = await report(engine, "model", ALICE)
    assert found.groups == [line("unknown", 4, 6, 10, 0.0, 1)]
    assert found.unpriced_models == ["unknown"]
