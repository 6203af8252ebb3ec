"""Settings from the environment and a `.env` file, validated once at start."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./orchestrator.db"
# Never "none": an unsigned token is no token.
JWT_ALGORITHMS = frozenset({"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"})


class Settings(BaseSettings):
    """Every setting of the service; names are the environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    port: int = Field(3001, ge=1, le=65535)
    host: str = "0.0.0.0"
    database_url: str = DEFAULT_SQLITE_URL
    agent_service_url: str = "http://localhost:3002/api"
    tool_service_url: str = "http://localhost:3003"
    max_retry_attempts: int = Field(3, ge=0, le=49)
    execution_timeout: int = Field(300_000, gt=0, description="ms")
    cors_origin: Annotated[list[str], NoDecode] = ["*"]
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text", "auto"] = "auto"
    max_body_bytes: int = Field(1_048_576, gt=0)
    redis_url: str | None = None
    redis_channel: str = Field("orchestrator", min_length=1, max_length=200)
    auto_migrate: bool = True
    runner_enabled: bool = True
    max_concurrent_executions: int = Field(200, gt=0)
    lease_seconds: float = Field(15.0, gt=0)
    heartbeat_seconds: float = Field(3.0, gt=0)
    poll_interval_ms: int = Field(500, gt=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    max_recoveries: int = Field(5, ge=0)
    db_pool_size: int = Field(20, gt=0)
    http_max_connections: int = Field(200, gt=0)
    max_subscriptions_per_client: int = Field(200, gt=0)
    # Fair use, per user (0: no limit): starts per minute, executions PENDING or RUNNING at
    # once, Socket.IO subscriptions over all their connections.
    user_executions_per_minute: int = Field(120, ge=0)
    user_running_executions: int = Field(100, ge=0)
    user_subscriptions: int = Field(500, ge=0)
    expression_timeout_ms: int = Field(1000, gt=0, le=600_000)
    expression_workers: int = Field(2, ge=1, le=64)
    expression_memory_mb: int = Field(512, ge=64, le=65_536)
    max_value_depth: int = Field(64, ge=2, le=200)
    max_node_output_bytes: int = Field(1_048_576, ge=1024)
    max_execution_state_bytes: int = Field(16_777_216, ge=1024)
    keep_alive_seconds: int = Field(75, ge=1, le=3600)
    api_prefix: str = Field("", max_length=200)
    max_subworkflow_depth: int = Field(10, ge=1, le=100)
    # Authentication: none (open), gateway (the platform gateway names the user), jwt.
    auth_mode: Literal["none", "gateway", "jwt"] = "none"
    gateway_shared_secret: SecretStr | None = None
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwks_url: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256", "RS256", "ES256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_claim: str = Field("sub", min_length=1, max_length=100)
    jwt_leeway_seconds: int = Field(30, ge=0, le=600)
    # A user whose token holds ADMIN_CLAIM with ADMIN_VALUE (or a list holding it) reads all.
    admin_claim: str | None = None
    admin_value: str = "admin"
    # Schedules: how often each runner process looks for due ticks, and how many missed
    # ticks a schedule with catchUp "all" starts at most after an outage.
    schedule_poll_ms: int = Field(1000, ge=50, le=60_000)
    schedule_catch_up_max: int = Field(100, ge=1, le=10_000)
    # Retention: finished executions older than this many days are deleted (0: kept forever);
    # their stored events are compacted after EVENT_RETENTION_HOURS (0: never).
    execution_retention_days: int = Field(30, ge=0, le=36_500)
    event_retention_hours: int = Field(0, ge=0, le=876_000)
    retention_interval_seconds: float = Field(300.0, gt=0, le=86_400)
    retention_batch_size: int = Field(500, ge=1, le=10_000)
    # Agent progress: POST /internal/* need `Authorization: Bearer <INTERNAL_TOKEN>` when set;
    # reports of one execution are stored together at most every PROGRESS_FLUSH_MS.
    internal_token: SecretStr | None = None
    progress_flush_ms: int = Field(100, ge=10, le=5000)
    # Prices for budgets in USD per million tokens, as JSON:
    # {"gpt-4o": {"input": 2.5, "output": 10}, ...}; a model not listed costs nothing.
    model_prices: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("cors_origin", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "gateway_shared_secret",
        "jwt_secret",
        "jwt_public_key",
        "jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "admin_claim",
        "internal_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - JWT_ALGORITHMS)
        if unknown or not value:
            raise ValueError(f"must be some of {', '.join(sorted(JWT_ALGORITHMS))}")
        return value

    @model_validator(mode="after")
    def _jwt_keys(self) -> Settings:
        if self.auth_mode == "jwt" and not (
            self.jwt_secret or self.jwt_public_key or self.jwks_url
        ):
            raise ValueError(
                "AUTH_MODE=jwt needs JWT_SECRET (HS256), JWT_PUBLIC_KEY or JWKS_URL (RS256/ES256)"
            )
        return self

    @field_validator("model_prices")
    @classmethod
    def _prices_shape(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for model, price in value.items():
            unknown = set(price) - {"input", "output"}
            if unknown or any(p < 0 for p in price.values()):
                raise ValueError(
                    f"{model}: each model needs {{input, output}} USD per million tokens, >= 0"
                )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return async_database_url(value)

    @field_validator("api_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.strip()
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValueError("must start with / and not end with /, e.g. /api")
        return value

    @field_validator("heartbeat_seconds")
    @classmethod
    def _heartbeat_within_lease(cls, value: float, info: object) -> float:
        lease = getattr(info, "data", {}).get("lease_seconds")
        if lease is not None and value >= lease:
            raise ValueError("must be shorter than LEASE_SECONDS")
        return value

    @property
    def execution_timeout_s(self) -> float:
        """EXECUTION_TIMEOUT in seconds."""
        return self.execution_timeout / 1000


def async_database_url(url: str) -> str:
    """Accept the platform's `postgresql://` URLs (even Prisma's `?schema=`); pick the driver."""
    url = url.strip()
    if not url:
        return DEFAULT_SQLITE_URL
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        query = []
        for key, val in parse_qsl(parts.query):
            if key == "schema":
                continue  # Prisma's option; asyncpg does not take it
            query.append(("ssl" if key == "sslmode" else key, val))
        return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return "sqlite+aiosqlite:" + url.split(":", 1)[1]
    if scheme == "file":
        return "sqlite+aiosqlite:///" + parts.path.lstrip("/")
    raise ValueError(
        "must be a postgresql:// or sqlite:// URL, e.g. postgresql://user:pass@host:5432/db"
    )


def describe_errors(error: ValidationError) -> list[str]:
    """One clear line per bad setting."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        got = item.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        lines.append(f"{name}: {item['msg']}{shown}")
    return lines
