"""The platform frontend's run-view hook, run by Node.js with socket.io-client 4, on the service.

`frontend/run_view.mjs` does what the hook does: connect to `/workflows` over websocket, emit
`join` and `subscribe`, write a log line per event with the node's name, `leave` at the end.
It prints each event as a JSON line `{event, payload}` and each log line as `[HH:MM:SS] ...`.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flows import TERMINAL, create_active, edge, get_execution, node, wait_node, wait_until
from tests.processes import Process, base_url, free_port, running, service_process

pytestmark = pytest.mark.timeout(300)

FRONTEND = Path(__file__).parent / "frontend"
SCRIPT = FRONTEND / "run_view.mjs"
INSTALLED = FRONTEND / "node_modules" / "socket.io-client" / "package.json"
INSTALL_LOCK = Path(tempfile.gettempdir()) / "orchestrator-run-view-npm.lock"
INSTALL_TIMEOUT_S = 180
SCRIPT_TIMEOUT_MS = 60_000
GET_IT = "run `npm ci --prefix tests/e2e/frontend` where the npm registry is reachable"

NAMES = {
    "start": "Begin",
    "think": "Think",
    "ask": "Ask the editor",
    "writer": "Writer",
    "end": "Done",
}


@pytest.fixture(scope="session")
def node_script() -> Path:
    """The run-view script, socket.io-client installed next to it (once per machine)."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip(f"Node.js is not on PATH: install Node.js 18+ and npm, then {GET_IT}")
    if not INSTALLED.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"npm is not on PATH: install npm, then {GET_IT}")
        with INSTALL_LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be installing too
            if not INSTALLED.is_file():
                try:
                    done = subprocess.run(
                        [npm, "ci", "--no-audit", "--no-fund"],
                        cwd=FRONTEND,
                        capture_output=True,
                        text=True,
                        timeout=INSTALL_TIMEOUT_S,
                    )
                except subprocess.TimeoutExpired:
                    pytest.skip(f"npm ci took over {INSTALL_TIMEOUT_S} s: {GET_IT}")
                if done.returncode != 0 or not INSTALLED.is_file():
                    said = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
                    pytest.skip(f"npm ci failed ({said[0]}): {GET_IT}")
    return SCRIPT


@pytest.fixture(scope="module")
def prefixed(service_db: str, standin: str) -> Iterator[Process]:
    """The service with its REST routes under /api, as the platform's frontend calls them."""
    with running(service_process(service_db, standin, API_PREFIX="/api")) as process:
        yield process


@pytest.fixture
async def rest(prefixed: Process) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the service's /api routes."""
    async with httpx.AsyncClient(base_url=f"{base_url(prefixed)}/api", timeout=30) as client:
        yield client


@dataclass
class RunView:
    """The running script: what it printed so far, read as it comes."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def events(self) -> list[tuple[str, Any]]:
        """The events received, in order: (name, payload)."""
        parsed = [json.loads(line) for line in self.lines if line.startswith("{")]
        return [(e["event"], e["payload"]) for e in parsed]

    @property
    def log_lines(self) -> list[str]:
        """The run view's log lines."""
        return [line for line in self.lines if line.startswith("[")]

    def named(self, *names: str) -> list[dict[str, Any]]:
        """The payloads of the events with these names."""
        return [payload for name, payload in self.events if name in names]

    def printed(self) -> str:
        """Everything it printed, for failure messages."""
        return "\n".join([*self.lines, "--- stderr ---", *self.errors])

    async def wait_for(self, seen: Callable[[str, Any], bool], timeout: float = 30.0) -> Any:
        """The payload of the first event for which `seen(name, payload)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for name, payload in self.events:
                if seen(name, payload):
                    return payload
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"no such event; the script printed:\n{self.printed()}")
            await asyncio.sleep(0.02)

    async def exit_code(self, timeout: float = SCRIPT_TIMEOUT_MS / 1000 + 30) -> int:
        """Wait for the script to end (everything it printed read); its exit code."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the script did not end; it printed:\n{self.printed()}") from None


