"""Workflow use cases against hand-written fakes: create, get, list, update, archive, versions."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from orchestrator.application.access import ANYONE, Caller
from orchestrator.application.ports import Page, VersionRecord
from orchestrator.application.workflows import (
    WorkflowChanges,
    archive_workflow,
    create_workflow,
    get_workflow,
    list_versions,
    list_workflows,
    update_workflow,
    workflow_problems,
)
from orchestrator.domain.errors import Conflict, IllegalTransition, NotFound, ValidationFailed
from orchestrator.domain.validation import validate_definition
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from tests.unit.fakes import FakeUnitOfWork, FixedClock

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
ALICE, BOB = Caller("alice"), Caller("bob")

LINEAR = Definition(
    nodes=(
        Node("s", NodeType.START),
        Node("a", NodeType.AGENT, {"agentId": "writer"}),
        Node("end", NodeType.END),
    ),
    edges=(Edge("e1", "s", "a"), Edge("e2", "a", "end")),
    version=7,
)
WITH_TOOL = Definition(
    nodes=(
        Node("s", NodeType.START),
        Node("t", NodeType.TOOL, {"toolId": "search"}),
        Node("end", NodeType.END),
    ),
    edges=(Edge("e1", "s", "t"), Edge("e2", "t", "end")),
)
INVALID = Definition(
    nodes=(Node("a", NodeType.AGENT), Node("a", NodeType.TOOL, {"toolId": "t"})),
    edges=(Edge("e1", "a", "ghost"),),
)


@pytest.fixture
def uow() -> FakeUnitOfWork:
    return FakeUnitOfWork()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


async def create(
    uow: FakeUnitOfWork,
    clock: FixedClock,
    status: WorkflowStatus | None = None,
    user_id: Caller = ALICE,
    definition: Definition = LINEAR,
) -> Workflow:
    """Create a workflow as a precondition; the commit flag is reset for the test's own step."""
    workflow = await create_workflow(
        lambda: uow, clock, "Summarise", "first", definition, status, user_id
    )
    uow.committed = False
    return workflow


