"""Structured logs: JSON lines in production, readable text at a terminal.

Every line carries what the context knows: `requestId` on a request's lines, `executionId`
and `workflowId` on an execution's, `nodeId` (and `attempt`, where a line names one) on a
node's. They are bound with `bind` (context variables, so that tasks started from there carry
them) and added to every record, the libraries' included. Bearer tokens never reach a line: a
`token=` in a logged URL (Socket.IO's query) is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "text", "auto"]
_TOKEN = re.compile(r"(?i)((?:^|[?&])(?:token|access_token)=)[^&\s\"']+")


class MaskTokens(logging.Filter):
    """Masks a token in a logged URL (uvicorn's access lines name the full path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _TOKEN.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = _TOKEN.sub(r"\1***", record.msg)
        return True


def configure(level: str, log_format: LogFormat) -> None:
    """Send every logger's records to stderr, as JSON or text (`auto`: text at a terminal)."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_colors,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(MaskTokens())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


def _drop_colors(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """uvicorn adds its message again with terminal colours: not for a log line."""
    event.pop("color_message", None)
    return event


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add `fields` to every log line of this context (and of tasks started in it)."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


def bind(**fields: Any) -> None:
    """Add `fields` to every later log line of this task (and of tasks started from it)."""
    structlog.contextvars.bind_contextvars(**fields)
