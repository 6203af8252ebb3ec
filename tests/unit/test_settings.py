"""Settings: the platform's URLs are accepted, and every bad value is reported on its own line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from orchestrator.settings import DEFAULT_SQLITE_URL, Settings, async_database_url, describe_errors


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/orch", "postgresql+asyncpg://u:p@db:5432/orch"),
        ("postgres://u@db/orch", "postgresql+asyncpg://u@db/orch"),
        ("postgresql://u:p@db:5432/orch?schema=public", "postgresql+asyncpg://u:p@db:5432/orch"),
        ("postgresql://u@db/orch?sslmode=require", "postgresql+asyncpg://u@db/orch?ssl=require"),
        ("sqlite:///./local.db", "sqlite+aiosqlite:///./local.db"),
        ("", DEFAULT_SQLITE_URL),
    ],
)
def test_database_urls_pick_the_async_driver(given: str, expected: str) -> None:
    assert async_database_url(given) == expected


def test_an_unknown_database_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql:// or sqlite://"):
        async_database_url("mysql://u@db/orch")


def test_defaults_need_nothing_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=None)
    assert settings.port == 3001
    assert settings.database_url == DEFAULT_SQLITE_URL
    assert settings.agent_service_url == "http://localhost:3002/api"
    assert settings.execution_timeout_s == 300.0


def test_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGIN", "https://a.example, http://b.example")
    assert Settings(_env_file=None).cors_origin == [
        "https://a.example",
        "http://b.example",
    ]


@pytest.mark.parametrize(("given", "expected"), [("", ""), ("/api", "/api"), (" /v1/x ", "/v1/x")])
def test_the_api_prefix_is_empty_or_a_path(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("API_PREFIX", given)
    assert Settings(_env_file=None).api_prefix == expected


@pytest.mark.parametrize("given", ["api", "/api/", "/"])
def test_a_malformed_api_prefix_is_refused(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("API_PREFIX", given)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert describe_errors(caught.value)[0].startswith("API_PREFIX: Value error, must start with /")


def test_every_bad_value_gets_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("EXECUTION_TIMEOUT", "-5")
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    monkeypatch.setenv("LEASE_SECONDS", "5")
    monkeypatch.setenv("HEARTBEAT_SECONDS", "9")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    lines = describe_errors(caught.value)
    assert [line.split(":")[0] for line in lines] == [
        "PORT",
        "EXECUTION_TIMEOUT",
        "LOG_LEVEL",
        "HEARTBEAT_SECONDS",
    ]
    assert "'abc'" in lines[0]


def test_the_command_stops_with_those_lines_and_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "migrate"],
        env={"PORT": "70000", "DATABASE_URL": "mysql://x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "invalid setting: PORT: Input should be less than or equal to 65535 (got '70000')",
        "invalid setting: DATABASE_URL: Value error, must be a postgresql:// or sqlite:// URL, "
        "e.g. postgresql://user:pass@host:5432/db (got 'mysql://x')",
    ]
