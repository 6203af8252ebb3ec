"""Workflow templates: a definition whose string values may hold `{{name}}` placeholders, and
the typed parameters that fill them when a workflow is made from the template.

A placeholder is exactly `{{name}}` (no spaces) for a declared parameter. A string that is
one placeholder and nothing else becomes the parameter's value with its own type (a number
stays a number); a placeholder inside longer text is replaced by the value as text. Any
other `{{...}}` is left alone: definitions use the same braces at run time (a PROMPT's
`{{title}}`, a TRANSFORM's `{{ input.x }}`), so only declared names are parameters.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.domain.errors import Problem, ValidationFailed
from orchestrator.domain.mapping import json_text
from orchestrator.domain.workflow import Definition, Edge, Node

PARAMETER_TYPES = ("string", "number", "boolean", "object")
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_PARAMETERS = 50
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]{0,63})\}\}")


@dataclass(frozen=True)
class Parameter:
    """One value a template asks for. Without a default it is required."""

    name: str
    type: str
    description: str = ""
    default: Any = None

    @property
    def required(self) -> bool:
        """A parameter without a default must be given (no type admits null)."""
        return self.default is None


@dataclass(frozen=True)
class Template:
    """A reusable definition: built in (`user_id` None, `created_at` None) or a user's own."""

    id: str
    name: str
    description: str | None
    category: str | None
    parameters: tuple[Parameter, ...]
    definition: Definition
    built_in: bool = False
    user_id: str | None = None
    source_workflow_id: str | None = None
    created_at: dt.datetime | None = None


def type_problem(parameter: Parameter, value: Any) -> str | None:
    """Why `value` cannot fill `parameter`, or None when it can."""
    kind = parameter.type
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, dict)
    if ok:
        return None
    article = "an" if kind == "object" else "a"
    return f"parameter {parameter.name!r} must be {article} {kind}, got {_kind_of(value)}"


def _kind_of(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parameter_values(template: Template, given: Mapping[str, Any]) -> dict[str, Any]:
    """The value of every parameter: the one given, else its default.

    Raises ValidationFailed naming every unknown parameter, missing required one and value of
    the wrong type.
    """
    declared = {p.name: p for p in template.parameters}
    problems = [
        Problem(
            f"parameters.{name}",
            f"template {template.id!r} has no parameter {name!r}; "
            f"it has {_names(declared) or 'none'}",
        )
        for name in given
        if name not in declared
    ]
    values: dict[str, Any] = {}
    for parameter in template.parameters:
        if parameter.name not in given:
            if parameter.required:
                problems.append(
                    Problem(
                        f"parameters.{parameter.name}",
                        f"parameter {parameter.name!r} ({parameter.type}) is required",
                    )
                )
            values[parameter.name] = parameter.default
            continue
        reason = type_problem(parameter, given[parameter.name])
        if reason is not None:
            problems.append(Problem(f"parameters.{parameter.name}", reason))
        values[parameter.name] = given[parameter.name]
    if problems:
        raise ValidationFailed("Template parameters are invalid", problems)
    return values


def _names(declared: Mapping[str, Parameter]) -> str:
    return ", ".join(repr(name) for name in declared)


def fill(definition: Definition, values: Mapping[str, Any]) -> Definition:
    """The definition with every placeholder of a parameter in `values` replaced.

    Node configs, data and schemas take typed values; names, descriptions and edge
    conditions are text, so a value placed there whole is written as text.
    """
    return replace(
        definition,
        nodes=tuple(_fill_node(node, values) for node in definition.nodes),
        edges=tuple(_fill_edge(edge, values) for edge in definition.edges),
        input_schema=_fill_value(definition.input_schema, values),
        output_schema=_fill_value(definition.output_schema, values),
    )


def _fill_node(node: Node, values: Mapping[str, Any]) -> Node:
    return replace(
        node,
        config=_fill_value(node.config, values),
        data=_fill_value(node.data, values),
        name=_fill_text(node.name, values),
        custom_name=_fill_text(node.custom_name, values),
        description=_fill_text(node.description, values),
    )


def _fill_edge(edge: Edge, values: Mapping[str, Any]) -> Edge:
    return replace(edge, condition=_fill_text(edge.condition, values))


def _fill_text(text: str | None, values: Mapping[str, Any]) -> str | None:
    if text is None:
        return None
    filled = _fill_value(text, values)
    return filled if isinstance(filled, str) else json_text(filled)


def _fill_value(value: Any, values: Mapping[str, Any]) -> Any:
    """`value` with placeholders replaced, through objects and lists (keys are kept)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None and whole.group(1) in values:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda match: _as_text(match, values), value)
    if isinstance(value, dict):
        return {key: _fill_value(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_value(item, values) for item in value]
    return value


def _as_text(match: re.Match[str], values: Mapping[str, Any]) -> str:
    name = match.group(1)
    if name not in values:
        return match.group(0)
    value = values[name]
    return value if isinstance(value, str) else json_text(value)


def placeholders(definition: Definition) -> set[str]:
    """The names of every `{{name}}` placeholder in the definition's values and texts."""
    found: set[str] = set()
    for text in _texts(definition):
        found.update(_PLACEHOLDER.findall(text))
    return found


def _texts(definition: Definition) -> Iterator[str]:
    for node in definition.nodes:
        yield from _strings(node.config)
        yield from _strings(node.data)
        yield from (t for t in (node.name, node.custom_name, node.description) if t is not None)
    yield from (e.condition for e in definition.edges if e.condition is not None)
    yield from _strings(definition.input_schema)
    yield from _strings(definition.output_schema)


def _strings(value: Any) -> Iterator[str]:
    """Every string value inside `value` (iteratively: a stored value may nest deeply)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def declared_parameter_problems(
    parameters: tuple[Parameter, ...], definition: Definition
) -> list[Problem]:
    """What is wrong with parameters a user declares for a template of their own: bad names,
    repeats, unknown types, defaults of the wrong type, and names with no placeholder."""
    problems: list[Problem] = []
    if len(parameters) > MAX_PARAMETERS:
        problems.append(Problem("parameters", f"at most {MAX_PARAMETERS} parameters are allowed"))
    used = placeholders(definition)
    seen: set[str] = set()
    for i, parameter in enumerate(parameters):
        path = f"parameters[{i}]"
        if not PARAMETER_NAME.fullmatch(parameter.name):
            problems.append(
                Problem(
                    f"{path}.name",
                    "a parameter name is a letter or _ then letters, digits or _ "
                    "(at most 64 characters)",
                )
            )
        elif parameter.name not in used:
            problems.append(
                Problem(
                    f"{path}.name",
                    f"the definition has no placeholder {{{{{parameter.name}}}}} to fill",
                )
            )
        if parameter.name in seen:
            problems.append(Problem(f"{path}.name", f"parameter {parameter.name!r} is repeated"))
        seen.add(parameter.name)
        if parameter.type not in PARAMETER_TYPES:
            problems.append(Problem(f"{path}.type", f"must be one of {', '.join(PARAMETER_TYPES)}"))
        elif not parameter.required:
            reason = type_problem(parameter, parameter.default)
            if reason is not None:
                problems.append(Problem(f"{path}.default", reason))
    return problems