async def test_create_stores_version_one_as_draft_and_commits(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    workflow = await create_workflow(lambda: uow, clock, "Summarise", "d", LINEAR, None, ALICE)

    assert str(uuid.UUID(workflow.id)) == workflow.id
    assert (workflow.status, workflow.version, workflow.user_id) == (
        WorkflowStatus.DRAFT,
        1,
        ALICE.user_id,
    )
    assert (workflow.created_at, workflow.updated_at) == (T0, T0)
    assert uow.committed is True
    assert uow.fake_workflows.rows[workflow.id] == workflow
    assert await list_versions(lambda: uow, workflow.id, ALICE) == [
        VersionRecord(1, Definition(LINEAR.nodes, LINEAR.edges, version=1), T0)
    ]


async def test_create_keeps_a_given_status(uow: FakeUnitOfWork, clock: FixedClock) -> None:
    workflow = await create(uow, clock, status=WorkflowStatus.ACTIVE)
    assert uow.fake_workflows.rows[workflow.id].status == WorkflowStatus.ACTIVE


async def test_create_archived_is_refused_and_nothing_is_stored(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await create_workflow(lambda: uow, clock, "x", None, LINEAR, WorkflowStatus.ARCHIVED, ALICE)
    assert [p.as_dict() for p in caught.value.problems] == [
        {"path": "status", "message": "must not be ARCHIVED"}
    ]
    assert uow.fake_workflows.rows == {}
    assert uow.committed is False


async def test_an_invalid_definition_created_active_lists_every_problem_and_stores_nothing(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await create_workflow(lambda: uow, clock, "x", None, INVALID, WorkflowStatus.ACTIVE, ALICE)

    assert caught.value.message.startswith("An ACTIVE workflow's definition must be valid")
    problems = {(p.path, p.message) for p in caught.value.problems}
    assert problems == {(p.path, p.message) for p in validate_definition(INVALID)}
    assert {path for path, _ in problems} == {
        "definition.nodes",
        "definition.edges[0].target",
        "definition.nodes[0].config.agentId",
    }
    assert len(problems) == 5  # duplicate id, no START, no END, unknown target, agentId
    assert uow.fake_workflows.rows == {}
    assert uow.fake_workflows.version_rows == {}
    assert uow.committed is False


async def test_a_draft_is_stored_incomplete_with_its_problems(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    draft = await create_workflow(lambda: uow, clock, "x", None, INVALID, None, ALICE)
    empty = await create_workflow(lambda: uow, clock, "y", None, None, None, ALICE)

    assert draft.status == empty.status == WorkflowStatus.DRAFT
    assert uow.fake_workflows.rows[draft.id].definition.nodes == INVALID.nodes
    assert workflow_problems(draft) == validate_definition(INVALID)
    assert [p.message for p in workflow_problems(empty)] == ["a workflow needs at least one node"]
    with pytest.raises(ValidationFailed) as caught:
        await update_workflow(
            lambda: uow, clock, draft.id, WorkflowChanges(status=WorkflowStatus.ACTIVE), ALICE
        )
    assert len(caught.value.problems) == 5
    assert uow.fake_workflows.rows[draft.id].status == WorkflowStatus.DRAFT


async def test_get_returns_the_stored_workflow(uow: FakeUnitOfWork, clock: FixedClock) -> None:
    created = await create(uow, clock)
    assert await get_workflow(lambda: uow, created.id, ALICE) == created
    assert await get_workflow(lambda: uow, created.id, ANYONE) == created


async def test_get_unknown_workflow_is_not_found(uow: FakeUnitOfWork) -> None:
    with pytest.raises(NotFound, match="Workflow nope not found"):
        await get_workflow(lambda: uow, "nope", ANYONE)


async def test_another_users_workflow_is_not_found(uow: FakeUnitOfWork, clock: FixedClock) -> None:
    created = await create(uow, clock, user_id=ALICE)
    with pytest.raises(NotFound, match=f"Workflow {created.id} not found"):
        await get_workflow(lambda: uow, created.id, BOB)
    with pytest.raises(NotFound):
        await update_workflow(lambda: uow, clock, created.id, WorkflowChanges(name="x"), BOB)
    with pytest.raises(NotFound):
        await archive_workflow(lambda: uow, clock, created.id, BOB)
    with pytest.raises(NotFound):
        await list_versions(lambda: uow, created.id, BOB)
    stored = uow.fake_workflows.rows[created.id]
    assert (stored.name, stored.status) == ("Summarise", WorkflowStatus.DRAFT)
    assert uow.committed is False


async def test_list_filters_by_user_and_status_newest_first(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    first = await create(uow, clock, user_id=ALICE)
    clock.advance(1)
    second = await create(uow, clock, user_id=ALICE, status=WorkflowStatus.ACTIVE)
    clock.advance(1)
    await create(uow, clock, user_id=BOB)

    page, total = await list_workflows(lambda: uow, Page(1, 10), ALICE, None)
    assert ([w.id for w in page], total) == ([second.id, first.id], 2)
    page, total = await list_workflows(lambda: uow, Page(1, 10), ALICE, WorkflowStatus.ACTIVE)
    assert ([w.id for w in page], total) == ([second.id], 1)
    page, total = await list_workflows(lambda: uow, Page(2, 1), ANYONE, None)
    assert ([w.id for w in page], total) == ([second.id], 3)


async def test_definition_change_makes_version_two(uow: FakeUnitOfWork, clock: FixedClock) -> None:
    created = await create(uow, clock)
    later = clock.advance(60)

    updated = await update_workflow(
        lambda: uow, clock, created.id, WorkflowChanges(definition=WITH_TOOL), ALICE
    )

    assert updated.version == 2
    assert updated.definition.nodes == WITH_TOOL.nodes
    assert updated.updated_at == later
    assert uow.committed is True
    assert uow.fake_workflows.rows[created.id].version == 2
    versions = await list_versions(lambda: uow, created.id, ALICE)
    assert [(v.version, v.created_at) for v in versions] == [(1, T0), (2, later)]
    assert versions[0].definition.nodes == LINEAR.nodes
    assert versions[1].definition.nodes == WITH_TOOL.nodes
    assert await uow.workflows.definition(created.id, 1) == versions[0].definition


async def test_same_graph_makes_no_new_version(uow: FakeUnitOfWork, clock: FixedClock) -> None:
    created = await create(uow, clock)
    clock.advance(60)
    same = Definition(LINEAR.nodes, LINEAR.edges, version=99)

    updated = await update_workflow(
        lambda: uow, clock, created.id, WorkflowChanges(name="Renamed", definition=same), ALICE
    )

    assert (updated.version, updated.name) == (1, "Renamed")
    assert uow.fake_workflows.rows[created.id].name == "Renamed"
    assert [v.version for v in await list_versions(lambda: uow, created.id, ALICE)] == [1]


async def test_description_is_kept_unless_given_and_can_be_cleared(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock)
    kept = await update_workflow(lambda: uow, clock, created.id, WorkflowChanges(name="n"), ALICE)
    assert kept.description == "first"
    cleared = await update_workflow(
        lambda: uow, clock, created.id, WorkflowChanges(description=None), ALICE
    )
    assert (cleared.name, cleared.description) == ("n", None)


async def test_an_active_workflow_keeps_a_valid_definition(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock, WorkflowStatus.ACTIVE)
    with pytest.raises(ValidationFailed) as caught:
        await update_workflow(
            lambda: uow, clock, created.id, WorkflowChanges(definition=INVALID), ALICE
        )
    assert len(caught.value.problems) == 5
    assert uow.fake_workflows.rows[created.id] == created
    assert uow.committed is False


@pytest.mark.parametrize(
    "path",
    [
        [WorkflowStatus.ACTIVE],
        [WorkflowStatus.ACTIVE, WorkflowStatus.INACTIVE],
        [WorkflowStatus.ACTIVE, WorkflowStatus.INACTIVE, WorkflowStatus.ACTIVE],
        [WorkflowStatus.ACTIVE, WorkflowStatus.ARCHIVED],
        [WorkflowStatus.DRAFT],
    ],
    ids=lambda p: "-".join(s.value for s in p),
)
async def test_allowed_status_transitions(
    uow: FakeUnitOfWork, clock: FixedClock, path: list[WorkflowStatus]
) -> None:
    created = await create(uow, clock)
    for status in path:
        await update_workflow(lambda: uow, clock, created.id, WorkflowChanges(status=status), ALICE)
    assert uow.fake_workflows.rows[created.id].status == path[-1]


@pytest.mark.parametrize(
    ("setup", "target"),
    [
        ([], WorkflowStatus.INACTIVE),
        ([WorkflowStatus.ACTIVE], WorkflowStatus.DRAFT),
        ([WorkflowStatus.ACTIVE, WorkflowStatus.INACTIVE], WorkflowStatus.DRAFT),
    ],
    ids=["draft-to-inactive", "active-to-draft", "inactive-to-draft"],
)
async def test_illegal_status_transition_is_refused_and_nothing_changes(
    uow: FakeUnitOfWork, clock: FixedClock, setup: list[WorkflowStatus], target: WorkflowStatus
) -> None:
    created = await create(uow, clock)
    for status in setup:
        await update_workflow(lambda: uow, clock, created.id, WorkflowChanges(status=status), ALICE)
    before = uow.fake_workflows.rows[created.id]
    uow.committed = False

    changes = WorkflowChanges(name="Renamed", definition=WITH_TOOL, status=target)
    with pytest.raises(IllegalTransition, match=f"cannot go from {before.status} to {target}"):
        await update_workflow(lambda: uow, clock, created.id, changes, ALICE)

    assert uow.fake_workflows.rows[created.id] == before
    assert [v.version for v in await list_versions(lambda: uow, created.id, ALICE)] == [1]
    assert uow.committed is False


async def test_archive_then_every_edit_is_a_conflict(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock, status=WorkflowStatus.ACTIVE)
    archived_at = clock.advance(5)

    archived = await archive_workflow(lambda: uow, clock, created.id, ALICE)

    assert (archived.status, archived.updated_at) == (WorkflowStatus.ARCHIVED, archived_at)
    assert uow.fake_workflows.rows[created.id].status == WorkflowStatus.ARCHIVED
    assert uow.committed is True
    uow.committed = False
    for changes in (
        WorkflowChanges(name="x"),
        WorkflowChanges(definition=WITH_TOOL),
        WorkflowChanges(status=WorkflowStatus.ACTIVE),
    ):
        with pytest.raises(Conflict, match="is archived and read-only") as caught:
            await update_workflow(lambda: uow, clock, created.id, changes, ALICE)
        assert type(caught.value) is Conflict
    assert uow.fake_workflows.rows[created.id] == archived
    assert uow.committed is False


async def test_archiving_twice_is_fine_and_changes_nothing(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock)
    first = await archive_workflow(lambda: uow, clock, created.id, ALICE)
    uow.committed = False
    clock.advance(5)

    again = await archive_workflow(lambda: uow, clock, created.id, ALICE)

    assert again == first
    assert uow.committed is False
    assert [v.version for v in await list_versions(lambda: uow, created.id, ALICE)] == [1]


async def test_archive_unknown_workflow_is_not_found(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    with pytest.raises(NotFound, match="Workflow nope not found"):
        await archive_workflow(lambda: uow, clock, "nope", ANYONE)


async def test_list_versions_keeps_every_version_oldest_first(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock)
    await update_workflow(
        lambda: uow, clock, created.id, WorkflowChanges(definition=WITH_TOOL), ALICE
    )
    await update_workflow(
        lambda: uow, clock, created.id, WorkflowChanges(definition=LINEAR), ANYONE
    )

    versions = await list_versions(lambda: uow, created.id, ANYONE)
    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.definition.version for v in versions] == [1, 2, 3]
    assert versions[2].definition.nodes == LINEAR.nodes


async def test_list_versions_of_unknown_workflow_is_not_found(uow: FakeUnitOfWork) -> None:
    with pytest.raises(NotFound, match="Workflow nope not found"):
        await list_versions(lambda: uow, "nope", ALICE)


async def test_workflow_without_owner_is_visible_to_everyone(
    uow: FakeUnitOfWork, clock: FixedClock
) -> None:
    created = await create(uow, clock, user_id=ANYONE)
    assert (await get_workflow(lambda: uow, created.id, BOB)).id == created.id
