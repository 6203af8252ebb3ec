"""The SQL repositories and unit of work, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.events import render
from orchestrator.application.ports import ExecutionDetail, ExecutionEvent, Page
from orchestrator.domain.engine import initial_nodes
from orchestrator.domain.errors import Conflict
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from orchestrator.infrastructure.db.repositories import SqlUnitOfWork
from orchestrator.infrastructure.db.tables import execution_events, executions, node_executions

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def definition(*middle: Node) -> Definition:
    """START -> middle... -> END, in that order, so node order is not alphabetical."""
    nodes = (Node("zstart", NodeType.START), *middle, Node("aend", NodeType.END))
    edges = tuple(
        Edge(f"e{i}", nodes[i].id, nodes[i + 1].id, source_handle=None)
        for i in range(len(nodes) - 1)
    )
    return Definition(nodes=nodes, edges=edges, version=1)


def transform(node_id: str, expression: str = "input") -> Node:
    return Node(
        node_id,
        NodeType.TRANSFORM,
        config={"expression": expression, "nested": {"a": [1, None, {"b": True}]}},
        name=f"label of {node_id}",
        position={"x": 10.5, "y": -3.0},
    )


def new_workflow(
    user_id: str | None = "alice",
    status: WorkflowStatus = WorkflowStatus.ACTIVE,
    created_at: dt.datetime = T0,
    graph: Definition | None = None,
) -> Workflow:
    return Workflow(
        id=str(uuid.uuid4()),
        name="flow",
        description="a description",
        status=status,
        definition=graph or definition(transform("mid")),
        user_id=user_id,
        created_at=created_at,
        updated_at=created_at,
    )


def new_execution(
    workflow: Workflow,
    *,
    status: ExecutionStatus = ExecutionStatus.PENDING,
    user_id: str | None = "alice",
    created_at: dt.datetime = T0,
    node_input: Any = None,
    key: str | None = None,
) -> WorkflowExecution:
    return WorkflowExecution(
        id=str(uuid.uuid4()),
        workflow_id=workflow.id,
        workflow_version=workflow.version,
        status=status,
        input=node_input,
        user_id=user_id,
        created_at=created_at,
        updated_at=created_at,
        deadline_at=created_at + dt.timedelta(minutes=5),
        nodes=initial_nodes(workflow.definition),
        idempotency_key=key,
    )


async def store_workflow(engine: AsyncEngine, workflow: Workflow) -> Workflow:
    async with SqlUnitOfWork(engine) as uow:
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def store_execution(engine: AsyncEngine, execution: WorkflowExecution) -> WorkflowExecution:
    async with SqlUnitOfWork(engine) as uow:
        stored = await uow.executions.add(execution)
        await uow.commit()
    return stored


async def load_execution(engine: AsyncEngine, execution_id: str) -> WorkflowExecution:
    async with SqlUnitOfWork(engine) as uow:
        found = await uow.executions.get(execution_id)
    assert found is not None
    return found


def assert_utc(value: dt.datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == dt.timedelta(0)


# Workflows


async def test_a_workflow_round_trips_with_its_definition(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())

    async with SqlUnitOfWork(engine) as uow:
        loaded = await uow.workflows.get(workflow.id)

    assert loaded == workflow
    assert loaded.definition.nodes[1].config["nested"] == {"a": [1, None, {"b": True}]}
    assert loaded.definition.nodes[1].position == {"x": 10.5, "y": -3.0}
    assert_utc(loaded.created_at)
    assert_utc(loaded.updated_at)


async def test_an_unknown_workflow_is_none(engine: AsyncEngine) -> None:
    async with SqlUnitOfWork(engine) as uow:
        assert await uow.workflows.get(str(uuid.uuid4())) is None
        assert await uow.workflows.versions(str(uuid.uuid4())) == []


async def test_timestamps_in_another_offset_come_back_as_the_same_instant_in_utc(
    engine: AsyncEngine,
) -> None:
    local = T0.astimezone(PLUS_TWO)
    workflow = await store_workflow(engine, new_workflow(created_at=local))

    async with SqlUnitOfWork(engine) as uow:
        loaded = await uow.workflows.get(workflow.id)

    assert loaded is not None
    assert loaded.created_at == T0
    assert_utc(loaded.created_at)


async def test_saving_a_new_definition_keeps_every_version(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())
    first = workflow.definition
    later = T0 + dt.timedelta(hours=1)

    async with SqlUnitOfWork(engine) as uow:
        loaded = await uow.workflows.get(workflow.id)
        assert loaded is not None
        assert loaded.replace_definition(definition(transform("a"), transform("b")), later)
        loaded.name = "renamed"
        await uow.workflows.save(loaded, new_version=True)
        await uow.commit()

    async with SqlUnitOfWork(engine) as uow:
        current = await uow.workflows.get(workflow.id)
        versions = await uow.workflows.versions(workflow.id)
        v1 = await uow.workflows.definition(workflow.id, 1)
        v2 = await uow.workflows.definition(workflow.id, 2)
        v3 = await uow.workflows.definition(workflow.id, 3)

    assert current is not None
    assert current.name == "renamed"
    assert current.version == 2
    assert [n.id for n in current.definition.nodes] == ["zstart", "a", "b", "aend"]
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].definition == first
    assert versions[0].created_at == T0
    assert versions[1].created_at == later
    assert_utc(versions[1].created_at)
    assert v1 == first
    assert v2 == current.definition
    assert v3 is None


async def test_saving_without_a_new_version_changes_only_the_workflow_row(
    engine: AsyncEngine,
) -> None:
    workflow = await store_workflow(engine, new_workflow())
    later = T0 + dt.timedelta(minutes=1)

    async with SqlUnitOfWork(engine) as uow:
        loaded = await uow.workflows.get(workflow.id)
        assert loaded is not None
        loaded.change_status(WorkflowStatus.INACTIVE, later)
        loaded.description = None
        await uow.workflows.save(loaded, new_version=False)
        await uow.commit()

    async with SqlUnitOfWork(engine) as uow:
        current = await uow.workflows.get(workflow.id)
        versions = await uow.workflows.versions(workflow.id)
    assert current is not None
    assert current.status == WorkflowStatus.INACTIVE
    assert current.description is None
    assert current.updated_at == later
    assert current.created_at == T0
    assert [v.version for v in versions] == [1]


async def test_saving_a_workflow_changed_since_it_was_read_is_a_conflict(
    engine: AsyncEngine,
) -> None:
    workflow = await store_workflow(engine, new_workflow())
    later = T0 + dt.timedelta(minutes=1)

    async with SqlUnitOfWork(engine) as slow:
        stale = await slow.workflows.get(workflow.id)
        assert stale is not None
        async with SqlUnitOfWork(engine) as fast:
            fresh = await fast.workflows.get(workflow.id)
            assert fresh is not None
            fresh.change_status(WorkflowStatus.ARCHIVED, later)
            await fast.workflows.save(fresh, new_version=False)
            await fast.commit()
        stale.name = "renamed"
        stale.updated_at = later + dt.timedelta(seconds=1)
        with pytest.raises(Conflict):
            await slow.workflows.save(stale, new_version=False)

    async with SqlUnitOfWork(engine) as uow:
        current = await uow.workflows.get(workflow.id)
    assert current is not None
    assert (current.status, current.name) == (WorkflowStatus.ARCHIVED, "flow")


async def test_archive_wins_over_an_edit_read_before_it_and_keeps_that_edit_out(
    engine: AsyncEngine,
) -> None:
    workflow = await store_workflow(engine, new_workflow(status=WorkflowStatus.DRAFT))
    later = T0 + dt.timedelta(minutes=1)

    async with SqlUnitOfWork(engine) as slow:
        stale = await slow.workflows.get(workflow.id)
        assert stale is not None
        async with SqlUnitOfWork(engine) as uow:
            archived = await uow.workflows.archive(workflow.id, later)
            await uow.commit()
        stale.name = "renamed"
        with pytest.raises(Conflict):
            await slow.workflows.save(stale, new_version=False)

    assert archived == replace(workflow, status=WorkflowStatus.ARCHIVED, updated_at=later)
    async with SqlUnitOfWork(engine) as uow:
        assert await uow.workflows.get(workflow.id) == archived
        again = await uow.workflows.archive(workflow.id, later + dt.timedelta(minutes=1))
        assert await uow.workflows.archive(str(uuid.uuid4()), later) is None
    assert again == archived


async def test_archive_after_an_edit_archives_the_edited_workflow(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())
    edited_at = T0 + dt.timedelta(minutes=1)
    archived_at = T0 + dt.timedelta(minutes=2)

    async with SqlUnitOfWork(engine) as archiving:
        before = await archiving.workflows.get(workflow.id)
        assert before is not None
        async with SqlUnitOfWork(engine) as editing:
            edited = await editing.workflows.get(workflow.id)
            assert edited is not None
            edited.name = "edited"
            assert edited.replace_definition(definition(transform("other")), edited_at)
            await editing.workflows.save(edited, new_version=True)
            await editing.commit()
        archived = await archiving.workflows.archive(workflow.id, archived_at)
        await archiving.commit()

    assert archived is not None
    assert (archived.name, archived.version, archived.status) == (
        "edited",
        2,
        WorkflowStatus.ARCHIVED,
    )
    assert archived.definition.nodes == edited.definition.nodes
    assert archived.updated_at == archived_at


async def waiting_on_a_lock(engine: AsyncEngine) -> bool:
    """True once some statement on this PostgreSQL database waits for a lock."""
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_archive_waits_for_an_edit_in_flight_and_archives_after_it(
    engine: AsyncEngine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: no edit is in flight beside another")
    workflow = await store_workflow(engine, new_workflow())
    archived_at = T0 + dt.timedelta(minutes=2)

    async def archive() -> Workflow | None:
        async with SqlUnitOfWork(engine) as uow:
            archived = await uow.workflows.archive(workflow.id, archived_at)
            await uow.commit()
        return archived

    async with SqlUnitOfWork(engine) as editing:
        edited = await editing.workflows.get(workflow.id)
        assert edited is not None
        edited.name = "edited"
        edited.updated_at = T0 + dt.timedelta(minutes=1)
        await editing.workflows.save(edited, new_version=False)
        archiving = asyncio.create_task(archive())
        deadline = asyncio.get_running_loop().time() + 30
        while not await waiting_on_a_lock(engine):  # the archive waits on the edited row
            assert asyncio.get_running_loop().time() < deadline
            assert not archiving.done()
            await asyncio.sleep(0.02)
        await editing.commit()
    archived = await asyncio.wait_for(archiving, timeout=30)

    assert archived is not None
    assert (archived.name, archived.status) == ("edited", WorkflowStatus.ARCHIVED)
    assert archived.updated_at == archived_at


async def test_a_workflow_can_be_saved_twice_in_one_unit_of_work(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())
    later = T0 + dt.timedelta(minutes=1)

    async with SqlUnitOfWork(engine) as uow:
        loaded = await uow.workflows.get(workflow.id)
        assert loaded is not None
        loaded.name = "first"
        await uow.workflows.save(loaded, new_version=False)
        assert loaded.replace_definition(definition(transform("other")), later)
        await uow.workflows.save(loaded, new_version=True)
        await uow.commit()

    async with SqlUnitOfWork(engine) as uow:
        current = await uow.workflows.get(workflow.id)
    assert current is not None
    assert (current.name, current.version) == ("first", 2)


async def test_workflow_pages_are_newest_first_with_the_total(engine: AsyncEngine) -> None:
    made = [
        await store_workflow(engine, new_workflow(created_at=T0 + dt.timedelta(minutes=i)))
        for i in range(5)
    ]
    newest_first = [w.id for w in reversed(made)]

    async with SqlUnitOfWork(engine) as uow:
        first, total = await uow.workflows.list_page(Page(1, 2), "alice", None)
        second, _ = await uow.workflows.list_page(Page(2, 2), "alice", None)
        third, _ = await uow.workflows.list_page(Page(3, 2), "alice", None)
        beyond, beyond_total = await uow.workflows.list_page(Page(4, 2), "alice", None)

    assert total == 5
    assert [w.id for w in first + second + third] == newest_first
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert beyond == []
    assert beyond_total == 5
    assert first[0] == made[-1]


async def test_workflow_pages_filter_by_user_and_status(engine: AsyncEngine) -> None:
    mine_active = await store_workflow(engine, new_workflow("alice", WorkflowStatus.ACTIVE))
    mine_draft = await store_workflow(
        engine, new_workflow("alice", WorkflowStatus.DRAFT, T0 + dt.timedelta(seconds=1))
    )
    theirs = await store_workflow(engine, new_workflow("bob", WorkflowStatus.ACTIVE))
    nobodys = await store_workflow(engine, new_workflow(None, WorkflowStatus.DRAFT))

    async with SqlUnitOfWork(engine) as uow:
        alice, alice_total = await uow.workflows.list_page(Page(1, 10), "alice", None)
        alice_active, alice_active_total = await uow.workflows.list_page(
            Page(1, 10), "alice", WorkflowStatus.ACTIVE
        )
        drafts, drafts_total = await uow.workflows.list_page(
            Page(1, 10), None, WorkflowStatus.DRAFT
        )
        everyone, everyone_total = await uow.workflows.list_page(Page(1, 10), None, None)
        archived, archived_total = await uow.workflows.list_page(
            Page(1, 10), None, WorkflowStatus.ARCHIVED
        )

    assert [w.id for w in alice] == [mine_draft.id, mine_active.id]
    assert alice_total == 2
    assert [w.id for w in alice_active] == [mine_active.id]
    assert alice_active_total == 1
    assert {w.id for w in drafts} == {mine_draft.id, nobodys.id}
    assert drafts_total == 2
    assert {w.id for w in everyone} == {mine_active.id, mine_draft.id, theirs.id, nobodys.id}
    assert everyone_total == 4
    assert (archived, archived_total) == ([], 0)


async def test_a_unit_of_work_left_without_commit_stores_nothing(engine: AsyncEngine) -> None:
    workflow = new_workflow()
    async with SqlUnitOfWork(engine) as uow:
        await uow.workflows.add(workflow)
        assert await uow.workflows.get(workflow.id) is not None

    async def add_then_fail() -> None:
        async with SqlUnitOfWork(engine) as uow:
            await uow.workflows.add(replace(workflow, id=str(uuid.uuid4())))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_then_fail()

    async with SqlUnitOfWork(engine) as uow:
        assert await uow.workflows.get(workflow.id) is None
        assert await uow.workflows.list_page(Page(1, 10), None, None) == ([], 0)


# Executions


async def test_an_execution_is_stored_with_a_row_per_node_in_definition_order(
    engine: AsyncEngine,
) -> None:
    workflow = await store_workflow(
        engine, new_workflow(graph=definition(transform("m2"), transform("m1")))
    )
    nested = {"a": {"b": [1, 2.5, {"c": None}], "d": "ü"}, "n": None, "t": True}
    execution = new_execution(workflow, node_input=nested, created_at=T0.astimezone(PLUS_TWO))
    execution.output = [nested, None, "text"]
    execution.error = "an error"
    execution.current_node_id = "m1"
    execution.nodes["m2"].input = {"from": "start", "deep": [[{}]]}
    execution.nodes["m2"].output = 42

    await store_execution(engine, execution)
    loaded = await load_execution(engine, execution.id)

    assert list(loaded.nodes) == ["zstart", "m2", "m1", "aend"]
    assert [n.node_type for n in loaded.nodes.values()] == [
        NodeType.START,
        NodeType.TRANSFORM,
        NodeType.TRANSFORM,
        NodeType.END,
    ]
    assert {n.status for n in loaded.nodes.values()} == {NodeStatus.PENDING}
    assert loaded.input == nested
    assert loaded.output == [nested, None, "text"]
    assert loaded.nodes["m2"].input == {"from": "start", "deep": [[{}]]}
    assert loaded.nodes["m2"].output == 42
    assert loaded.nodes["m1"].input is None
    assert loaded.nodes["m1"].output is None
    assert loaded.status == ExecutionStatus.PENDING
    assert loaded.error == "an error"
    assert loaded.current_node_id == "m1"
    assert loaded.workflow_version == 1
    assert loaded.user_id == "alice"
    assert loaded.last_seq == 0
    assert loaded.created_at == T0
    for value in (loaded.created_at, loaded.updated_at, loaded.deadline_at):
        assert_utc(value)
    assert loaded.started_at is None
    assert loaded.completed_at is None


async def test_node_attempts_and_times_round_trip(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())
    execution = new_execution(workflow, status=ExecutionStatus.RUNNING)
    execution.started_at = T0
    node = execution.nodes["mid"]
    node.start_attempt(1, T0 + dt.timedelta(seconds=1))
    node.fail_attempt("timed out", T0 + dt.timedelta(seconds=2))
    node.start_attempt(2, (T0 + dt.timedelta(seconds=3)).astimezone(PLUS_TWO))
    node.finished_order = 3

    await store_execution(engine, execution)
    loaded = (await load_execution(engine, execution.id)).nodes["mid"]

    assert loaded.status == NodeStatus.RUNNING
    assert loaded.retry_count == 1
    assert loaded.finished_order == 3
    assert loaded.started_at == T0 + dt.timedelta(seconds=1)
    assert_utc(loaded.started_at)
    assert [(a.number, a.error) for a in loaded.attempts] == [(1, "timed out"), (2, None)]
    assert loaded.attempts[0].completed_at == T0 + dt.timedelta(seconds=2)
    assert loaded.attempts[1].started_at == T0 + dt.timedelta(seconds=3)
    assert loaded.attempts[1].completed_at is None


@pytest.mark.parametrize("value", [None, 0, "", [], {}, "null", [None], {"k": None}])
async def test_scalar_and_empty_json_values_round_trip(engine: AsyncEngine, value: Any) -> None:
    workflow = await store_workflow(engine, new_workflow())
    execution = new_execution(workflow, node_input=value)
    execution.output = value
    await store_execution(engine, execution)

    loaded = await load_execution(engine, execution.id)

    assert loaded.input == value
    assert type(loaded.input) is type(value)
    assert loaded.output == value


async def test_an_unknown_execution_is_none(engine: AsyncEngine) -> None:
    async with SqlUnitOfWork(engine) as uow:
        assert await uow.executions.get(str(uuid.uuid4())) is None


async def test_the_same_idempotency_key_gives_back_the_first_execution(
    engine: AsyncEngine,
) -> None:
    workflow = await store_workflow(engine, new_workflow())
    first = await store_execution(engine, new_execution(workflow, node_input=1, key="alice:k"))
    again = new_execution(workflow, node_input=2, key="alice:k")

    second = await store_execution(engine, again)
    other = await store_execution(engine, new_execution(workflow, key="alice:other"))

    assert second.id == first.id
    assert second.input == 1
    assert list(second.nodes) == list(first.nodes)
    assert other.id != first.id
    async with SqlUnitOfWork(engine) as uow:
        _, total = await uow.executions.list_page(Page(1, 10), workflow.id, None, None)
        assert await uow.executions.get(again.id) is None
    assert total == 2


async def test_execution_pages_filter_and_are_newest_first(engine: AsyncEngine) -> None:
    one = await store_workflow(engine, new_workflow())
    two = await store_workflow(engine, new_workflow())
    made = []
    for i, (workflow, status, user) in enumerate(
        [
            (one, ExecutionStatus.PENDING, "alice"),
            (one, ExecutionStatus.RUNNING, "alice"),
            (two, ExecutionStatus.PENDING, "bob"),
            (one, ExecutionStatus.PENDING, "bob"),
            (two, ExecutionStatus.COMPLETED, "alice"),
        ]
    ):
        execution = new_execution(
            workflow, status=status, user_id=user, created_at=T0 + dt.timedelta(seconds=i)
        )
        made.append(await store_execution(engine, execution))

    def ids(items: list[WorkflowExecution]) -> list[str]:
        return [e.id for e in items]

    async with SqlUnitOfWork(engine) as uow:
        repo = uow.executions
        everything = await repo.list_page(Page(1, 10), None, None, None)
        first_page = await repo.list_page(Page(1, 2), None, None, None)
        last_page = await repo.list_page(Page(3, 2), None, None, None)
        of_one = await repo.list_page(Page(1, 10), one.id, None, None)
        pending = await repo.list_page(Page(1, 10), None, ExecutionStatus.PENDING, None)
        bobs = await repo.list_page(Page(1, 10), None, None, "bob")
        combined = await repo.list_page(Page(1, 10), one.id, ExecutionStatus.PENDING, "alice")
        none = await repo.list_page(Page(1, 10), two.id, ExecutionStatus.RUNNING, None)

    assert ids(everything[0]) == [e.id for e in reversed(made)]
    assert everything[1] == 5
    assert ids(first_page[0]) == [made[4].id, made[3].id]
    assert first_page[1] == 5
    assert ids(last_page[0]) == [made[0].id]
    assert ids(of_one[0]) == [made[3].id, made[1].id, made[0].id]
    assert of_one[1] == 3
    assert ids(pending[0]) == [made[3].id, made[2].id, made[0].id]
    assert ids(bobs[0]) == [made[3].id, made[2].id]
    assert ids(combined[0]) == [made[0].id]
    assert combined[1] == 1
    assert none == ([], 0)
    # Listed executions carry their nodes, in definition order, like `get`.
    for execution in everything[0]:
        assert list(execution.nodes) == ["zstart", "mid", "aend"]


async def test_an_execution_page_loads_values_only_when_asked(engine: AsyncEngine) -> None:
    workflow = await store_workflow(engine, new_workflow())
    execution = new_execution(workflow, status=ExecutionStatus.RUNNING, node_input={"in": 1})
    execution.output = {"out": 2}
    execution.error = "an error"
    node = execution.nodes["mid"]
    node.start_attempt(1, T0)
    node.input = {"node in": 3}
    node.output = {"node out": 4}
    await store_execution(engine, execution)

    async def listed(detail: ExecutionDetail) -> WorkflowExecution:
        async with SqlUnitOfWork(engine) as uow:
            items, total = await uow.executions.list_page(
                Page(1, 10), workflow.id, None, None, detail
            )
        assert total == 1
        return items[0]

    full = await listed(ExecutionDetail())
    bare = await listed(ExecutionDetail(nodes=False, io=False))
    nodes_only = await listed(ExecutionDetail(nodes=True, io=False))
    io_only = await listed(ExecutionDetail(nodes=False, io=True))

    assert full == await load_execution(engine, execution.id)
    assert nodes_only.nodes == full.nodes
    assert (io_only.input, io_only.output) == ({"in": 1}, {"out": 2})
    for summary in (bare, nodes_only):
        assert (summary.input, summary.output) == (None, None)
    for summary in (bare, io_only):
        mid = summary.nodes["mid"]
        assert (mid.input, mid.output, mid.attempts) == (None, None, [])
        assert (mid.status, mid.retry_count, mid.started_at) == (NodeStatus.RUNNING, 0, T0)
    for summary in (bare, nodes_only, io_only):
        assert list(summary.nodes) == list(full.nodes)
        assert replace(summary, input=None, output=None, nodes={}) == replace(
            full, input=None, output=None, nodes={}
        )


# Cancel and events


async def running_execution(engine: AsyncEngine) -> WorkflowExecution:
    """An execution whose START completed, whose middle node runs, with 3 events so far."""
    workflow = await store_workflow(
        engine, new_workflow(graph=definition(transform("mid"), transform("next")))
    )
    execution = new_execution(workflow, status=ExecutionStatus.RUNNING)
    execution.started_at = T0
    execution.last_seq = 3
    start = execution.nodes["zstart"]
    start.move(NodeStatus.RUNNING, T0)
    start.move(NodeStatus.COMPLETED, T0)
    execution.nodes["mid"].start_attempt(1, T0)
    await store_execution(engine, execution)
    return execution


async def cancel(
    engine: AsyncEngine, execution: WorkflowExecution, now: dt.datetime
) -> tuple[bool, list[ExecutionEvent]]:
    """What the cancel use case writes: the domain's cancel, fenced on the seq it read."""
    previous = execution.last_seq
    nodes = [n for n in execution.nodes.values() if not n.status.terminal]
    events = render(execution, execution.cancel(now), {})
    async with SqlUnitOfWork(engine) as uow:
        written = await uow.executions.write_step(execution, previous, nodes, events)
        await uow.commit()
    return written, events


