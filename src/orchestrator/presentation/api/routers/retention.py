"""Routes of retention: pin an execution so that it is never deleted, or unpin it."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from orchestrator.application import retention as use
from orchestrator.infrastructure.db.retention import pin_transactions
from orchestrator.presentation.api.deps import (
    AppContext,
    CallerDep,
    ContextDep,
    ExecutionId,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.readable import ReadableRoute
from orchestrator.presentation.api.schemas import WireModel

router = APIRouter(
    prefix="/workflows",
    tags=["executions"],
    route_class=ReadableRoute,
    dependencies=[Depends(unstorable_ids_are_unknown)],
)


class KeepOut(WireModel):
    """Whether the execution is pinned now."""

    execution_id: str
    keep: bool

    @classmethod
    def of(cls, pin: use.Pin) -> KeepOut:
        """The wire form of a pin."""
        return cls(execution_id=pin.execution_id, keep=pin.keep)


async def _set_keep(
    context: AppContext, execution_id: str, keep: bool, caller: CallerDep
) -> KeepOut:
    pin = await use.set_keep(pin_transactions(context.engine), execution_id, keep, caller)
    return KeepOut.of(pin)


@router.put("/executions/{execution_id}/keep", response_model=KeepOut)
async def pin_execution(
    execution_id: ExecutionId, context: ContextDep, caller: CallerDep
) -> KeepOut:
    """Pin the execution: retention (EXECUTION_RETENTION_DAYS) never deletes it. Its events
    are still compacted after EVENT_RETENTION_HOURS. Pinning twice is fine; 404 for an
    execution the caller may not change."""
    return await _set_keep(context, execution_id, True, caller)


@router.delete("/executions/{execution_id}/keep", response_model=KeepOut)
async def unpin_execution(
    execution_id: ExecutionId, context: ContextDep, caller: CallerDep
) -> KeepOut:
    """Unpin the execution: retention deletes it once it is older than
    EXECUTION_RETENTION_DAYS. Unpinning what is not pinned is fine."""
    return await _set_keep(context, execution_id, False, caller)
