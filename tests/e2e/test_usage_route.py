"""GET /usage through a real service: the answer's shape, its defaults, and the 400s."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.settings import async_database_url
from tests.e2e.test_workflows_api import assert_envelope, user
from tests.integration.test_repositories import (
    new_execution,
    new_workflow,
    store_execution,
    store_workflow,
)
from tests.integration.test_usage import summary
from tests.processes import Process, running, service_process

PRICES = {"gpt-4o": {"input": 2.5, "output": 10.0}}
DAY1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def service(service_db: str, standin: str) -> Iterator[Process]:
    """The service with a price table, also serving its routes under /api."""
    process = service_process(
        service_db, standin, MODEL_PRICES=json.dumps(PRICES), API_PREFIX="/api"
    )
    with running(process):
        yield process


@pytest.fixture
async def database(service_db: str) -> AsyncIterator[AsyncEngine]:
    """The service's database, to store executions with chosen usage and times."""
    engine = create_engine(async_database_url(service_db))
    yield engine
    await engine.dispose()


async def store(
    engine: AsyncEngine, owner: str, name: str, *runs: tuple[dt.datetime, dict[str, Any]]
) -> str:
    """A workflow of `owner` and its root executions created at those times with that usage;
    returns the workflow's id."""
    workflow = await store_workflow(engine, replace(new_workflow(owner), name=name))
    for created_at, usage in runs:
        execution = new_execution(workflow, user_id=owner, created_at=created_at)
        await store_execution(engine, replace(execution, usage=usage))
    return workflow.id


async def test_the_answer_per_workflow(api: httpx.AsyncClient, database: AsyncEngine) -> None:
    owner = user()
    one = await store(
        database,
        owner,
        "summarize",
        (DAY1, summary(**{"gpt-4o": (1000, 100)})),
        (DAY1 + dt.timedelta(hours=5), summary(**{"gpt-4o": (3000, 300), "local": (50, 50)})),
    )
    other = await store(database, owner, "translate", (DAY1, summary(local=(7, 3))))
    await store(database, user(), "someone else's", (DAY1, summary(local=(1, 1))))
    params = {"from": "2026-03-01", "to": "2026-03-02T00:00:00Z", "groupBy": "workflow"}
    response = await api.get("/usage", params={**params, "userId": owner})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "from": "2026-03-01T00:00:00Z",
        "to": "2026-03-02T00:00:00Z",
        "groupBy": "workflow",
        "totals": {
            "inputTokens": 4057,
            "outputTokens": 453,
            "totalTokens": 4510,
            "costUsd": 0.014,
            "executions": 3,
        },
        "groups": [
            {
                "key": one,
                "workflowName": "summarize",
                "inputTokens": 4050,
                "outputTokens": 450,
                "totalTokens": 4500,
                "costUsd": 0.014,
                "executions": 2,
            },
            {
                "key": other,
                "workflowName": "translate",
                "inputTokens": 7,
                "outputTokens": 3,
                "totalTokens": 10,
                "costUsd": 0.0,
                "executions": 1,
            },
        ],
        "unpricedModels": ["local"],
    }
    prefixed = await api.get("/api/usage", params={**params, "userId": owner})
    assert prefixed.json() == response.json()


async def test_groups_by_model_and_by_day_name_no_workflow(
    api: httpx.AsyncClient, database: AsyncEngine
) -> None:
    owner = user()
    await store(database, owner, "w", (DAY1, summary(**{"gpt-4o": (10, 10), "local": (1, 1)})))
    params = {"from": "2026-03-01T02:00:00+02:00", "to": "2026-03-03t00:00:00z", "userId": owner}
    by_model = (await api.get("/usage", params={**params, "groupBy": "model"})).json()
    assert by_model["from"] == "2026-03-01T00:00:00Z"
    assert [(g["key"], g["totalTokens"], g["executions"]) for g in by_model["groups"]] == [
        ("gpt-4o", 20, 1),
        ("local", 2, 1),
    ]
    by_day = (await api.get("/usage", params=params)).json()
    assert by_day["groupBy"] == "day"
    assert by_day["groups"] == [
        {
            "key": "2026-03-01",
            "inputTokens": 11,
            "outputTokens": 11,
            "totalTokens": 22,
            "costUsd": 0.000125,
            "executions": 1,
        }
    ]


async def test_by_default_the_last_30_days(api: httpx.AsyncClient, database: AsyncEngine) -> None:
    owner = user()
    now = dt.datetime.now(dt.UTC)
    recent = now - dt.timedelta(days=1)
    old = now - dt.timedelta(days=31)
    await store(database, owner, "w", (recent, summary(local=(2, 3))), (old, summary(local=(9, 9))))
    before = dt.datetime.now(dt.UTC)
    body = (await api.get("/usage", params={"userId": owner})).json()
    after = dt.datetime.now(dt.UTC)
    start, end = dt.datetime.fromisoformat(body["from"]), dt.datetime.fromisoformat(body["to"])
    assert before - dt.timedelta(seconds=1) <= end <= after + dt.timedelta(seconds=1)
    assert end - start == dt.timedelta(days=30)
    assert body["groupBy"] == "day"
    assert body["groups"] == [
        {
            "key": recent.date().isoformat(),
            "inputTokens": 2,
            "outputTokens": 3,
            "totalTokens": 5,
            "costUsd": 0.0,
            "executions": 1,
        }
    ]
    only_to = (await api.get("/usage", params={"userId": owner, "to": "2026-03-31"})).json()
    assert (only_to["from"], only_to["to"]) == ("2026-03-01T00:00:00Z", "2026-03-31T00:00:00Z")


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-03-01", "to": "2026-03-01"}, "to"),
        ({"from": "2026-03-02", "to": "2026-03-01T23:59:59Z"}, "to"),
        ({"from": "2025-01-01", "to": "2026-01-03"}, "to"),
        ({"to": "0001-01-02"}, "from"),
        ({"groupBy": "week"}, "groupBy"),
        ({"from": "2026-03-01" + "0" * 100}, "from"),
    ],
    ids=[
        "not-a-date",
        "no-such-day",
        "empty",
        "backwards",
        "over-366-days",
        "too-early",
        "unknown-group",
        "too-long",
    ],
)
async def test_bad_ranges_are_400(
    api: httpx.AsyncClient, params: dict[str, str], path: str
) -> None:
    response = await api.get("/usage", params=params)
    body = assert_envelope(response, 400, "GET", "/usage")
    assert path in [detail["path"] for detail in body["details"]]


async def test_366_days_is_allowed(api: httpx.AsyncClient) -> None:
    response = await api.get("/usage", params={"from": "2024-01-01", "to": "2025-01-01"})
    assert response.status_code == 200, response.text
    assert response.json()["to"] == "2025-01-01T00:00:00Z"
