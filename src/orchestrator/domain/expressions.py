"""The safe expression language: CEL (Common Expression Language).

CEL reads like the JavaScript the seed's frontend wrote (`output.score > 0.5 && output.ok`),
has no side effects and no I/O; its only loops are the comprehension macros (`.all(`,
`.map(`, ...), whose nesting is bounded. Expressions are compiled once (see
`compile_expression`) and then evaluated many times; what an expression reads and how costly
it can be (`names`, `tokens`, `comprehensions`, `functions`) is known from its compilation.
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
# The receiver macros that loop. The package expands the first six; cel-go's two-variable
# forms are listed too, so that a package upgrade that adds them cannot slip a loop through.
MACROS = frozenset(
    {
        "all",
        "exists",
        "exists_one",
        "existsOne",
        "map",
        "filter",
        "transformList",
        "transformMap",
        "transformMapEntry",
    }
)
# CEL's lexical grammar, one alternative per token kind, skipped text first. A string may
# carry a bytes prefix and then a raw prefix (`b`, `r`, `br`, ...); a raw string has no
# escapes, the others take a backslash and the character after it as one unit.
_TOKEN = re.compile(
    "|".join(
        [
            r"(?P<skip>[ \t\n\f\r]+|//[^\n]*)",
            r"(?P<string>[bB]?(?:"
            r"[rR](?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n\r]*'|\"[^\"\n\r]*\")"
            r"|'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\""
            r"|'(?:\\.|[^'\\\n\r])*'|\"(?:\\.|[^\"\\\n\r])*\""
            r"))",
            r"(?P<number>\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+"
            r"|0[xX][0-9a-fA-F]+[uU]?|\d+[uU]?)",
            r"(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)",
            r"(?P<punct>==|!=|<=|>=|&&|\|\||.)",
        ]
    ),
    re.DOTALL,
)
_OPENS = {"(": ")", "[": "]", "{": "}"}
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*(?:\.(?:[_a-zA-Z][_a-zA-Z0-9]*|[0-9]+))*")
CONTEXT_NAMES = frozenset({"input", "variables", "outputs", "output", "item", "index"})
"""The names an expression may read; a template path that starts with another reads the input."""


class Expression:
    """A compiled CEL expression, with what is known of it before it runs."""

    __slots__ = ("_comprehensions", "_functions", "_names", "_program", "_tokens", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        if not source.strip():
            raise ExpressionError("expression is empty")
        if len(source) > MAX_EXPRESSION_LENGTH:
            raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
        try:
            self._program = cel.compile(javascript_equality(source))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ExpressionError(_first_line(str(exc))) from exc
        # Tokenized after CEL accepted the source, so the tokens are CEL's own.
        tokens = tokenize(source)
        self._comprehensions = comprehension_nesting(tokens)
        if self._comprehensions > MAX_COMPREHENSION_NESTING:
            raise ExpressionError(
                f"expression nests comprehensions deeper than {MAX_COMPREHENSION_NESTING}"
            )
        self._tokens = max(1, len(tokens))
        # Only the names the expression uses are looked up: a context may compute its
        # values lazily, and most expressions need only one of them.
        self._names = frozenset(self._program.variables())
        self._functions = frozenset(self._program.functions())

    @property
    def names(self) -> frozenset[str]:
        """The variable names it reads (a comprehension's own variables among them)."""
        return self._names

    @property
    def tokens(self) -> int:
        """How many tokens it has: with its data's size, a bound on its work without loops."""
        return self._tokens

    @property
    def comprehensions(self) -> int:
        """How deeply its comprehension macros nest; 0 when it has none (and so no loop)."""
        return self._comprehensions

    @property
    def functions(self) -> frozenset[str]:
        """The functions and operators it calls (`size`, `matches`, `_+_`, ...)."""
        return self._functions

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


def javascript_equality(source: str) -> str:
    """`===` and `!==` read as `==` and `!=`, outside string literals: the platform's editor
    shows conditions such as `input.status === 'error'`."""
    if "==" not in source:
        return source
    pieces: list[str] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        assert match is not None  # the last alternative takes any one character
        pieces.append(match.group())
        position = match.end()
        if match.group() in ("==", "!=") and source.startswith("=", position):
            position += 1
    return "".join(pieces)


def input_path(source: str) -> list[str] | None:
    """The path of a `{{ path }}` placeholder that reads the node's input (`{{delayMs}}`,
    `{{user.name}}`, `{{items.0}}`), or None when it is an expression over the named values."""
    if not _PATH.fullmatch(source):
        return None
    path = source.split(".")
    return None if path[0] in CONTEXT_NAMES else path


def tokenize(source: str) -> list[str]:
    """The tokens of a CEL source, without whitespace and comments.

    Parentheses inside string literals are text, not structure; only tokens show which
    parenthesis closes which call.
    """
    tokens: list[str] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        assert match is not None  # the last alternative takes any one character
        if match.lastgroup != "skip":
            tokens.append(match.group())
        position = match.end()
    return tokens


def comprehension_nesting(tokens: list[str]) -> int:
    """How deeply comprehension macro calls (`.map(`, `.all(`, ...) sit inside one another.

    A macro call is `.` NAME `(`; the global `has(` and every other call are not loops.
    """
    closers: list[tuple[str, bool]] = []
    depth = deepest = 0
    for index, token in enumerate(tokens):
        if token in _OPENS:
            macro = (
                token == "("
                and index >= 2
                and tokens[index - 2] == "."
                and tokens[index - 1] in MACROS
            )
            closers.append((_OPENS[token], macro))
            depth += macro
            deepest = max(deepest, depth)
        elif closers and token == closers[-1][0]:
            depth -= closers.pop()[1]
    return deepest


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid expression"


def to_json(value: Any) -> Any:
    """Turn a CEL result into plain JSON data (timestamps become ISO 8601 text)."""
    # Lists and maps first, by exact type: the checks below cost more per item.
    if type(value) is list:
        return [to_json(v) for v in value]
    if type(value) is dict:
        return {str(k): to_json(v) for k, v in value.items()}
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
        return _placeholder(parts[0].group(1).strip(), context)

    def substitute(match: re.Match[str]) -> str:
        value = _placeholder(match.group(1).strip(), context)
        return value if isinstance(value, str) else _json_text(value)

    return _TEMPLATE.sub(substitute, text)


def _placeholder(source: str, context: Mapping[str, Any]) -> Any:
    path = input_path(source)
    if path is None:
        return compile_expression(source).evaluate(context)
    return path_get(context.get("input"), path)


def path_get(value: Any, path: list[str]) -> Any:
    """The value at a dotted path (object keys, list indices), or None where it has none."""
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
