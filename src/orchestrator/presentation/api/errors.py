"""One error envelope for every error, and one table from error to status."""

from __future__ import annotations

import datetime as dt
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from orchestrator.application.views import iso
from orchestrator.domain.errors import (
    Conflict,
    DomainError,
    ExpressionError,
    NotFound,
    ValidationFailed,
)
from orchestrator.domain.values import ValueTooLarge
from orchestrator.domain.workflow import NotExecutable
from orchestrator.infrastructure.db.errors import is_outage, is_refused_value

log = logging.getLogger(__name__)

# Most specific first. NotExecutable is a 400 because the seed's frontend expects that.
STATUS_OF: list[tuple[type[DomainError], int]] = [
    (NotExecutable, 400),
    (ValidationFailed, 400),
    (ExpressionError, 400),
    (ValueTooLarge, 400),
    (NotFound, 404),
    (Conflict, 409),
]

DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly"
UNSTORABLE_VALUE = "The request holds a value that cannot be stored (e.g. \\u0000 or NaN)"


class BodyTooLarge(HTTPException):
    """A request body over the configured limit.

    An HTTPException, because FastAPI turns any other error raised while it reads a body
    into a 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than {limit} bytes")
        self.limit = limit


def envelope(
    request_path: str,
    method: str,
    status: int,
    message: str,
    details: list[Any] | None = None,
) -> dict[str, Any]:
    """The error body of the contract."""
    body: dict[str, Any] = {
        "statusCode": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
    }
    if details:
        body["details"] = details
    body.update(
        path=request_path,
        method=method,
        timestamp=iso(dt.datetime.now(dt.UTC)),
    )
    return body


def error_response(
    request: Request, status: int, message: str, details: list[Any] | None = None
) -> JSONResponse:
    """A JSONResponse carrying the envelope."""
    return JSONResponse(
        envelope(request.url.path, request.method, status, message, details), status_code=status
    )


def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
    details = [p.as_dict() for p in exc.problems] if isinstance(exc, ValidationFailed) else None
    return error_response(request, status, getattr(exc, "message", str(exc)), details)


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for item in exc.errors():
        loc = [str(part) for part in item.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            where, loc = loc[0], loc[1:]
        else:
            where = "body"
        path = ".".join(loc) if loc else where
        message = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        details.append({"path": path, "in": where, "message": message})
    return error_response(request, 400, "Request is invalid", details)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Cannot {request.method} {request.url.path}"
    else:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    response = error_response(request, exc.status_code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    allowed = _allowed_methods(request) if exc.status_code == 405 else None
    if allowed:
        response.headers["Allow"] = allowed
    return response


OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _allowed_methods(request: Request) -> str | None:
    """The methods of the refused request's path template, as the OpenAPI document lists
    them; None for a route the document leaves out.

    Starlette's 405 names only the methods of the first route matching the path (e.g. POST
    alone for /workflows).
    """
    template = getattr(request.scope.get("route"), "path", None)
    operations = request.app.openapi().get("paths", {}).get(template)
    if not operations:
        return None
    return ", ".join(method.upper() for method in operations if method in OPENAPI_METHODS)


def _too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return error_response(request, 413, exc.detail)


def _database(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    response = error_response(request, 503, DATABASE_UNAVAILABLE)
    response.headers["Retry-After"] = "2"
    return response


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error during %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "Internal server error")


def _database_or_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if is_refused_value(exc):
        return error_response(request, 400, UNSTORABLE_VALUE)
    if is_outage(exc):
        return _database(request, exc)
    return _unexpected(request, exc)


def install(app: FastAPI) -> None:
    """Register every handler on the app."""
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(BodyTooLarge, _too_large)
    app.add_exception_handler(DBAPIError, _database_or_unexpected)
    app.add_exception_handler(PoolTimeout, _database)
    app.add_exception_handler(OSError, _database_or_unexpected)
    app.add_exception_handler(Exception, _database_or_unexpected)
