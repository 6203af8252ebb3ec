"""What routes depend on, as Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.executions import ExecutionServices
from orchestrator.application.ports import Clock, ExecutionDetail, Page, UnitOfWorkFactory
from orchestrator.domain.values import ValueLimits
from orchestrator.settings import Settings

INCLUDES = ("nodes", "io")


@dataclass
class AppContext:
    """Everything the routes use, built once by the app's lifespan."""

    settings: Settings
    engine: AsyncEngine
    uow_factory: UnitOfWorkFactory
    clock: Clock
    executions: ExecutionServices
    runner_running: bool = False

    @cached_property
    def value_limits(self) -> ValueLimits:
        """The bounds on stored values: MAX_VALUE_DEPTH and MAX_NODE_OUTPUT_BYTES."""
        return ValueLimits(self.settings.max_value_depth, self.settings.max_node_output_bytes)


async def get_context(request: Request) -> AppContext:
    """The app's context."""
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_user_id(
    user_id: Annotated[
        str | None,
        Query(
            alias="userId",
            max_length=200,
            description="The user the call is made for, as the seed's frontend sends it",
        ),
    ] = None,
) -> str | None:
    """The `userId` query parameter."""
    return user_id


UserIdDep = Annotated[str | None, Depends(get_user_id)]


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


async def get_detail(
    include: Annotated[
        list[str] | None,
        Query(
            description="What a page of executions carries besides their states, "
            "comma-separated or repeated: `nodes` (each node's input, output and attempts), "
            "`io` (each execution's input and output)",
        ),
    ] = None,
) -> ExecutionDetail:
    """The `include` query parameter; an unknown name is a 400."""
    names = {name.strip() for item in include or [] for name in item.split(",") if name.strip()}
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
