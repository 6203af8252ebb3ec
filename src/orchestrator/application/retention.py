"""Pinning: retention never deletes an execution its owner pinned (`keep`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from orchestrator.application.access import Caller
from orchestrator.domain.errors import NotFound


@dataclass(frozen=True)
class Owned:
    """An execution that exists, and whose it is."""

    user_id: str | None


@dataclass(frozen=True)
class Pin:
    """Whether an execution is pinned now."""

    execution_id: str
    keep: bool


class PinRepository(Protocol):
    """An execution's `keep`, read and written in one transaction."""

    async def lock(self, execution_id: str) -> Owned | None:
        """The execution, locked until the transaction ends so that retention cannot delete
        it in between (None: there is none)."""
        ...

    async def set_keep(self, execution_id: str, keep: bool) -> None:
        """Pin (True) or unpin (False) it."""
        ...


PinTransactions = Callable[[], AbstractAsyncContextManager[PinRepository]]
"""Opens a transaction: committed when the block ends normally, rolled back on an error."""


async def set_keep(
    transactions: PinTransactions, execution_id: str, keep: bool, caller: Caller
) -> Pin:
    """Pin or unpin an execution; doing it twice is fine.

    Only who may change the execution may pin it; to anyone else it does not exist (404), as
    it does not once retention deleted it. Pinning an unfinished execution is allowed: it is
    kept once it finishes.
    """
    async with transactions() as pins:
        owned = await pins.lock(execution_id)
        if owned is None or not caller.may_change(owned.user_id):
            raise NotFound("Execution", execution_id)
        await pins.set_keep(execution_id, keep)
    return Pin(execution_id, keep)
