"""Agents' progress reports: bounded, then handed to whichever process runs their node.

A report is about a node that runs now; it is relayed as a `node:token-update` or
`node:thinking` event of its execution (stored, numbered by `seq`, sent to subscribers) by
the runner that drives the execution. A report that finds its node not running (late,
duplicate, unknown) is dropped and counted: never an error for the agent.

Every report fits one bus message between processes: a thought longer than
MAX_THOUGHT_CHARS is cut (and the event says `truncated: true`), a plan or tool calls larger
than MAX_PART_BYTES (or nested deeper than MAX_PART_DEPTH) are left out (likewise).
"""

from __future__ import annotations

from typing import Any, Protocol

from orchestrator.domain.engine import ProgressReport
from orchestrator.domain.values import ValueLimits, ValueTooLarge

MAX_THOUGHT_CHARS = 2000
MAX_PART_BYTES = 1000
MAX_PART_DEPTH = 8
MAX_MODEL_CHARS = 100
_PART = ValueLimits(MAX_PART_DEPTH, MAX_PART_BYTES, "MAX_PART_BYTES")


class ProgressSink(Protocol):
    """Takes a report to the runner of its execution (in this process or another)."""

    async def deliver(self, execution_id: str, report: ProgressReport) -> None: ...


def token_report(
    node_id: str,
    counts: dict[str, int | None],
    model: str | None,
    iteration: int | None,
    attempt: int | None,
    loop: list[int] | None,
) -> ProgressReport:
    """A token update: the counts so far in the node's current attempt."""
    data: dict[str, Any] = {name: value for name, value in counts.items() if value is not None}
    if "totalTokens" not in data:
        data["totalTokens"] = data.get("inputTokens", 0) + data.get("outputTokens", 0)
    if model is not None:
        data["model"] = model[:MAX_MODEL_CHARS]
    if iteration is not None:
        data["iteration"] = iteration
    return ProgressReport("tokens", node_id, data, attempt, _loop(loop))


def thinking_report(
    node_id: str,
    step: int,
    thought: str | None,
    plan: Any,
    tool_calls: Any,
    attempt: int | None,
    loop: list[int] | None,
) -> ProgressReport:
    """A thinking step, bounded (see the module)."""
    data: dict[str, Any] = {"step": step}
    truncated = False
    if thought is not None:
        if len(thought) > MAX_THOUGHT_CHARS:
            thought, truncated = thought[:MAX_THOUGHT_CHARS], True
        data["thought"] = thought
    for name, value in (("plan", plan), ("toolCalls", tool_calls)):
        if value is None:
            continue
        try:
            _PART.check(value, name)
        except ValueTooLarge:
            truncated = True
            continue
        data[name] = value
    if truncated:
        data["truncated"] = True
    return ProgressReport("thinking", node_id, data, attempt, _loop(loop))


def _loop(loop: list[int] | None) -> tuple[int, ...] | None:
    return None if loop is None else tuple(loop)


async def report_progress(sink: ProgressSink, execution_id: str, report: ProgressReport) -> None:
    """Relay the report; what becomes of it is counted, not answered (see the module)."""
    await sink.deliver(execution_id, report)
