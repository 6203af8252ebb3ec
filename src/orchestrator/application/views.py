"""The wire form of nodes in Socket.IO payloads: camelCase, and ISO 8601 as REST writes it."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from orchestrator.domain.execution import Attempt, NodeExecution


@functools.lru_cache(maxsize=8192)
def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 as pydantic writes it (UTC as `Z`, so REST and Socket.IO agree), or None.

    Cached: every event of an execution writes the same few timestamps again.
    """
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    """One attempt of a node."""
    return {
        "attempt": attempt.number,
        "startedAt": iso(attempt.started_at),
        "completedAt": iso(attempt.completed_at),
        "error": attempt.error,
    }


def node_view(node: NodeExecution) -> dict[str, Any]:
    """A node execution as the contract shows it."""
    return {
        "nodeId": node.node_id,
        "nodeType": node.node_type.value,
        "status": node.status.value,
        "input": node.input,
        "output": node.output,
        "error": node.error,
        "retryCount": node.retry_count,
        "attempts": [attempt_view(a) for a in node.attempts],
        "startedAt": iso(node.started_at),
        "completedAt": iso(node.completed_at),
    }
