"""Values that build a node's input: `$variables.x`, `$output.<nodeId>`, `{{ expr }}`, literals."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from orchestrator.domain.expressions import (
    compile_expression,
    input_path,
    path_get,
    render_template_string,
    template_expressions,
)

VARIABLES_PREFIX = "$variables"
OUTPUT_PREFIX = "$output."


def resolve(value: Any, context: Mapping[str, Any]) -> Any:
    """Resolve a mapping value (recursively through objects and lists).

    `context` holds `input`, `variables` and `outputs` (node id -> output).
    """
    if isinstance(value, str):
        if value == VARIABLES_PREFIX:
            return context["variables"]
        if value.startswith(VARIABLES_PREFIX + "."):
            return path_get(context["variables"], value[len(VARIABLES_PREFIX) + 1 :].split("."))
        if value.startswith(OUTPUT_PREFIX):
            return path_get(context["outputs"], value[len(OUTPUT_PREFIX) :].split("."))
        if "{{" in value:
            return render_template_string(value, context)
        return value
    if isinstance(value, Mapping):
        return {k: resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    return value


def references(value: Any) -> Iterator[tuple[str, str]]:
    """Each reference inside a mapping value: ("output", nodeId), ("expression", source), or
    ("path", source) for a `{{path}}` into the node's input."""
    if isinstance(value, str):
        if value.startswith(OUTPUT_PREFIX):
            yield "output", value[len(OUTPUT_PREFIX) :].split(".")[0]
        elif "{{" in value:
            for source in template_expressions(value):
                yield ("path" if input_path(source) is not None else "expression"), source
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


def json_or_text(template: Any, value: Any) -> Any:
    """A TRANSFORM's rendered text template: the value it spells when it is JSON, else the text.

    The platform's editor writes JSON templates (`{"value": "{{delayMs}}"}`) as text. A
    template that is one placeholder (`{{ input.text }}`) already has its value's own type.
    """
    if not isinstance(template, str) or not isinstance(value, str):
        return value
    whole = template.strip()
    if len(template_expressions(whole)) == 1 and whole.startswith("{{") and whole.endswith("}}"):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def json_text(value: Any) -> str:
    """A value as JSON text (for a text field that was given something else)."""
    return orjson.dumps(value).decode()
