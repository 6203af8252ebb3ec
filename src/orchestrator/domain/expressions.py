"""The safe expression language: CEL (Common Expression Language).

CEL reads like the JavaScript the seed's frontend wrote (`output.score > 0.5 && output.ok`),
has no side effects, no loops and no I/O, and every evaluation is bounded by the size of the
expression and its data. Expressions are compiled once (see `compile_expression`) and then
evaluated many times.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import cel

from orchestrator.domain.errors import ExpressionError

MAX_EXPRESSION_LENGTH = 4096
# Comprehension macros are CEL's only iteration; nesting them is how an expression
# could grow quadratic or worse, so the depth is bounded.
MAX_COMPREHENSION_NESTING = 2
_COMPREHENSIONS = re.compile(r"\.\s*(all|exists|exists_one|map|filter)\s*\(")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class Expression:
    """A compiled CEL expression."""

    __slots__ = ("_names", "_program", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        _check_bounds(source)
        try:
            self._program = cel.compile(source)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ExpressionError(_first_line(str(exc))) from exc
        # Only the names the expression uses are looked up: a context may compute its
        # values lazily, and most expressions need only one of them.
        self._names = tuple(self._program.variables())

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate against the named values; the result is plain JSON data."""
        try:
            result = self._program.execute(
                {name: context[name] for name in self._names if name in context}
            )
        except KeyError as exc:
            raise ExpressionError(f"{self.source!r}: no such key {exc.args[0]!r}") from exc
        except Exception as exc:
            raise ExpressionError(f"{self.source!r}: {_first_line(str(exc))}") from exc
        return to_json(result)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Compile once; the same source returns the same compiled program."""
    return Expression(source)


def _check_bounds(source: str) -> None:
    if not source.strip():
        raise ExpressionError("expression is empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    if _comprehension_nesting(source) > MAX_COMPREHENSION_NESTING:
        raise ExpressionError(
            f"expression nests comprehensions deeper than {MAX_COMPREHENSION_NESTING}"
        )


def _comprehension_nesting(source: str) -> int:
    """How deeply comprehension macros (`.map(`, `.all(`, ...) sit inside one another."""
    opens = {m.end() - 1 for m in _COMPREHENSIONS.finditer(source)}
    stack: list[bool] = []
    deepest = 0
    for index, char in enumerate(source):
        if char == "(":
            stack.append(index in opens)
            deepest = max(deepest, sum(stack))
        elif char == ")" and stack:
            stack.pop()
    return deepest


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid expression"


def to_json(value: Any) -> Any:
    """Turn a CEL result into plain JSON data (timestamps become ISO 8601 text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def template_expressions(text: str) -> list[str]:
    """The `{{ ... }}` expressions inside a template string."""
    return [m.group(1).strip() for m in _TEMPLATE.finditer(text)]


def render_template_string(text: str, context: Mapping[str, Any]) -> Any:
    """Render a string holding `{{ expr }}` parts.

    A string that is exactly one `{{ expr }}` becomes the expression's value (any JSON type);
    otherwise each part is replaced by its value as text.
    """
    stripped = text.strip()
    # fullmatch alone would take "{{ a }}{{ b }}" as one part whose expression is "a }}{{ b".
    parts = list(_TEMPLATE.finditer(stripped))
    if len(parts) == 1 and parts[0].span() == (0, len(stripped)):
        return compile_expression(parts[0].group(1).strip()).evaluate(context)

    def substitute(match: re.Match[str]) -> str:
        value = compile_expression(match.group(1).strip()).evaluate(context)
        return value if isinstance(value, str) else _json_text(value)

    return _TEMPLATE.sub(substitute, text)


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
