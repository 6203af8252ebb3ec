"""The README's `## Walkthrough`, run as written against the service on loopback.

The README talks to localhost:3001 (the service) and localhost:3002 (the stand-ins); the test
puts its own service's and the session stand-ins' addresses there, runs the bash blocks in one
bash process (tests/readme_blocks.py builds the script, `watch.py` included) and checks what
each step printed. The JavaScript snippet is checked to parse, with `node --check`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import base_url, running, service_process
from tests.readme_blocks import Block, readme_script, split_output

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SCRIPT_TIMEOUT_S = 45.0
VENV_BIN = str(Path(sys.executable).parent)


def _host_port(url: str) -> str:
    return url.removeprefix("http://").removeprefix("https://").rstrip("/")


def _step(outputs: dict[str, str], number: int) -> str:
    """What the bash block under the heading `### {number}. ...` printed."""
    found = [text for heading, text in outputs.items() if heading.startswith(f"{number}. ")]
    assert len(found) == 1, f"no single output for step {number}: {list(outputs)}"
    return found[0]


def _run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def test_the_setup_is_the_one_the_test_reproduces() -> None:
    # The test starts the service itself (service_process points it at the stand-ins, the
    # agent-service under /api): the README's setup says the same for a user.
    _, steps = readme_script()
    setup = "\n".join(b.code for b in steps if b.lang == "sh")
    assert "AGENT_SERVICE_URL=http://localhost:3002/api" in setup
    assert "TOOL_SERVICE_URL=http://localhost:3002 make run" in setup
    assert "-m orchestrator.standins --port 3002" in setup
    assert [b.lang for b in steps].count("bash") >= 6
    assert [b.file_name for b in steps if b.lang == "python"] == ["watch.py"]
    assert 'python3 watch.py "$EXECUTION"' in "".join(b.code for b in steps if b.lang == "bash")


@pytest.mark.timeout(60)
async def test_the_walkthrough_runs_as_written(pg_url: str, standin: str, tmp_path: Path) -> None:
    with running(service_process(pg_url, standin)) as service:
        script, _ = readme_script(
            {"localhost:3001": _host_port(base_url(service)), "localhost:3002": _host_port(standin)}
        )
        result = await asyncio.to_thread(_run_bash, script, tmp_path)
    report = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    outputs = split_output(result.stdout)

    created = _step(outputs, 1)
    assert re.fullmatch(rf"workflow {UUID}\nDRAFT\n", created), report

    assert _step(outputs, 2) == "ACTIVE\n", report

    watched = _step(outputs, 4).splitlines()
    assert re.fullmatch(rf"execution {UUID}", watched[0]), report
    assert re.fullmatch(r"execution:update \d+ COMPLETED", watched[-2]), report
    assert watched[-1] == '{"answer": "hello", "waitedMs": 3000}', report
    events = [line.split() for line in watched[1:-1]]
    seqs = [int(event[1]) for event in events]
    # From the snapshot sent on subscribe to the end, none missed. (An event committed while
    # the subscription is made may come next to the snapshot, in either order, and with its
    # seq: the watcher prints what it is sent.)
    assert set(seqs) == set(range(min(seqs), max(seqs) + 1)), report
    assert seqs[-1] == max(seqs), report
    assert ["node:update", "end", "COMPLETED"] in [[e[0], *e[2:]] for e in events], report

    assert _step(outputs, 5) == "204\nCANCELLED\n409\n", report

    table = [line.split() for line in _step(outputs, 6).splitlines()]
    assert [int(row[0]) for row in table] == list(range(1, len(table) + 1)), report
    assert table[0] == ["1", "execution:update", "-", "RUNNING"], report
    assert table[-1][1:] == ["execution:update", "-", "COMPLETED"], report
    assert table[-1][0] == str(seqs[-1]), report  # the watcher saw the last event
    node_rows = {(row[2], row[3]) for row in table if row[1] == "node:update"}
    for node_id in ("start", "think", "reply", "end"):
        assert {(node_id, "RUNNING"), (node_id, "COMPLETED")} <= node_rows, report


def test_the_javascript_snippet_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript snippet was not checked")
    _, steps = readme_script()
    snippets: list[Block] = [b for b in steps if b.lang == "js"]
    assert len(snippets) == 1
    snippet = snippets[0].code
    assert 'io("http://localhost:3001/workflows")' in snippet
    assert 'socket.emit("subscribe", { executionId }' in snippet
    for event in ("execution:update", "node:update", "execution:error"):
        assert f'socket.on("{event}"' in snippet
    # An ES module: --check parses it without resolving the socket.io-client import.
    path = tmp_path / "watch.mjs"
    path.write_text(snippet, encoding="utf-8")
    checked = subprocess.run(
        [node, "--check", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr
