"""The wire form of nodes in Socket.IO payloads: camelCase, and ISO 8601 as REST writes it."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from orchestrator.domain.execution import Attempt, NodeExecution
from orchestrator.domain.workflow import NodeType


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


WAIT_FIELDS = ("prompt", "agentMessage", "proposals", "questionType", "timeoutAt")
CHILD_FIELDS = ("_subExecutionId", "_subWorkflowId", "_subWorkflowName")


def wait_view(node: NodeExecution) -> dict[str, Any] | None:
    """What a waiting node waits for: a person's answer to `prompt` (until `timeoutAt`), or
    a sub-workflow's execution; None when it does not wait."""
    kind = node.waiting
    if kind is None or node.state is None:
        return None
    fields = WAIT_FIELDS if kind == "input" else CHILD_FIELDS
    view: dict[str, Any] = {"for": kind}
    for name in fields:
        if name in node.state:
            view[name.lstrip("_")] = node.state[name]
    return view


def node_data(node: NodeExecution) -> dict[str, Any]:
    """`data` of a `node:update`: input, output, error; for a wait, what it waits for as the
    platform's run view reads it (`prompt`, `agentMessage`, ...; a sub-workflow's ids in
    `output`)."""
    data: dict[str, Any] = {"input": node.input, "output": node.output, "error": node.error}
    if node.state is not None and node.node_type == NodeType.SUBWORKFLOW:
        marker = {k: node.state[k] for k in CHILD_FIELDS if k in node.state}
        output = node.output
        if output is None or isinstance(output, dict):
            data["output"] = {**(output or {}), **marker}
    if node.waiting == "input" and node.state is not None:
        for name in WAIT_FIELDS:
            if name in node.state:
                data[name] = node.state[name]
    return data


def node_view(node: NodeExecution) -> dict[str, Any]:
    """A node execution as the contract shows it."""
    view = _node_view(node)
    if node.iteration:
        view["iteration"] = list(node.iteration)
    return view


def _node_view(node: NodeExecution) -> dict[str, Any]:
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
