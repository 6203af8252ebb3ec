"""Which driver errors mean that the database cannot be reached right now."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def is_transient(exc: BaseException) -> bool:
    """True for errors that the same write, tried again, may not meet: outages and deadlocks."""
    return is_outage(exc) or isinstance(
        exc, asyncpg.DeadlockDetectedError | asyncpg.SerializationError
    )


def is_outage(exc: BaseException) -> bool:
    """True for errors that a database restart or a dropped connection causes."""
    if isinstance(exc, OperationalError | PoolTimeout | ConnectionError | TimeoutError):
        return True
    # Raised as they are where the runner talks to asyncpg directly.
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError,
    ):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or "connection" in str(exc.orig).lower()
    return isinstance(exc, OSError)


def is_refused_value(exc: BaseException) -> bool:
    """True when PostgreSQL refused a value itself (SQLSTATE class 22, "data exception").

    Such as a NUL character in a text or JSON string: retrying cannot help.
    """
    origin = exc.orig if isinstance(exc, DBAPIError) else exc
    sqlstate = getattr(origin, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")