async def _collect(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip("\n"))


@asynccontextmanager
async def run_view(script: Path, url: str, execution_id: str) -> AsyncIterator[RunView]:
    """Start the script on an execution; it is killed at the end if it still runs."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        url,
        execution_id,
        str(SCRIPT_TIMEOUT_MS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 22,
    )
    view = RunView(process)
    readers = [
        asyncio.create_task(_collect(process.stdout, view.lines)),
        asyncio.create_task(_collect(process.stderr, view.errors)),
    ]
    try:
        yield view
        await view.exit_code()
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def named(node_id: str, node_type: str, **config: Any) -> dict[str, Any]:
    """A node with its display name."""
    return {**node(node_id, node_type, **config), "name": NAMES[node_id]}


def definition(*middle: dict[str, Any]) -> dict[str, Any]:
    """START, the nodes in order, END: every node named."""
    nodes = [named("start", "START"), *middle, named("end", "END")]
    ids = [n["id"] for n in nodes]
    return {"nodes": nodes, "edges": [edge(a, b) for a, b in itertools.pairwise(ids)]}


THINK = named(
    "think", "AGENT", agentId="slow", inputMapping={"delayMs": 300, "title": "$variables.title"}
)
WRITER = named("writer", "AGENT", agentId="echo")


async def start(rest: httpx.AsyncClient, flow: dict[str, Any], data: Any) -> str:
    """Create the ACTIVE workflow and execute it as the frontend does; the execution id."""
    workflow_id = await create_active(rest, flow)
    response = await rest.post(
        f"/workflows/{workflow_id}/execute", json={"input": data, "disabledNodeTypes": []}
    )
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def log_line(line: str, text: str) -> bool:
    """`line` is "[HH:MM:SS] text"."""
    stamp, _, rest = line.partition("] ")
    return rest == text and len(stamp) == 9 and stamp[3] == ":" and stamp[6] == ":"


def assert_named(view: RunView) -> None:
    """Every node:update carries the display name, and the view logged it by that name."""
    updates = view.named("node:update")
    assert updates
    for update in updates:
        assert update["nodeName"] == NAMES[update["nodeId"]], update
        wanted = f"{update['nodeName']}: {update['status']}"
        assert any(log_line(line, wanted) for line in view.log_lines), (wanted, view.log_lines)


async def test_the_run_view_joined_mid_way_gets_one_snapshot_a_replay_and_the_rest_by_name(
    prefixed: Process, rest: httpx.AsyncClient, node_script: Path
) -> None:
    flow = definition(THINK, named("ask", "PROMPT", prompt="Publish {{title}}?"), WRITER)
    execution_id = await start(rest, flow, {"title": "Spring"})
    await wait_node(rest, execution_id, "ask", "WAITING_INPUT", timeout=30)
    async with run_view(node_script, base_url(prefixed), execution_id) as view:
        # The run waits for a person: the view has joined mid-way whatever the machine's speed.
        waiting = await view.wait_for(
            lambda name, p: name == "node:update" and p["nodeId"] == "ask"
        )
        response = await rest.post(
            f"/workflows/executions/{execution_id}/nodes/ask/resume", json={"input": "yes"}
        )
        assert response.status_code == 200, response.text
    assert view.process.returncode == 0, view.printed()
    done = await get_execution(rest, execution_id)
    assert done["status"] == "COMPLETED"
    expected = {"prompt": "Publish Spring?", "response": "yes"}
    assert done["output"] == expected

    events = view.events
    names = [name for name, _ in events]
    assert names.count("joined") == names.count("subscribed") == names.count("left") == 1
    assert view.named("joined")[0]["executionId"] == execution_id
    assert names[-1] == "left"
    execution_events = [
        (name, p) for name, p in events if name in ("execution:update", "node:update")
    ]
    snapshot_name, snapshot = execution_events[0]
    assert snapshot_name == "execution:update"
    assert snapshot["status"] == "RUNNING"
    assert (snapshot["currentNodeId"], snapshot["currentNodeName"]) == ("ask", "Ask the editor")
    # One snapshot, not two: nothing else at its seq but the replay, each started node once.
    at_snapshot = [(name, p) for name, p in execution_events if p["seq"] == snapshot["seq"]]
    replay = [(p["nodeId"], p["status"]) for _, p in at_snapshot[1:]]
    assert [name for name, _ in at_snapshot] == ["execution:update"] + ["node:update"] * 3
    assert replay == [("start", "COMPLETED"), ("think", "COMPLETED"), ("ask", "WAITING_INPUT")]
    assert execution_events[: len(at_snapshot)] == at_snapshot
    assert waiting == at_snapshot[-1][1]
    assert waiting["data"]["prompt"] == "Publish Spring?"
    assert any(log_line(line, 'Ask the editor: asks "Publish Spring?"') for line in view.log_lines)

    live = execution_events[len(at_snapshot) :]
    seqs = [p["seq"] for _, p in live]
    assert seqs == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    statuses = [(p["nodeId"], p["status"]) for name, p in live if name == "node:update"]
    for step in [("ask", "COMPLETED"), ("writer", "RUNNING"), ("writer", "COMPLETED")]:
        assert step in statuses
    assert statuses[-2:] == [("end", "RUNNING"), ("end", "COMPLETED")]
    assert_named(view)

    last_name, last = execution_events[-1]
    assert last_name == "execution:update"
    assert last["status"] == "COMPLETED"
    assert last["output"] == expected
    assert last["error"] is None
    assert last["currentNodeName"] is None
    assert [p["status"] for p in view.named("execution:update")].count("COMPLETED") == 1
    assert any(log_line(line, "Execution COMPLETED") for line in view.log_lines)
    assert any(log_line(line, "Execution RUNNING at Ask the editor") for line in view.log_lines)


async def test_the_run_view_on_a_finished_run_gets_the_snapshot_and_every_node_then_ends(
    prefixed: Process, rest: httpx.AsyncClient, node_script: Path
) -> None:
    execution_id = await start(rest, definition(THINK, WRITER), {"title": "Autumn"})
    done = await wait_until(rest, execution_id, TERMINAL, timeout=60)
    assert done["status"] == "COMPLETED"
    async with run_view(node_script, base_url(prefixed), execution_id) as view:
        pass
    assert view.process.returncode == 0, view.printed()
    names = [name for name, _ in view.events]
    assert names == [
        "joined",
        "execution:update",
        *["node:update"] * 4,
        "subscribed",
        "left",
    ], view.printed()
    assert view.named("joined")[0]["executionId"] == execution_id
    (snapshot,) = view.named("execution:update")
    assert snapshot["status"] == "COMPLETED"
    assert snapshot["output"] == done["output"] == {"delayMs": 300, "title": "Autumn"}
    assert snapshot["seq"] == done["lastSeq"]
    replay = view.named("node:update")
    assert [(p["nodeId"], p["status"]) for p in replay] == [
        (node_id, "COMPLETED") for node_id in ("start", "think", "writer", "end")
    ]
    assert all(p["seq"] == snapshot["seq"] for p in replay)
    assert replay[2]["data"]["output"] == done["output"]
    assert_named(view)
    assert any(log_line(line, "Execution COMPLETED") for line in view.log_lines)


async def test_the_run_view_fails_on_a_refused_join_and_on_no_service(
    prefixed: Process, node_script: Path
) -> None:
    unknown = "3f0c0000-0000-4000-8000-000000000000"
    async with run_view(node_script, base_url(prefixed), unknown) as view:
        pass
    assert view.process.returncode == 6, view.printed()
    assert view.named("error")[0] == {
        "event": "join",
        "executionId": unknown,
        "error": f"Execution {unknown} not found",
    }
    async with run_view(node_script, f"http://127.0.0.1:{free_port()}", unknown) as view:
        pass
    assert view.process.returncode == 3, view.printed()
    assert "connect error" in "\n".join(view.errors)
