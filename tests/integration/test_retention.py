"""Retention on the real databases: which executions, node rows and events a sweep deletes
or compacts, and that everything else stays exactly as it was."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.engine import initial_nodes
from orchestrator.domain.execution import ExecutionStatus, WorkflowExecution
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.infrastructure.db.executions import insert_events
from orchestrator.infrastructure.db.repositories import SqlUnitOfWork
from orchestrator.infrastructure.db.retention import DELETE_LOCK_ID
from orchestrator.infrastructure.db.tables import execution_events, executions, node_executions
from orchestrator.infrastructure.retention import Retention, Swept
from tests.unit.fakes import FixedClock

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAYS = 30
CUTOFF = NOW - dt.timedelta(days=DAYS)
OLD = CUTOFF - dt.timedelta(days=1)
EVENTS = 4  # events stored per execution, seq 1..EVENTS
DEFINITION = Definition(
    (
        Node("start", NodeType.START),
        Node("work", NodeType.TRANSFORM, {"expression": "input"}),
        Node("end", NodeType.END),
    ),
    (Edge("e1", "start", "work"), Edge("e2", "work", "end")),
    version=1,
)
FINISHED = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


def retention(
    engine: AsyncEngine,
    days: int = DAYS,
    hours: int = 0,
    batch: int = 2,
    clock: FixedClock | None = None,
    interval_s: float = 300.0,
) -> Retention:
    return Retention(engine, clock or FixedClock(NOW), days, hours, interval_s, batch)


async def new_workflow(engine: AsyncEngine) -> str:
    workflow = Workflow(
        id=str(uuid.uuid4()),
        name="flow",
        description=None,
        status=WorkflowStatus.ACTIVE,
        definition=DEFINITION,
        user_id=None,
        created_at=OLD - dt.timedelta(days=30),
        updated_at=OLD - dt.timedelta(days=30),
    )
    async with SqlUnitOfWork(engine) as uow:
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow.id


async def stored(
    engine: AsyncEngine,
    workflow_id: str,
    status: ExecutionStatus,
    completed_at: dt.datetime | None = None,
    keep: bool = False,
    created_at: dt.datetime | None = None,
) -> str:
    """An execution with its node rows and EVENTS events, as a runner would have left it."""
    created = created_at or (completed_at or OLD) - dt.timedelta(minutes=5)
    execution = WorkflowExecution(
        id=str(uuid.uuid4()),
        workflow_id=workflow_id,
        workflow_version=1,
        status=status,
        input={"n": 1},
        user_id="ann",
        created_at=created,
        updated_at=completed_at or created,
        deadline_at=created + dt.timedelta(days=1),
        nodes=initial_nodes(DEFINITION),
        started_at=created,
        completed_at=completed_at,
        last_seq=EVENTS,
        keep=keep,
    )
    async with SqlUnitOfWork(engine) as uow:
        await uow.executions.add(execution)
        await uow.commit()
    events = [
        ExecutionEvent(execution.id, seq, "node:update", {"seq": seq})
        for seq in range(1, EVENTS + 1)
    ]
    async with engine.begin() as connection:
        await insert_events(connection, events, created)
    return execution.id


async def contents(engine: AsyncEngine) -> dict[str, Any]:
    """Every stored row of every execution, by execution id: (execution, nodes, events)."""
    async with engine.connect() as connection:
        rows = (await connection.execute(select(executions))).all()
        nodes = (await connection.execute(select(node_executions))).all()
        events = (await connection.execute(select(execution_events))).all()
    by_id: dict[str, Any] = {r.id: (tuple(r), [], []) for r in rows}
    for node in sorted(nodes, key=lambda n: (n.node_id, n.iteration)):
        by_id[node.execution_id][1].append(tuple(node))
    for event in sorted(events, key=lambda e: e.seq):
        by_id[event.execution_id][2].append(tuple(event))
    return by_id


async def counts(engine: AsyncEngine) -> tuple[int, ...]:
    """Rows in executions, node_executions and execution_events."""
    async with engine.connect() as connection:
        return tuple(
            [
                (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                for table in ("executions", "node_executions", "execution_events")
            ]
        )


async def test_a_sweep_deletes_exactly_the_old_finished_unpinned_executions(
    engine: AsyncEngine,
) -> None:
    workflow_id = await new_workflow(engine)
    doomed = [await stored(engine, workflow_id, status, OLD) for status in FINISHED]
    doomed.append(
        await stored(
            engine, workflow_id, ExecutionStatus.COMPLETED, CUTOFF - dt.timedelta(microseconds=1)
        )
    )
    doomed.append(await stored(engine, workflow_id, ExecutionStatus.FAILED, OLD - OLD.resolution))
    spared = [
        await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD, keep=True),
        await stored(engine, workflow_id, ExecutionStatus.COMPLETED, CUTOFF),
        await stored(engine, workflow_id, ExecutionStatus.FAILED, NOW - dt.timedelta(hours=1)),
        # Unfinished, however old they are.
        await stored(engine, workflow_id, ExecutionStatus.RUNNING, created_at=OLD),
        await stored(engine, workflow_id, ExecutionStatus.PENDING, created_at=OLD),
    ]
    before = await contents(engine)
    nodes = len(DEFINITION.nodes)
    assert await counts(engine) == (10, 10 * nodes, 10 * EVENTS)

    # Batches of 2: five executions take three transactions.
    swept = await retention(engine, batch=2).sweep_once()

    assert swept == Swept(deleted=5, compacted=0)
    after = await contents(engine)
    assert set(after) == set(spared)
    assert after == {i: before[i] for i in spared}
    # Their node rows and events went with them (the cascade), nothing else did.
    assert await counts(engine) == (5, 5 * nodes, 5 * EVENTS)
    assert not set(doomed) & set(after)


async def test_a_sweep_with_nothing_old_enough_changes_nothing(engine: AsyncEngine) -> None:
    workflow_id = await new_workflow(engine)
    for status in FINISHED:
        await stored(engine, workflow_id, status, CUTOFF + dt.timedelta(seconds=1))
    before = await contents(engine)

    assert await retention(engine).sweep_once() == Swept()
    assert await contents(engine) == before


async def test_zero_days_and_zero_hours_keep_everything(engine: AsyncEngine) -> None:
    workflow_id = await new_workflow(engine)
    await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD - dt.timedelta(days=3650))
    before = await contents(engine)
    keeper = retention(engine, days=0, hours=0, interval_s=0.01)

    assert not keeper.enabled
    assert await keeper.sweep_once() == Swept()
    await keeper.start()
    await keeper.stop()
    assert await contents(engine) == before


async def test_compaction_keeps_only_the_last_event_of_old_finished_executions(
    engine: AsyncEngine,
) -> None:
    workflow_id = await new_workflow(engine)
    hours = 24
    old = NOW - dt.timedelta(hours=hours, seconds=1)
    compacted = [
        await stored(engine, workflow_id, ExecutionStatus.COMPLETED, old),
        await stored(engine, workflow_id, ExecutionStatus.FAILED, old - dt.timedelta(days=3)),
        await stored(engine, workflow_id, ExecutionStatus.CANCELLED, old, keep=True),
    ]
    untouched = [
        await stored(engine, workflow_id, ExecutionStatus.COMPLETED, NOW - dt.timedelta(hours=23)),
        await stored(engine, workflow_id, ExecutionStatus.RUNNING, created_at=OLD),
    ]
    before = await contents(engine)
    clock = FixedClock(NOW)
    sweeper = retention(engine, days=0, hours=hours, batch=2, clock=clock)

    assert await sweeper.sweep_once() == Swept(deleted=0, compacted=3)

    after = await contents(engine)
    for execution_id in untouched:
        assert after[execution_id] == before[execution_id]
    for execution_id in compacted:
        row, nodes, events = after[execution_id]
        old_row, old_nodes, old_events = before[execution_id]
        assert nodes == old_nodes
        assert events == [old_events[-1]]  # the final event, seq == last_seq
        marked = dict(zip(executions.c.keys(), row, strict=True))
        assert marked.pop("events_compacted_at") == NOW
        unmarked = dict(zip(executions.c.keys(), old_row, strict=True))
        assert unmarked.pop("events_compacted_at") is None
        assert marked == unmarked

    # Again at once: nothing more to do. Two hours on, the younger one's turn comes.
    assert await sweeper.sweep_once() == Swept()
    clock.advance(2 * 3600)
    assert await sweeper.sweep_once() == Swept(compacted=1)
    later = await contents(engine)
    assert later[untouched[0]][2] == [before[untouched[0]][2][-1]]
    assert later[untouched[1]] == before[untouched[1]]


async def test_deletion_and_compaction_in_one_sweep(engine: AsyncEngine) -> None:
    workflow_id = await new_workflow(engine)
    gone = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD)
    thinned = await stored(
        engine, workflow_id, ExecutionStatus.COMPLETED, NOW - dt.timedelta(days=2)
    )
    whole = await stored(
        engine, workflow_id, ExecutionStatus.COMPLETED, NOW - dt.timedelta(hours=1)
    )

    swept = await retention(engine, days=DAYS, hours=24).sweep_once()

    assert swept == Swept(deleted=1, compacted=1)
    after = await contents(engine)
    assert set(after) == {thinned, whole}
    assert gone not in after
    assert [e[1] for e in after[thinned][2]] == [EVENTS]
    assert [e[1] for e in after[whole][2]] == list(range(1, EVENTS + 1))


async def test_two_replicas_sweeping_at_once_delete_each_row_once(engine: AsyncEngine) -> None:
    workflow_id = await new_workflow(engine)
    doomed = [await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD) for _ in range(24)]
    spared = [
        await stored(engine, workflow_id, ExecutionStatus.COMPLETED, NOW),
        await stored(engine, workflow_id, ExecutionStatus.RUNNING, created_at=OLD),
    ]
    before = await contents(engine)
    # Another process: its own engine (its own connections) on the same database.
    other = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        swept = await asyncio.gather(
            *(retention(e, batch=3, hours=1).sweep_once() for e in (engine, other, engine, other))
        )
    finally:
        await other.dispose()

    assert sum(s.deleted for s in swept) == len(doomed), swept
    after = await contents(engine)
    assert set(after) == set(spared)
    assert after == {i: before[i] for i in spared}


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_sweep_skips_an_execution_locked_by_another_transaction(
    engine: AsyncEngine,
) -> None:
    workflow_id = await new_workflow(engine)
    locked = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD)
    await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD)
    sweeper = retention(engine)

    async with engine.connect() as holder:
        await holder.execute(
            select(executions.c.id).where(executions.c.id == locked).with_for_update()
        )
        # Not waited for: the sweep ends well before the lock does.
        swept = await asyncio.wait_for(sweeper.sweep_once(), 20)
        assert swept == Swept(deleted=1)
        assert set(await contents(engine)) == {locked}
        await holder.rollback()

    assert await sweeper.sweep_once() == Swept(deleted=1)
    assert await contents(engine) == {}


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_replica_holding_the_delete_lock_makes_the_others_skip_deleting(
    engine: AsyncEngine,
) -> None:
    workflow_id = await new_workflow(engine)
    doomed = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD)
    pinned = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD, keep=True)
    recent = await stored(
        engine, workflow_id, ExecutionStatus.COMPLETED, NOW - dt.timedelta(hours=2)
    )
    before = await contents(engine)

    async with engine.begin() as holder:
        await holder.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": DELETE_LOCK_ID})
        # Deleting is the holder's; compacting goes on meanwhile, but leaves alone what
        # deleting is to take.
        assert await retention(engine, hours=1).sweep_once() == Swept(compacted=2)
        during = await contents(engine)
        assert during[doomed] == before[doomed]
        assert [len(during[i][2]) for i in (pinned, recent)] == [1, 1]

    assert await retention(engine).sweep_once() == Swept(deleted=1)
    assert set(await contents(engine)) == {pinned, recent}


async def test_started_it_sweeps_every_interval_and_stops_promptly(engine: AsyncEngine) -> None:
    workflow_id = await new_workflow(engine)
    clock = FixedClock(NOW)
    sweeper = retention(engine, clock=clock, interval_s=0.05)
    first = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, OLD)
    await sweeper.start()
    try:
        await until_gone(engine, first)
        # Later sweeps find what became old since.
        second = await stored(engine, workflow_id, ExecutionStatus.COMPLETED, NOW)
        clock.advance(DAYS * 86400 + 1)
        await until_gone(engine, second)
    finally:
        started = time.monotonic()
        await sweeper.stop()
    assert time.monotonic() - started < 5


async def until_gone(engine: AsyncEngine, execution_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while execution_id in await contents(engine):
        assert time.monotonic() < deadline, f"{execution_id} was not deleted"
        await asyncio.sleep(0.05)
