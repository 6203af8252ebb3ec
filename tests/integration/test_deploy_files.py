"""The deployment files agree with the settings and run the image as intended (no Docker engine)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {name.upper() for name in Settings.model_fields}
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
RUNS_THE_SERVICE = ("orchestration-service", "worker")


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as data: with PyYAML, else with Docker Compose v2, else skip."""
    path = ROOT / "docker-compose.yml"
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        for cmd in (["docker", "compose"], ["docker-compose"]):
            if shutil.which(cmd[0]) is None:
                continue
            args = [*cmd, "-f", str(path), "--profile", "workers", "config", "--format", "json"]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode == 0:
                return dict(json.loads(done.stdout))
        pytest.skip("neither PyYAML nor Docker Compose v2 is here to read docker-compose.yml")
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> set[str]:
    """Names a compose service sets in `environment` (mapping or list form)."""
    env = service.get("environment") or {}
    return set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}


def seconds(duration: str) -> float:
    """A compose duration such as `35s` or `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts, duration
    return sum(float(value) * units[unit] for value, unit in parts)


def test_compose_services_are_wired_to_each_other() -> None:
    services = load_compose()["services"]
    expected = {"postgres", "redis", "orchestration-service", "agent-service", "tool-service"}
    assert expected | {"worker"} <= set(services)
    assert services["worker"]["profiles"] == ["workers"]
    api = services["orchestration-service"]
    assert "container_name" not in api
    for port in api["ports"]:
        if isinstance(port, dict):
            published = str(port.get("published") or "")
        else:
            published = str(port).rsplit(":", 1)[0] if ":" in str(port) else ""
        assert not published or "-" in published, f"a fixed host port stops --scale: {port}"
    for name in ("postgres", "redis"):
        assert api["depends_on"][name]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    for name in ("agent-service", "tool-service"):
        assert "healthcheck" in services[name]
        assert services[name]["command"][:3] == ["python", "-m", "orchestrator.standins"]


@pytest.mark.parametrize("name", RUNS_THE_SERVICE)
def test_compose_environment_holds_only_real_settings(name: str) -> None:
    service = load_compose()["services"][name]
    names = environment(service)
    assert names <= SETTINGS, f"not settings: {sorted(names - SETTINGS)}"
    assert {"DATABASE_URL", "REDIS_URL", "AGENT_SERVICE_URL", "TOOL_SERVICE_URL"} <= names
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert seconds(service["stop_grace_period"]) > grace + 5  # uvicorn's own 5 s on top


def test_env_example_documents_every_setting_once() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    names = [m.group(1) for m in map(ENV_LINE.match, lines) if m]
    assert sorted(names) == sorted(set(names)), "a setting is listed twice"
    assert set(names) - SETTINGS == set(), "not settings"
    assert SETTINGS - set(names) == set(), "settings missing from .env.example"
    for index, line in enumerate(lines):
        if ENV_LINE.match(line):
            above = lines[index - 1]
            assert above.startswith("#"), f"no comment above {line}"
            assert not ENV_LINE.match(above), f"no comment of its own above {line}"


def test_env_example_values_are_the_defaults() -> None:
    assert Settings(_env_file=ROOT / ".env.example") == Settings(_env_file=None)


def final_stage() -> list[str]:
    """The Dockerfile's last stage, one instruction a line (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = re.split(r"(?m)^FROM\s", text)[-1]
    return [line.strip() for line in stage.splitlines() if line.strip()[:1] not in ("", "#")]


def test_dockerfile_runs_the_service_as_a_user_with_a_healthcheck() -> None:
    lines = final_stage()
    assert lines[0].startswith("python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert len(healthchecks) == 1, "one HEALTHCHECK in the final stage"
    health = healthchecks[0]
    assert "/health" in health
    assert "PORT" in health
    assert "curl" not in health
    assert "EXPOSE 3001" in lines
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert json.loads(cmd.removeprefix("CMD ")) == ["orchestrator", "serve"]
    assert not any(tool in " ".join(lines) for tool in ("apt-get", "gcc", "build-essential"))
    assert "pip wheel --no-deps" in (ROOT / "Dockerfile").read_text()
