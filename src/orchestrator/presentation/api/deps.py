"""What routes depend on, as Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import WithJsonSchema
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.access import Caller
from orchestrator.application.executions import ExecutionServices
from orchestrator.application.ports import Clock, ExecutionDetail, Page, UnitOfWorkFactory
from orchestrator.application.progress import ProgressSink
from orchestrator.domain.errors import NotFound
from orchestrator.domain.values import ValueLimits
from orchestrator.infrastructure.health import DependencyHealth
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.presentation.auth import Authenticator
from orchestrator.presentation.fair_use import FairUse
from orchestrator.settings import Settings

INCLUDES = ("nodes", "io")
# What PostgreSQL cannot hold in a string: an id or filter with it is refused (a 400) before
# it reaches the database, and the OpenAPI document says so.
NO_NUL = r"^[^\x00]*$"

# Path ids: any text. One that cannot be stored (a NUL in it) names nothing: 404, as any
# unknown id (see `unstorable_ids_are_unknown`).
WorkflowId = Annotated[str, Path()]
ExecutionId = Annotated[str, Path()]
NodeId = Annotated[str, Path()]
EdgeId = Annotated[str, Path()]


@dataclass
class AppContext:
    """Everything the routes use, built once by the app's lifespan."""

    settings: Settings
    engine: AsyncEngine
    uow_factory: UnitOfWorkFactory
    clock: Clock
    executions: ExecutionServices
    authenticator: Authenticator
    health: DependencyHealth
    metrics: Metrics
    progress: ProgressSink
    runner_running: bool = False
    fair_use: FairUse | None = None  # per-user limits (None: none)

    @cached_property
    def value_limits(self) -> ValueLimits:
        """The bounds on stored values: MAX_VALUE_DEPTH and MAX_NODE_OUTPUT_BYTES."""
        return ValueLimits(self.settings.max_value_depth, self.settings.max_node_output_bytes)


async def get_context(request: Request) -> AppContext:
    """The app's context."""
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_caller(
    request: Request,
    context: ContextDep,
    user_id: Annotated[
        str | None,
        Query(
            alias="userId",
            max_length=200,
            pattern=NO_NUL,
            description="The user the call is made for: as the seed's frontend and the "
            "platform gateway send it (AUTH_MODE=none: it only narrows what the call sees; "
            "gateway: required; jwt: must be the token's user if given)",
        ),
    ] = None,
) -> Caller:
    """Who makes the request, per AUTH_MODE (401 without valid credentials, 403 when they
    do not allow what is asked)."""
    identity = await context.authenticator.request(request.headers, user_id)
    return identity.caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def unstorable_ids_are_unknown(request: Request) -> None:
    """A path id that no row can hold (a NUL in it) answers 404, like any unknown id."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            entity = name.removesuffix("_id").capitalize()
            raise NotFound(entity, value.replace("\x00", "\\u0000"))


async def get_page(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Page:
    """The `page` and `limit` query parameters."""
    return Page(page=page, limit=limit)


PageDep = Annotated[Page, Depends(get_page)]


async def get_workflow_page(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
    page_size: Annotated[
        int | None,
        Query(alias="pageSize", ge=1, le=100, description="The platform frontend's `limit`"),
    ] = None,
) -> Page:
    """`page` and `limit`, or `pageSize` in place of `limit`; both at once is a 400."""
    if limit is not None and page_size is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "pageSize"),
                    "msg": "give either limit or pageSize, not both",
                    "input": page_size,
                }
            ]
        )
    return Page(page=page, limit=limit or page_size or 10)


WorkflowPageDep = Annotated[Page, Depends(get_workflow_page)]


# One `include` value: names separated by commas, each with optional spaces around it.
INCLUDE_PATTERN = r"^ *(?:(?:nodes|io) *)?(?:, *(?:(?:nodes|io) *)?)*$"
IncludeValue = Annotated[str, WithJsonSchema({"type": "string", "pattern": INCLUDE_PATTERN})]


async def get_detail(
    include: Annotated[
        list[IncludeValue] | None,
        Query(
            description="What a page of executions carries besides their states, "
            "comma-separated or repeated: `nodes` (each node's input, output and attempts), "
            "`io` (each execution's input and output)",
        ),
    ] = None,
) -> ExecutionDetail:
    """The `include` query parameter; an unknown name is a 400 (INCLUDE_PATTERN says which
    values are known, for the OpenAPI document)."""
    names = {name.strip(" ") for item in include or [] for name in item.split(",")} - {""}
    unknown = sorted(names - set(INCLUDES))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "include"),
                    "msg": f"unknown include {', '.join(map(repr, unknown))}; "
                    f"expected {' or '.join(INCLUDES)}",
                    "input": include,
                }
            ]
        )
    return ExecutionDetail(nodes="nodes" in names, io="io" in names)


DetailDep = Annotated[ExecutionDetail, Depends(get_detail)]