async def stored_node_statuses(engine: AsyncEngine, execution_id: str) -> dict[str, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(node_executions.c.node_id, node_executions.c.status).where(
                node_executions.c.execution_id == execution_id
            )
        )
        return {r.node_id: r.status for r in rows}


async def test_cancel_stores_the_status_the_nodes_and_numbered_events(
    engine: AsyncEngine,
) -> None:
    execution = await running_execution(engine)
    now = T0 + dt.timedelta(seconds=30)

    written, events = await cancel(engine, await load_execution(engine, execution.id), now)

    assert written

    # One node:update for the node that was running, then the execution:update.
    assert [(e.seq, e.name) for e in events] == [(4, "node:update"), (5, "execution:update")]
    assert events[0].payload["nodeId"] == "mid"
    assert events[0].payload["status"] == "CANCELLED"
    assert events[1].payload["status"] == "CANCELLED"
    assert events[1].payload["seq"] == 5
    loaded = await load_execution(engine, execution.id)
    assert loaded.status == ExecutionStatus.CANCELLED
    assert loaded.error == "Cancelled by request"
    assert loaded.completed_at == now
    assert loaded.last_seq == 5
    assert {k: n.status for k, n in loaded.nodes.items()} == {
        "zstart": NodeStatus.COMPLETED,
        "mid": NodeStatus.CANCELLED,
        "next": NodeStatus.CANCELLED,
        "aend": NodeStatus.CANCELLED,
    }
    assert loaded.nodes["mid"].completed_at == now
    assert loaded.nodes["zstart"].completed_at == T0

    async with SqlUnitOfWork(engine) as uow:
        stored = await uow.executions.events(execution.id, 0, 100)
        after_four = await uow.executions.events(execution.id, 4, 100)
        after_last = await uow.executions.events(execution.id, 5, 100)
        limited = await uow.executions.events(execution.id, 0, 1)
    assert stored == events
    assert after_four == events[1:]
    assert after_last == []
    assert limited == events[:1]


