"""The OpenAPI document says what the running service answers.

Schemathesis tests every operation of the document against a real service process over HTTP,
with all its checks: a bounded number of examples per operation, derandomized so that a run
finds the same cases every time. The stateful test reads /openapi.json from the process;
the per-operation tests need the document when pytest collects them, before any process runs,
so they build it from the same app (`test_the_service_serves_the_document_tested` checks it is
the one served). (`schemathesis.pytest.from_fixture` would read it from the process, but
fails on pytest 9.2: it sets `Function._nodeid`, which pytest no longer has.)
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.hooks import HookContext
from schemathesis.specs.openapi.schemas import OpenApiSchema

from orchestrator.main import create_app
from orchestrator.settings import Settings
from tests.processes import Process, base_url

EXAMPLES_PER_OPERATION = 8
STATEFUL_SCENARIOS = 8
BOUNDED = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# A schema-valid request may still be refused with a 400 by a rule that JSON Schema cannot
# state; for these operations a 400 is a right answer to such a request:
# - a definition's graph (one START, reachable END, known edge ends, ...), checked by the
#   use case; and a value PostgreSQL cannot store (\u0000 in a string of free JSON);
# - an edit of an ACTIVE workflow's graph that leaves it invalid;
# - execute: only an ACTIVE workflow runs (NotExecutable is a 400, see errors.STATUS_OF), and
#   the input's bounds (MAX_VALUE_DEPTH, MAX_NODE_OUTPUT_BYTES) are settings.
SEMANTIC_400 = [
    ("POST", "/workflows"),
    ("PUT", "/workflows/{workflow_id}"),
    ("PATCH", "/workflows/{workflow_id}"),
    ("POST", "/workflows/{workflow_id}/nodes"),
    ("PUT", "/workflows/{workflow_id}/nodes/{node_id}"),
    ("DELETE", "/workflows/{workflow_id}/nodes/{node_id}"),
    ("POST", "/workflows/{workflow_id}/edges"),
    ("DELETE", "/workflows/{workflow_id}/edges/{edge_id}"),
    ("POST", "/workflows/execute"),
    ("POST", "/workflows/{workflow_id}/execute"),
    # A range the schema cannot bound (to <= from, over 366 days).
    ("GET", "/usage"),
    # A text body with \u0000, behind a valid token.
    ("POST", "/hooks/{token}"),
    # Parameters a template does not declare, or values that make it invalid.
    ("POST", "/workflows/from-template"),
    ("POST", "/workflows/{workflow_id}/template"),
    # A cron expression or timezone the schema cannot check.
    ("POST", "/workflows/{workflow_id}/schedules"),
    ("PATCH", "/workflows/{workflow_id}/schedules/{schedule_id}"),
]
# schemathesis' default for positive_data_acceptance, which the list below replaces.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # DELETE /workflows/{id} archives: the workflow stays readable (200, ARCHIVED), as
            # the route documents, so "a deleted resource answers 404" does not hold by design.
            "use_after_free": {"enabled": False},
        },
        # The stateful test follows the links the document states (see openapi.PRODUCERS):
        # schemathesis' dependency inference links a workflow's `id` to `node_id` and
        # `edge_id` too, so it reports a "created resource not found" that is no fault.
        "phases": {"stateful": {"inference": {"algorithms": ["location-headers"]}}},
        "operations": [
            {
                "include-method": method,
                "include-path": path,
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]},
                },
            }
            for method, path in SEMANTIC_400
        ],
    }
)


def one_page_size(context: HookContext, query: dict[str, Any] | None) -> bool:
    """GET /workflows takes `limit` or `pageSize`, not both (a 400): OpenAPI cannot say
    "not both" of two parameters, so no case sends both."""
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("GET", "/workflows"):
        return True
    return not (query and "limit" in query and "pageSize" in query)


def served_document() -> dict[str, Any]:
    """The document the service serves, built without starting it (the FastAPI app sits
    under the Socket.IO app and the ASGI middleware)."""
    app: Any = create_app(Settings()).other_asgi_app
    while not hasattr(app, "openapi"):
        app = app.app
    document: dict[str, Any] = app.openapi()
    return document


DOCUMENT = served_document()
# A copy: schemathesis changes the document it is given (e.g. it adds inferred links).
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)
schema.hook("filter_query")(one_page_size)


@pytest.fixture(scope="module")
def service_schema(service: Process) -> OpenApiSchema:
    """The running service's /openapi.json."""
    loaded = schemathesis.openapi.from_url(f"{base_url(service)}/openapi.json", config=CONFIG)
    loaded.hook("filter_query")(one_page_size)
    return loaded


@schema.parametrize()
@BOUNDED
def test_every_operation_answers_as_documented(case: Case[Any], service: Process) -> None:
    case.call_and_validate(base_url=base_url(service), timeout=30)


def test_linked_operations_answer_as_documented(service_schema: OpenApiSchema) -> None:
    machine = service_schema.as_state_machine()
    machine.run(
        settings=settings(
            BOUNDED, max_examples=STATEFUL_SCENARIOS, stateful_step_count=6, derandomize=True
        )
    )


async def test_the_service_serves_the_document_tested(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


async def test_document_answers_400_not_422_and_the_404s(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "422" not in json.dumps(document)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    get_one = document["paths"]["/workflows/{workflow_id}"]["get"]["responses"]
    assert get_one["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "400" in get_one
    cancel = document["paths"]["/workflows/executions/{execution_id}/cancel"]["post"]
    assert {"400", "404", "409"} <= set(cancel["responses"])
    # The error body documented is the one the service writes.
    missing = await api.get("/workflows/no-such-workflow")
    assert missing.status_code == 404
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) <= set(missing.json()) <= set(error["properties"])
