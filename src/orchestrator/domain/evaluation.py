"""Expression work as data: a Job names what to evaluate and the JSON context it reads.

A job can cross a process boundary, so that an evaluation can run where it can be stopped;
`analyze` says, at compile time, what a spec reads and whether its work is bounded by its
size and its data's (see `Analysis`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.expressions import (
    CONTEXT_NAMES,
    Expression,
    compile_expression,
    input_path,
    template_expressions,
)
from orchestrator.domain.mapping import OUTPUT_PREFIX, VARIABLES_PREFIX, resolve

JobKind = Literal["expression", "condition", "resolve"]
# `matches` compiles a regular expression and runs it over a text: that costs up to pattern
# x text, not tokens² x data, so it counts as a loop.
_LOOPING_FUNCTIONS = frozenset({"matches"})
_REPR_CHARACTERS = 200


@dataclass(frozen=True)
class Analysis:
    """What a spec reads and how costly it can be, found at compile time.

    `comprehensions` is true when the spec can loop (a comprehension macro or `matches`
    anywhere); without it the work is bounded by `tokens`² x the size of the data read.
    """

    names: frozenset[str]
    tokens: int
    comprehensions: bool


@dataclass(frozen=True)
class Job:
    """One piece of expression work in JSON terms, so that it can cross a process boundary.

    `spec` is an expression's source (kinds expression and condition) or a mapping value
    (kind resolve); `context` holds only the names the spec reads; `what` names who asks,
    for error messages ("node 'check' condition").
    """

    kind: JobKind
    spec: Any
    context: dict[str, Any]
    what: str


def analyze(kind: JobKind, spec: Any) -> Analysis:
    """Compile every expression of the spec; raises ExpressionError when one does not.

    A mapping value (kind resolve) counts one token per value in it, so that a large mapping
    is not taken for cheap; `$variables` reads "variables" and `$output.` reads "outputs".
    """
    names: set[str] = set()
    tokens = 0
    if kind != "resolve":
        if not isinstance(spec, str):
            raise ExpressionError(f"expression must be a string, got {_short(spec)}")
        sources = [spec]
    else:
        sources = []
        for item in _values(spec):
            tokens += 1
            if not isinstance(item, str):
                continue
            if item == VARIABLES_PREFIX or item.startswith(VARIABLES_PREFIX + "."):
                names.add("variables")
            elif item.startswith(OUTPUT_PREFIX):
                names.add("outputs")
            elif "{{" in item:
                for source in template_expressions(item):
                    if input_path(source) is None:
                        sources.append(source)
                    else:  # `{{delayMs}}`: a path into the node's input
                        names.add("input")
    expressions = [compile_expression(source) for source in sources]
    for expression in expressions:
        names |= expression.names & CONTEXT_NAMES
        tokens += expression.tokens
    return Analysis(frozenset(names), tokens, any(map(_loops, expressions)))


def run(job: Job) -> Any:
    """Evaluate the job; the result is plain JSON data. Errors start with `job.what`."""
    try:
        if job.kind == "resolve":
            return resolve(job.spec, job.context)
        value = compile_expression(job.spec).evaluate(job.context)
    except ExpressionError as exc:
        raise ExpressionError(f"{job.what}: {exc.message}") from exc
    if job.kind == "condition" and not isinstance(value, bool):
        raise ExpressionError(f"{job.what} must be true or false, got {_short(value)}")
    return value


def _loops(expression: Expression) -> bool:
    return expression.comprehensions > 0 or not expression.functions.isdisjoint(_LOOPING_FUNCTIONS)


def _values(value: Any) -> Iterator[Any]:
    """Every value inside a mapping value, the containers included."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _short(value: Any) -> str:
    """A value's repr, cut short: a message must not carry a whole output."""
    text = repr(value)
    if len(text) <= _REPR_CHARACTERS:
        return text
    return text[:_REPR_CHARACTERS] + "..."
