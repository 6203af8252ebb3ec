"""Domain errors. They carry no HTTP status: the presentation layer maps them in one table."""

from __future__ import annotations

from dataclasses import dataclass

MAX_SHOWN_ID = 100


class DomainError(Exception):
    """Base of every error the domain and application layers raise on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (a dotted path) and what is wrong."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The wire form of the problem."""
        return {"path": self.path, "message": self.message}


class ValidationFailed(DomainError):
    """Input that breaks one or more rules; every problem is listed."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class NotFound(DomainError):
    """An entity that does not exist (or that the caller may not see)."""

    def __init__(self, entity: str, entity_id: str) -> None:
        # An id is echoed, but never a huge one whole.
        shown = entity_id if len(entity_id) <= MAX_SHOWN_ID else entity_id[:MAX_SHOWN_ID] + "..."
        super().__init__(f"{entity} {shown} not found")
        self.message = f"{entity} {shown} not found"


class Conflict(DomainError):
    """A request that the entity's current state does not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IllegalTransition(Conflict):
    """A status change that the state machine does not allow."""


class ConcurrentChange(Conflict):
    """Another request changed the entity between this request's read and its write."""


class ExpressionError(DomainError):
    """An expression that does not compile or fails while it is evaluated."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
