"""Values that build a node's input: `$variables.x`, `$output.<nodeId>`, `{{ expr }}`, literals."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.domain.expressions import (
    compile_expression,
    render_template_string,
    template_expressions,
)

VARIABLES_PREFIX = "$variables"
OUTPUT_PREFIX = "$output."


def _path_get(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def resolve(value: Any, context: Mapping[str, Any]) -> Any:
    """Resolve a mapping value (recursively through objects and lists).

    `context` holds `input`, `variables` and `outputs` (node id -> output).
    """
    if isinstance(value, str):
        if value == VARIABLES_PREFIX:
            return context["variables"]
        if value.startswith(VARIABLES_PREFIX + "."):
            return _path_get(context["variables"], value[len(VARIABLES_PREFIX) + 1 :].split("."))
        if value.startswith(OUTPUT_PREFIX):
            return _path_get(context["outputs"], value[len(OUTPUT_PREFIX) :].split("."))
        if "{{" in value:
            return render_template_string(value, context)
        return value
    if isinstance(value, Mapping):
        return {k: resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    return value


def references(value: Any) -> Iterator[tuple[str, str]]:
    """Each reference inside a mapping value, as ("output", nodeId) or ("expression", source)."""
    if isinstance(value, str):
        if value.startswith(OUTPUT_PREFIX):
            yield "output", value[len(OUTPUT_PREFIX) :].split(".")[0]
        elif "{{" in value:
            for source in template_expressions(value):
                yield "expression", source
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def compile_all(value: Any) -> None:
    """Compile every expression inside a mapping value (raises ExpressionError)."""
    for kind, source in references(value):
        if kind == "expression":
            compile_expression(source)
