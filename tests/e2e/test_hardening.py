"""What probing found: ids no row can hold, huge ids, NULs over Socket.IO, response headers."""

from __future__ import annotations

import httpx

from tests.live import live
from tests.processes import Process, base_url

PATHS = [
    "/workflows/{id}",
    "/workflows/{id}/versions",
    "/workflows/{id}/executions",
    "/workflows/executions/{id}",
    "/workflows/executions/{id}/events",
]


async def test_an_id_with_a_nul_is_unknown_not_unstorable(api: httpx.AsyncClient) -> None:
    for path in PATHS:
        response = await api.get(path.format(id="abc%00def"))
        assert response.status_code == 404, (path, response.text)
        assert "not found" in response.json()["message"]
    cancel = await api.post("/workflows/executions/abc%00/cancel")
    assert cancel.status_code == 404


async def test_a_huge_id_is_not_echoed_whole(api: httpx.AsyncClient) -> None:
    huge = "x" * 10_000
    response = await api.get(f"/workflows/{huge}")
    assert response.status_code == 404
    message = response.json()["message"]
    assert len(message) < 200
    assert message == f"Workflow {'x' * 100}... not found"


async def test_answers_carry_nosniff_and_no_server_banner(api: httpx.AsyncClient) -> None:
    for response in (
        await api.get("/health"),
        await api.get("/workflows/nope"),
        await api.post("/workflows", json={}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers


async def test_a_nul_in_a_subscribed_execution_id_is_refused_as_invalid(service: Process) -> None:
    async with live(base_url(service)) as client:
        answer = await client.call("subscribe", {"executionId": "abc\x00def"})
        assert answer["ok"] is False
        assert answer["error"].startswith("payload must be {executionId:")
        assert "no NUL" in answer["error"]
