"""What routes depend on, as Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.executions import ExecutionServices
from orchestrator.application.ports import Clock, Page, UnitOfWorkFactory
from orchestrator.settings import Settings


@dataclass
class AppContext:
    """Everything the routes use, built once by the app's lifespan."""

    settings: Settings
    engine: AsyncEngine
    uow_factory: UnitOfWorkFactory
    clock: Clock
    executions: ExecutionServices
    runner_running: bool = False


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
