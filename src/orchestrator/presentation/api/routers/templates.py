"""Template routes: the catalog (/templates), workflows made from a template
(/workflows/from-template) and a workflow saved as its owner's template
(/workflows/{id}/template).

Included before the workflows router, so that /workflows/from-template is not taken for a
workflow id."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import Field

from orchestrator.application import templates as use
from orchestrator.application.ports import Page
from orchestrator.domain.templates import MAX_PARAMETERS, Parameter, Template
from orchestrator.infrastructure.db.templates import SqlTemplateRepository
from orchestrator.presentation.api.deps import (
    NO_NUL,
    CallerDep,
    ContextDep,
    WorkflowId,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.openapi import FORBIDDEN, NOT_FOUND, UNAUTHENTICATED
from orchestrator.presentation.api.readable import ReadableRoute, StoredObject, StoredValue
from orchestrator.presentation.api.schemas import DefinitionOut, Id, WireModel, WorkflowOut

# The OpenAPI document derives most error answers from each route's parameters (see
# presentation/api/openapi.py); these are the ones it cannot see.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": UNAUTHENTICATED},
    403: {"description": FORBIDDEN},
}
router = APIRouter(
    tags=["templates"],
    route_class=ReadableRoute,
    dependencies=[Depends(unstorable_ids_are_unknown)],
    responses=AUTH_ERRORS,
)

TemplateId = Annotated[str, Path()]
Category = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]
ParameterType = Literal["string", "number", "boolean", "object"]


async def get_repository(context: ContextDep) -> use.TemplateRepository:
    """Users' templates, in the service's database."""
    return SqlTemplateRepository(context.engine)


RepositoryDep = Annotated[use.TemplateRepository, Depends(get_repository)]


async def get_template_page(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> Page:
    """`page` and `limit`; by default the whole catalog fits on the first page."""
    return Page(page=page, limit=limit)


TemplatePageDep = Annotated[Page, Depends(get_template_page)]


class ParameterOut(WireModel):
    """A value the template asks for; `default` is used when it is not given."""

    name: str
    type: ParameterType
    description: str
    required: bool
    default: StoredValue = None

    @classmethod
    def of(cls, parameter: Parameter) -> ParameterOut:
        """From the domain parameter."""
        return cls(
            name=parameter.name,
            type=parameter.type,
            description=parameter.description,
            required=parameter.required,
            default=parameter.default,
        )


class TemplateOut(WireModel):
    """A template: `builtIn` ones are the service's catalog, the others their owner's."""

    id: str
    name: str
    description: str | None
    category: str | None
    built_in: bool
    parameters: list[ParameterOut]
    definition: DefinitionOut
    user_id: str | None
    source_workflow_id: str | None
    created_at: dt.datetime | None

    @classmethod
    def of(cls, template: Template) -> TemplateOut:
        """From the domain template."""
        return cls(
            id=template.id,
            name=template.name,
            description=template.description,
            category=template.category,
            built_in=template.built_in,
            parameters=[ParameterOut.of(p) for p in template.parameters],
            definition=DefinitionOut.of(template.definition),
            user_id=template.user_id,
            source_workflow_id=template.source_workflow_id,
            created_at=template.created_at,
        )


class TemplateList(WireModel):
    """A page of templates: the built-in ones first, then the caller's own, newest first."""

    templates: list[TemplateOut]
    total: int
    page: int
    limit: int


class FromTemplateIn(WireModel):
    """Body of POST /workflows/from-template."""

    template_id: Id
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(
        None, max_length=10_000, description="The new workflow's; by default the template's"
    )
    parameters: StoredObject = Field(
        default_factory=dict,
        description="Parameter values by name; those left out take their defaults",
    )


class ParameterIn(WireModel):
    """A parameter declared when saving a template: a `{{name}}` placeholder it fills."""

    name: str = Field(min_length=1, max_length=64)
    type: ParameterType
    description: str = Field("", max_length=1000)
    default: Any = Field(None, description="Leave it out (or null) to make the parameter required")

    def to_domain(self) -> Parameter:
        """The domain parameter."""
        return Parameter(self.name, self.type, self.description, self.default)


class SaveTemplateIn(WireModel):
    """Body of POST /workflows/{id}/template; what is left out is taken from the workflow."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    category: Category | None = None
    parameters: list[ParameterIn] = Field(default_factory=list, max_length=MAX_PARAMETERS)


@router.get("/templates", response_model=TemplateList)
async def list_templates(
    repository: RepositoryDep,
    caller: CallerDep,
    page: TemplatePageDep,
    category: Annotated[Category | None, Query()] = None,
) -> TemplateList:
    """The built-in templates and the caller's own, optionally of one category."""
    items, total = await use.list_templates(repository, caller, category, page)
    return TemplateList(
        templates=[TemplateOut.of(t) for t in items], total=total, page=page.page, limit=page.limit
    )


@router.get("/templates/{template_id}", response_model=TemplateOut)
async def get_template(
    template_id: TemplateId, repository: RepositoryDep, caller: CallerDep
) -> TemplateOut:
    """One template: built in, or the caller's own (404 for another user's)."""
    return TemplateOut.of(await use.get_template(repository, template_id, caller))


@router.delete(
    "/templates/{template_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "The template is built in: it cannot be deleted"}},
)
async def delete_template(
    template_id: TemplateId, repository: RepositoryDep, caller: CallerDep
) -> Response:
    """Delete one of the caller's own templates; a built-in one is 409."""
    await use.delete_template(repository, template_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/workflows/from-template",
    status_code=status.HTTP_201_CREATED,
    response_model=WorkflowOut,
    responses={404: {"description": NOT_FOUND.format(what="template")}},
)
async def create_from_template(
    body: FromTemplateIn, context: ContextDep, repository: RepositoryDep, caller: CallerDep
) -> WorkflowOut:
    """A new DRAFT workflow from a template, its parameters filled in; 400 names every
    unknown, missing or mistyped parameter."""
    workflow = await use.create_from_template(
        context.uow_factory,
        context.clock,
        repository,
        body.template_id,
        body.name,
        body.description,
        body.parameters,
        caller,
        context.value_limits,
    )
    return WorkflowOut.of(workflow)


@router.post(
    "/workflows/{workflow_id}/template",
    status_code=status.HTTP_201_CREATED,
    response_model=TemplateOut,
)
async def save_as_template(
    workflow_id: WorkflowId,
    body: SaveTemplateIn,
    context: ContextDep,
    repository: RepositoryDep,
    caller: CallerDep,
) -> TemplateOut:
    """Save the workflow's current definition as a template only its owner sees."""
    new = use.NewTemplate(
        name=body.name,
        description=body.description,
        category=body.category,
        parameters=tuple(p.to_domain() for p in body.parameters),
    )
    template = await use.save_as_template(
        context.uow_factory,
        context.clock,
        repository,
        workflow_id,
        new,
        caller,
        context.value_limits,
    )
    return TemplateOut.of(template)
