"""Responses that no stored value can break.

A value stored before the bounds of `domain.values` (too deep, or not JSON) would make writing
a response fail. Responses are written as usual, so the common case pays nothing; only when
writing one fails is it written again with each such value shown as a marker
(`{"_unreadable": why}`, see `values.readable`). Fields that hold stored values say so with
`ReadAs` in their annotation.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from orchestrator.domain.values import readable

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# What the endpoint of the request being handled returned, kept for a second writing.
_RETURNED: ContextVar[list[Any] | None] = ContextVar("returned", default=None)


@dataclass(frozen=True)
class ReadAs:
    """Field metadata: the field holds a stored value, shown through `show` when a response
    cannot be written."""

    show: Callable[[Any], Any]


def readable_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An event payload with each value it carries made readable: its own fields, those of
    each node in `nodeExecutions` and those of `data`."""
    shown: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "nodeExecutions" and isinstance(value, list):
            shown[key] = [_members(node) for node in value]
        elif key == "data":
            shown[key] = _members(value)
        else:
            shown[key] = readable(value)
    return shown


def _members(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: readable(member) for key, member in value.items()}
    return readable(value)


StoredValue = Annotated[Any, ReadAs(readable)]
StoredObject = Annotated[dict[str, Any], ReadAs(readable)]
StoredPayload = Annotated[dict[str, Any], ReadAs(readable_payload)]


def readable_model(model: M) -> M:
    """A copy of `model` whose stored values (at any depth) are shown readably."""
    changes: dict[str, Any] = {}
    fields = type(model).model_fields
    for name in model.model_fields_set:
        value = getattr(model, name)
        read_as = next((m for m in fields[name].metadata if isinstance(m, ReadAs)), None)
        if read_as is not None:
            changes[name] = read_as.show(value)
        elif isinstance(value, BaseModel):
            changes[name] = readable_model(value)
        elif isinstance(value, list):
            changes[name] = [readable_model(v) if isinstance(v, BaseModel) else v for v in value]
    return model.model_copy(update=changes)


def _kept(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    async def kept(*args: Any, **kwargs: Any) -> Any:
        returned = await endpoint(*args, **kwargs)
        holder = _RETURNED.get()
        if holder is not None and not holder:
            holder.append(returned)
        return returned

    return kept


class ReadableRoute(APIRoute):
    """A route whose response model is written again readably if writing it fails."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _kept(endpoint), **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            returned: list[Any] = []
            token = _RETURNED.set(returned)
            try:
                return await handler(request)
            except PydanticSerializationError:
                if not returned or not isinstance(returned[0], BaseModel):
                    raise
                log.warning(
                    "%s %s: a stored value cannot be written; it is shown as unreadable",
                    request.method,
                    request.url.path,
                )
                shown = readable_model(returned[0])
                return Response(
                    shown.model_dump_json(exclude_unset=self.response_model_exclude_unset),
                    self.status_code or 200,
                    media_type="application/json",
                )
            finally:
                _RETURNED.reset(token)

        return handle
