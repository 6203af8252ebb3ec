"""The OpenAPI document as the service answers: its error body, 400 (not 422), 404 and 409.

FastAPI documents a 422 with its own body for every route that validates input, and knows
nothing of the errors the use cases raise. `install` post-processes the generated document
once: every 422 becomes a 400 with the service's error body (see `errors.envelope`), every
operation that validates a body, query or header documents 400, every operation with a path
parameter (and those naming an entity in their body) documents 404, and those whose use case
raises `Conflict` document 409.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

ERROR_SCHEMA = "ErrorBody"
ERROR_REF = f"#/components/schemas/{ERROR_SCHEMA}"
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class ErrorDetail(BaseModel):
    """One problem of a refused request."""

    model_config = ConfigDict(populate_by_name=True)

    path: str = Field(description="Where the problem is, as a dotted path")
    in_: Literal["body", "query", "path", "header"] | SkipJsonSchema[None] = Field(
        None,
        alias="in",
        description="body, query, path or header; absent for a problem the service found "
        "after reading the request (e.g. in a workflow definition)",
    )
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(populate_by_name=True)

    status_code: int = Field(alias="statusCode", description="The HTTP status")
    error: str = Field(description="The HTTP status phrase")
    message: str
    details: list[ErrorDetail] = Field(
        default_factory=list, description="Every problem, for some 400s; absent otherwise"
    )
    path: str = Field(description="The request's path")
    method: str = Field(description="The request's method")
    timestamp: dt.datetime


INVALID = "The request is invalid: `message` says why; `details`, when present, lists each problem"
NOT_FOUND = "No such {what} (or it belongs to another user)"
TOO_LARGE = "The body is larger than MAX_BODY_BYTES"
UNAUTHENTICATED = (
    "AUTH_MODE=gateway or jwt: no credentials, or credentials that do not hold "
    "(a missing userId, a bad, expired or forged token)"
)
FORBIDDEN = "The credentials do not allow it (say, userId is not the token's user)"
INTERNAL_UNAUTHENTICATED = "INTERNAL_TOKEN is set and the request does not carry it"

# Operations that name an entity elsewhere than in a path parameter.
NOT_FOUND_WITHOUT_PATH_PARAMETER: dict[tuple[str, str], str] = {
    ("post", "/workflows/execute"): "workflow",
    ("post", "/workflows/from-template"): "template",
}

# The operations whose use case raises Conflict (mapped to 409 by errors.STATUS_OF), and why.
# DELETE /workflows/{workflow_id} is not here: archiving is one statement and archiving an
# archived workflow answers it as it is, so it never raises Conflict.
CONFLICTS: dict[tuple[str, str], str] = {
    ("post", "/workflows/execute"): "The Idempotency-Key was used to execute another workflow",
    ("post", "/workflows/{workflow_id}/execute"): (
        "The Idempotency-Key was used to execute another workflow"
    ),
    ("post", "/workflows/executions/{execution_id}/cancel"): (
        "The execution already COMPLETED or FAILED"
    ),
    ("post", "/workflows/executions/{execution_id}/nodes/{node_id}/resume"): (
        "The node does not wait for input, or was answered already"
    ),
    ("post", "/workflows/executions/{execution_id}/retry"): (
        "The execution is not FAILED; only a FAILED execution can be retried"
    ),
    ("put", "/workflows/{workflow_id}"): (
        "The workflow is ARCHIVED, the status change is not allowed, "
        "or another request changed the workflow meanwhile"
    ),
    ("patch", "/workflows/{workflow_id}"): (
        "The workflow is ARCHIVED, the status change is not allowed, "
        "or another request changed the workflow meanwhile"
    ),
    ("post", "/workflows/{workflow_id}/nodes"): (
        "The workflow is ARCHIVED, a node has this id already, "
        "or another request changed the workflow meanwhile"
    ),
    ("put", "/workflows/{workflow_id}/nodes/{node_id}"): (
        "The workflow is ARCHIVED, or another request changed it meanwhile"
    ),
    ("delete", "/workflows/{workflow_id}/nodes/{node_id}"): (
        "The workflow is ARCHIVED, or another request changed it meanwhile"
    ),
    ("post", "/workflows/{workflow_id}/edges"): (
        "The workflow is ARCHIVED, an edge has this id already, "
        "or another request changed the workflow meanwhile"
    ),
    ("delete", "/workflows/{workflow_id}/edges/{edge_id}"): (
        "The workflow is ARCHIVED, or another request changed it meanwhile"
    ),
    ("post", "/workflows/executions/{execution_id}/budget"): (
        "The execution is not paused by its budget"
    ),
    ("post", "/workflows/{workflow_id}/webhooks"): (
        "The workflow is ARCHIVED, or has 100 webhooks already"
    ),
    ("delete", "/templates/{template_id}"): "A built-in template cannot be deleted",
}

# OpenAPI links: the answers that name a new workflow or execution (by `id`, owned by
# `userId`), and the path parameter that takes it. Each links to every operation whose only
# path parameter that is.
PRODUCERS: dict[tuple[str, str], tuple[str, str]] = {
    ("post", "/workflows"): ("201", "workflow_id"),
    ("post", "/workflows/execute"): ("202", "execution_id"),
    ("post", "/workflows/{workflow_id}/execute"): ("202", "execution_id"),
    ("post", "/workflows/executions/{execution_id}/retry"): ("202", "execution_id"),
    ("post", "/workflows/from-template"): ("201", "workflow_id"),
}


def install(app: FastAPI) -> None:
    """Have `app.openapi()` answer the post-processed document (built once, then cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_error_answers(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_error_answers(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with the error answers the service gives (changed in place, and returned)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas[ERROR_SCHEMA] = body
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in METHODS:
                _document_errors(method, path, operation)
    _drop_unused(document, FASTAPI_VALIDATION_SCHEMAS)
    _link(document)
    return document


def _link(document: dict[str, Any]) -> None:
    paths: dict[str, Any] = document.get("paths", {})
    for (method, path), (status, parameter) in PRODUCERS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links: dict[str, Any] = {}
        for target_path, item in paths.items():
            for target_method, operation in item.items():
                if target_method not in METHODS:
                    continue
                parameters = operation.get("parameters", [])
                if [p["name"] for p in parameters if p.get("in") == "path"] != [parameter]:
                    continue
                values = {f"path.{parameter}": "$response.body#/id"}
                if any(p["name"] == "userId" and p.get("in") == "query" for p in parameters):
                    values["query.userId"] = "$response.body#/userId"
                name = operation.get("operationId", f"{target_method}{target_path}")
                links[name] = {
                    "operationRef": "#/paths/"
                    + target_path.replace("~", "~0").replace("/", "~1")
                    + f"/{target_method}",
                    "parameters": values,
                }
        if links:
            response["links"] = links


def _document_errors(method: str, path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    validates = responses.pop("422", None) is not None
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if validates or has_body or any(p.get("in") in ("query", "header") for p in parameters):
        responses["400"] = _error(INVALID)
    what = NOT_FOUND_WITHOUT_PATH_PARAMETER.get((method, path))
    path_parameters = [p["name"] for p in parameters if p.get("in") == "path"]
    if what is None and path_parameters:
        what = _entity(path_parameters)
    if what is not None:
        responses["404"] = _error(NOT_FOUND.format(what=what))
    if (method, path) in CONFLICTS:
        responses["409"] = _error(CONFLICTS[method, path])
    if has_body:
        responses["413"] = _error(TOO_LARGE)
    if path.startswith(("/workflows", "/schedules", "/templates", "/usage")):
        responses["401"] = _error(UNAUTHENTICATED)
        responses["403"] = _error(FORBIDDEN)
    if path.startswith("/internal/"):
        responses["401"] = _error(INTERNAL_UNAUTHENTICATED)
    for code, response in responses.items():
        if code.startswith(("4", "5")) and "content" not in response:
            response["content"] = _error(response.get("description", ""))["content"]
    operation["responses"] = dict(sorted(responses.items()))


def _entity(path_parameters: list[str]) -> str:
    names = {
        "workflow_id": "workflow",
        "execution_id": "execution",
        "node_id": "node",
        "edge_id": "edge",
        "schedule_id": "schedule",
        "webhook_id": "webhook",
        "template_id": "template",
        "token": "webhook",
    }
    return " or ".join(names.get(p, p) for p in path_parameters)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def _drop_unused(document: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas = document["components"]["schemas"]
    for name in names:
        kept = {k: v for k, v in document.items() if k != "components"}
        kept["components"] = {"schemas": {k: v for k, v in schemas.items() if k not in names}}
        if f"#/components/schemas/{name}" not in json.dumps(kept):
            schemas.pop(name, None)
