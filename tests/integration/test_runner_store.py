"""The runner's store: claims, leases, heartbeats, fenced commits and releases."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.events import render
from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.engine import Step, initial_nodes
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.infrastructure.db.executions import LeaseSource
from orchestrator.infrastructure.db.repositories import SqlUnitOfWork
from orchestrator.infrastructure.db.tables import execution_events, executions, node_executions
from orchestrator.infrastructure.runner.store import Claim, LeaseLost, RunnerStore
from orchestrator.settings import async_database_url

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=15)
AFTER_LEASE = T0 + LEASE + dt.timedelta(seconds=1)


async def new_workflow(engine: AsyncEngine) -> Workflow:
    nodes = (
        Node("start", NodeType.START),
        Node("work", NodeType.TRANSFORM, {"expression": "input"}),
        Node("end", NodeType.END),
    )
    workflow = Workflow(
        id=str(uuid.uuid4()),
        name="flow",
        description=None,
        status=WorkflowStatus.ACTIVE,
        definition=Definition(
            nodes, (Edge("e1", "start", "work"), Edge("e2", "work", "end")), version=1
        ),
        user_id=None,
        created_at=T0,
        updated_at=T0,
    )
    async with SqlUnitOfWork(engine) as uow:
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def pending(
    engine: AsyncEngine, count: int = 1, lease_for: LeaseSource | None = None
) -> list[str]:
    """`count` PENDING executions, created one second apart; their ids, oldest first."""
    workflow = await new_workflow(engine)
    ids = []
    async with SqlUnitOfWork(engine, lease_for) as uow:
        for i in range(count):
            created = T0 - dt.timedelta(hours=1) + dt.timedelta(seconds=i)
            execution = WorkflowExecution(
                id=str(uuid.uuid4()),
                workflow_id=workflow.id,
                workflow_version=1,
                status=ExecutionStatus.PENDING,
                input={"n": i},
                user_id=None,
                created_at=created,
                updated_at=created,
                deadline_at=created + dt.timedelta(hours=2),
                nodes=initial_nodes(workflow.definition),
            )
            await uow.executions.add(execution)
            ids.append(execution.id)
        await uow.commit()
    return ids


def store(engine: AsyncEngine, owner: str) -> RunnerStore:
    return RunnerStore(engine, owner, LEASE)


async def lease_of(engine: AsyncEngine, execution_id: str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                select(
                    executions.c.lease_owner,
                    executions.c.lease_token,
                    executions.c.lease_expires_at,
                    executions.c.recoveries,
                    executions.c.status,
                    executions.c.last_seq,
                ).where(executions.c.id == execution_id)
            )
        ).one()


async def event_count(engine: AsyncEngine, execution_id: str) -> int:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(execution_events.c.seq).where(execution_events.c.execution_id == execution_id)
        )
        return len(rows.all())


async def node_rows(engine: AsyncEngine, execution_id: str) -> dict[str, tuple[Any, ...]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(node_executions).where(node_executions.c.execution_id == execution_id)
        )
        return {r.node_id: tuple(r) for r in rows}


# Claims


async def test_a_claim_takes_the_oldest_pending_executions(engine: AsyncEngine) -> None:
    ids = await pending(engine, 3)
    runner = store(engine, "runner-a")

    claims = await runner.claim(2, T0)

    # The oldest are chosen; RETURNING does not promise an order among them.
    assert sorted(c.execution_id for c in claims) == sorted(ids[:2])
    assert all(c.token == 1 and c.recoveries == 0 for c in claims)
    for execution_id in ids[:2]:
        lease = await lease_of(engine, execution_id)
        assert lease.lease_owner == "runner-a"
        assert lease.lease_token == 1
        assert lease.lease_expires_at == T0 + LEASE
    untouched = await lease_of(engine, ids[2])
    assert untouched.lease_owner is None
    assert untouched.lease_token == 0


async def test_another_owner_cannot_claim_while_the_lease_is_valid(engine: AsyncEngine) -> None:
    ids = await pending(engine, 2)
    first = await store(engine, "runner-a").claim(10, T0)
    other = store(engine, "runner-b")

    assert {c.execution_id for c in first} == set(ids)
    assert await other.claim(10, T0) == []
    assert await other.claim(10, T0 + LEASE - dt.timedelta(seconds=1)) == []
    assert {(await lease_of(engine, i)).lease_owner for i in ids} == {"runner-a"}


async def test_an_expired_lease_is_claimed_by_another_owner_as_a_recovery(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine)
    await store(engine, "runner-a").claim(10, T0)

    taken = await store(engine, "runner-b").claim(10, AFTER_LEASE)

    assert taken == [Claim(execution_id, token=2, recoveries=1)]
    lease = await lease_of(engine, execution_id)
    assert lease.lease_owner == "runner-b"
    assert lease.lease_token == 2
    assert lease.recoveries == 1
    assert lease.lease_expires_at == AFTER_LEASE + LEASE


async def test_every_takeover_of_a_lease_not_given_back_is_a_recovery_even_by_its_owner(
    engine: AsyncEngine,
) -> None:
    # A runner whose driver died keeps no heartbeat for it: it takes the execution back at
    # expiry, and that counts, so that an execution that kills its driver every time reaches
    # MAX_RECOVERIES instead of being taken back for ever.
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    await runner.claim(10, T0)

    again = await runner.claim(10, AFTER_LEASE)
    once_more = await runner.claim(10, AFTER_LEASE + LEASE + LEASE)

    assert again == [Claim(execution_id, token=2, recoveries=1)]
    assert once_more == [Claim(execution_id, token=3, recoveries=2)]


async def test_an_execution_inserted_with_a_lease_is_held_by_that_runner(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine, lease_for=lambda _: ("api-runner", T0 + LEASE))
    lease = await lease_of(engine, execution_id)
    assert (lease.lease_owner, lease.lease_token) == ("api-runner", 1)
    assert await store(engine, "other").claim(10, T0) == []
    # Held as if claimed: once the lease runs out, another runner takes over.
    taken = await store(engine, "other").claim(10, AFTER_LEASE)
    assert taken == [Claim(execution_id, 2, 1)]


async def test_finished_executions_are_never_claimed(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    async with engine.begin() as connection:
        await connection.execute(
            executions.update()
            .where(executions.c.id == execution_id)
            .values(status=ExecutionStatus.COMPLETED.value)
        )

    assert await store(engine, "runner-a").claim(10, AFTER_LEASE) == []


async def test_concurrent_claims_never_hand_out_the_same_execution(pg_url: str) -> None:
    # A small pool (10 connections at most): the test server is shared with other tests.
    engine = create_engine(async_database_url(pg_url), pool_size=5)
    try:
        ids = await pending(engine, 50)
        stores = [store(engine, f"runner-{i}") for i in range(4)]

        results = await asyncio.gather(*(stores[i % 4].claim(3, T0) for i in range(40)))

        claimed = [c.execution_id for batch in results for c in batch]
        duplicates = [i for i, n in Counter(claimed).items() if n > 1]
        assert duplicates == []
        assert all(len(batch) <= 3 for batch in results)
        assert set(claimed) <= set(ids)
        # Every claim left its owner on the row it returned.
        owners = {i: (await lease_of(engine, i)).lease_owner for i in claimed}
        for batch, runner in zip(results, (stores[i % 4] for i in range(40)), strict=True):
            assert all(owners[c.execution_id] == runner.owner for c in batch)
            assert all(c.token == 1 and c.recoveries == 0 for c in batch)
        # Whatever was skipped while locked is claimable afterwards, and only once.
        rest = await stores[0].claim(100, T0)
        assert sorted(claimed + [c.execution_id for c in rest]) == sorted(ids)
    finally:
        await engine.dispose()


# Heartbeats


async def test_a_heartbeat_renews_the_leases_still_held(engine: AsyncEngine) -> None:
    await pending(engine, 2)
    runner = store(engine, "runner-a")
    claims = await runner.claim(10, T0)
    later = T0 + dt.timedelta(seconds=10)

    assert await runner.heartbeat(claims, later) == set()
    assert await runner.heartbeat([], later) == set()

    for claim in claims:
        assert (await lease_of(engine, claim.execution_id)).lease_expires_at == later + LEASE
    # Renewed: not claimable at a time the first lease would have run out.
    assert await store(engine, "runner-b").claim(10, AFTER_LEASE) == []


async def test_a_heartbeat_reports_a_lease_another_owner_took_over(engine: AsyncEngine) -> None:
    kept, lost = await pending(engine, 2)
    runner = store(engine, "runner-a")
    claims = await runner.claim(10, T0)
    await runner.heartbeat([c for c in claims if c.execution_id == kept], AFTER_LEASE)
    taken = await store(engine, "runner-b").claim(10, AFTER_LEASE)
    assert [c.execution_id for c in taken] == [lost]

    assert await runner.heartbeat(claims, AFTER_LEASE) == {lost}

    after = await lease_of(engine, lost)
    assert after.lease_owner == "runner-b"
    assert after.lease_expires_at == AFTER_LEASE + LEASE


async def test_a_heartbeat_reports_a_lease_lost_to_a_reclaim_by_the_same_owner(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    old = await runner.claim(10, T0)
    new = await runner.claim(10, AFTER_LEASE)
    assert [c.token for c in new] == [2]

    assert await runner.heartbeat(old, AFTER_LEASE) == {execution_id}
    assert await runner.heartbeat(new, AFTER_LEASE) == set()


async def test_a_heartbeat_reports_a_cancelled_execution(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    claims = await runner.claim(10, T0)
    await cancel(engine, execution_id)

    assert await runner.heartbeat(claims, T0 + dt.timedelta(seconds=1)) == {execution_id}
    assert (await lease_of(engine, execution_id)).status == ExecutionStatus.CANCELLED.value


# Fenced commits


async def step(
    runner: RunnerStore, claim: Claim, now: dt.datetime
) -> tuple[Any, Step, list[ExecutionEvent]]:
    """The first step of an execution: it starts running and so does its START node."""
    loaded = await runner.load(claim.execution_id)
    assert loaded is not None
    execution, definition = loaded
    assert [n.id for n in definition.nodes] == ["start", "work", "end"]
    pending_step = Step(previous_seq=execution.last_seq)
    pending_step.events += execution.begin(now)
    pending_step.events += execution.start_node("start", 1, {"n": 0}, now)
    pending_step.nodes["start"] = execution.nodes["start"]
    return execution, pending_step, render(execution, pending_step.events, {})


async def cancel(engine: AsyncEngine, execution_id: str) -> None:
    """What the cancel route writes."""
    async with SqlUnitOfWork(engine) as uow:
        execution = await uow.executions.get(execution_id)
        assert execution is not None
        previous = execution.last_seq
        nodes = list(execution.nodes.values())
        events = render(execution, execution.cancel(T0), {})
        assert await uow.executions.write_step(execution, previous, nodes, events)
        await uow.commit()


async def test_a_commit_under_a_held_lease_writes_the_step(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (claim,) = await runner.claim(1, T0)
    execution, first, events = await step(runner, claim, T0)

    await runner.commit(claim, execution, first, events)

    lease = await lease_of(engine, execution_id)
    assert lease.status == ExecutionStatus.RUNNING.value
    assert lease.last_seq == 2
    assert lease.lease_owner == "runner-a"
    assert await event_count(engine, execution_id) == 2
    loaded = await runner.load(execution_id)
    assert loaded is not None
    assert loaded[0].nodes["start"].status == NodeStatus.RUNNING
    assert loaded[0].nodes["start"].input == {"n": 0}
    assert loaded[0].current_node_id == "start"


async def test_a_commit_with_a_stale_token_raises_and_writes_nothing(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (stale,) = await runner.claim(1, T0)
    await store(engine, "runner-b").claim(1, AFTER_LEASE)
    execution, first, events = await step(runner, stale, AFTER_LEASE)
    before = await node_rows(engine, execution_id)

    with pytest.raises(LeaseLost):
        await runner.commit(stale, execution, first, events)

    lease = await lease_of(engine, execution_id)
    assert lease.status == ExecutionStatus.PENDING.value
    assert lease.last_seq == 0
    assert lease.lease_owner == "runner-b"
    assert await node_rows(engine, execution_id) == before
    assert await event_count(engine, execution_id) == 0


async def test_a_commit_with_a_stale_previous_seq_raises_and_writes_nothing(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (claim,) = await runner.claim(1, T0)
    execution, first, events = await step(runner, claim, T0)
    before = await node_rows(engine, execution_id)

    first.previous_seq += 1
    with pytest.raises(LeaseLost):
        await runner.commit(claim, execution, first, events)

    lease = await lease_of(engine, execution_id)
    assert lease.status == ExecutionStatus.PENDING.value
    assert lease.last_seq == 0
    assert await node_rows(engine, execution_id) == before
    assert await event_count(engine, execution_id) == 0


async def test_a_commit_after_a_cancel_raises_and_writes_nothing(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (claim,) = await runner.claim(1, T0)
    execution, first, events = await step(runner, claim, T0)
    await cancel(engine, execution_id)
    # The cancel wrote its own event; a step computed on the old seq must not land after it.
    before = await node_rows(engine, execution_id)

    with pytest.raises(LeaseLost):
        await runner.commit(claim, execution, first, events)

    assert (await lease_of(engine, execution_id)).status == ExecutionStatus.CANCELLED.value
    assert await node_rows(engine, execution_id) == before
    assert await event_count(engine, execution_id) == 1


async def test_a_finishing_commit_gives_the_lease_up(engine: AsyncEngine) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (claim,) = await runner.claim(1, T0)
    execution, first, events = await step(runner, claim, T0)
    execution.move(ExecutionStatus.FAILED, T0)
    execution.error = "boom"

    await runner.commit(claim, execution, first, events)

    lease = await lease_of(engine, execution_id)
    assert lease.status == ExecutionStatus.FAILED.value
    assert lease.lease_owner is None
    assert lease.lease_expires_at is None
    assert await store(engine, "runner-b").claim(1, AFTER_LEASE) == []


# Release


async def test_a_release_lets_another_owner_claim_at_once_without_a_recovery(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine)
    runner = store(engine, "runner-a")
    (claim,) = await runner.claim(1, T0)

    await runner.release(claim)

    lease = await lease_of(engine, execution_id)
    assert lease.lease_owner is None
    assert lease.lease_expires_at is None
    taken = await store(engine, "runner-b").claim(1, T0)
    assert taken == [Claim(execution_id, token=2, recoveries=0)]
    assert (await lease_of(engine, execution_id)).recoveries == 0


async def test_a_release_with_a_stale_token_leaves_the_new_lease_alone(
    engine: AsyncEngine,
) -> None:
    (execution_id,) = await pending(engine)
    (stale,) = await store(engine, "runner-a").claim(1, T0)
    await store(engine, "runner-b").claim(1, AFTER_LEASE)

    await store(engine, "runner-a").release(stale)

    lease = await lease_of(engine, execution_id)
    assert lease.lease_owner == "runner-b"
    assert lease.lease_expires_at == AFTER_LEASE + LEASE
