"""Use cases of templates: the built-in catalog and users' own templates, and workflows made
from either."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Protocol

from orchestrator.application.access import Caller
from orchestrator.application.catalog import BUILT_IN, BY_ID
from orchestrator.application.ports import Clock, Page, UnitOfWorkFactory
from orchestrator.application.workflows import (
    DEFAULT_LIMITS,
    create_workflow,
    definition_problems,
    get_workflow,
)
from orchestrator.domain.errors import Conflict, NotFound, ValidationFailed
from orchestrator.domain.templates import (
    Parameter,
    Template,
    declared_parameter_problems,
    fill,
    parameter_values,
)
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import Workflow


class TemplateRepository(Protocol):
    """Users' own templates (the built-in ones are not stored)."""

    async def add(self, template: Template) -> None: ...

    async def get(self, template_id: str) -> Template | None: ...

    async def list_page(
        self, owner: str | None, category: str | None, offset: int, limit: int
    ) -> tuple[list[Template], int]:
        """Newest first, `limit` (maybe 0) from `offset`, with the total count; `owner` None:
        every owner's."""
        ...

    async def delete(self, template_id: str) -> bool:
        """True when there was such a template."""
        ...


@dataclass(frozen=True)
class NewTemplate:
    """What a user gives to save a workflow as a template; None takes the workflow's."""

    name: str | None = None
    description: str | None = None
    category: str | None = None
    parameters: tuple[Parameter, ...] = ()


def _built_in(category: str | None) -> list[Template]:
    return [t for t in BUILT_IN if category is None or t.category == category]


async def list_templates(
    repository: TemplateRepository, caller: Caller, category: str | None, page: Page
) -> tuple[list[Template], int]:
    """One page of the built-in templates, then the caller's own (newest first), and the total
    of both."""
    built_in = _built_in(category)
    shown = built_in[page.offset : page.offset + page.limit]
    own_offset = max(0, page.offset - len(built_in))
    own, own_total = await repository.list_page(
        caller.only, category, own_offset, page.limit - len(shown)
    )
    return shown + own, len(built_in) + own_total


async def get_template(
    repository: TemplateRepository, template_id: str, caller: Caller
) -> Template:
    """A built-in template, or one of the caller's own; NotFound for another user's."""
    built_in = BY_ID.get(template_id)
    if built_in is not None:
        return built_in
    template = await repository.get(template_id)
    if template is None or not caller.may_read(template.user_id):
        raise NotFound("Template", template_id)
    return template


async def delete_template(repository: TemplateRepository, template_id: str, caller: Caller) -> None:
    """Delete one of the caller's own templates; the built-in ones stay (Conflict)."""
    if template_id in BY_ID:
        raise Conflict(f"Template {template_id} is built in and cannot be deleted")
    template = await repository.get(template_id)
    if template is None or not caller.may_change(template.user_id):
        raise NotFound("Template", template_id)
    if not await repository.delete(template_id):
        raise NotFound("Template", template_id)


async def create_from_template(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    repository: TemplateRepository,
    template_id: str,
    name: str,
    description: str | None,
    parameters: dict[str, Any],
    caller: Caller,
    limits: ValueLimits = DEFAULT_LIMITS,
) -> Workflow:
    """A new DRAFT workflow of the caller's, the template's definition with the parameters
    filled in (defaults for those not given).

    Unknown, missing and mistyped parameters are refused, naming each. A built-in template
    filled in must be able to run: values that break it (an agent id with a slash, a
    concurrency of 0...) are refused, listing the problems. A user's template may have been
    saved from an incomplete draft, so its workflow is a draft like any other: its answer lists
    what keeps it from running.
    """
    template = await get_template(repository, template_id, caller)
    limits.check(parameters, "parameters")
    definition = fill(template.definition, parameter_values(template, parameters))
    problems = definition_problems(definition, limits)
    if problems and template.built_in:
        raise ValidationFailed(
            f"The parameters make template {template.id}'s definition invalid", problems
        )
    return await create_workflow(
        uow_factory,
        clock,
        name,
        template.description if description is None else description,
        definition,
        None,
        caller,
        limits,
    )


async def save_as_template(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    repository: TemplateRepository,
    workflow_id: str,
    new: NewTemplate,
    caller: Caller,
    limits: ValueLimits = DEFAULT_LIMITS,
) -> Template:
    """A template of the caller's own (seen by nobody else) made from the workflow's current
    definition; `new.parameters` declares which `{{name}}` placeholders in it are parameters.
    NotFound for a workflow the caller may not see."""
    workflow = await get_workflow(uow_factory, workflow_id, caller)
    problems = declared_parameter_problems(new.parameters, workflow.definition)
    if problems:
        raise ValidationFailed("Template parameters are invalid", problems)
    limits.check([p.default for p in new.parameters], "parameters")
    template = Template(
        id=str(uuid.uuid4()),
        name=new.name or workflow.name,
        description=workflow.description if new.description is None else new.description,
        category=new.category,
        parameters=new.parameters,
        definition=replace(workflow.definition, version=1),
        user_id=caller.user_id,
        source_workflow_id=workflow.id,
        created_at=clock.now(),
    )
    await repository.add(template)
    return template