async def test_cancel_of_an_execution_that_finished_meanwhile_writes_nothing(
    engine: AsyncEngine,
) -> None:
    execution = await running_execution(engine)
    async with engine.begin() as connection:
        # The runner completed it after the canceller read it.
        await connection.execute(
            executions.update()
            .where(executions.c.id == execution.id)
            .values(status=ExecutionStatus.COMPLETED.value)
        )
    stale = await load_execution(engine, execution.id)
    stale.status = ExecutionStatus.RUNNING
    before = await stored_node_statuses(engine, execution.id)

    written, _ = await cancel(engine, stale, T0 + dt.timedelta(seconds=30))

    assert not written
    assert await stored_node_statuses(engine, execution.id) == before
    assert before["mid"] == NodeStatus.RUNNING.value
    async with engine.connect() as connection:
        count = len((await connection.execute(select(execution_events.c.seq))).all())
    assert count == 0
    assert (await load_execution(engine, execution.id)).status == ExecutionStatus.COMPLETED


async def test_a_step_written_over_a_stale_seq_writes_nothing(engine: AsyncEngine) -> None:
    execution = await running_execution(engine)
    now = T0 + dt.timedelta(seconds=30)
    stale = await load_execution(engine, execution.id)
    assert (await cancel(engine, await load_execution(engine, execution.id), now))[0]

    assert not (await cancel(engine, stale, now))[0]

    async with SqlUnitOfWork(engine) as uow:
        assert len(await uow.executions.events(execution.id, 0, 100)) == 2
