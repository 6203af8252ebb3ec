"""Retry policy of a node: how many attempts, and how long to wait between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.domain.errors import Problem

_FIELDS = {"maxAttempts", "initialDelayMs", "multiplier", "maxDelayMs", "jitter"}
MAX_ATTEMPTS_LIMIT = 50


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts every attempt, the first included."""

    max_attempts: int = 1
    initial_delay_ms: float = 1000.0
    multiplier: float = 2.0
    max_delay_ms: float = 30_000.0
    jitter: float = 0.5

    @classmethod
    def from_config(cls, raw: Any, default_retries: int) -> RetryPolicy:
        """Build from `config.retry`: absent/false (one attempt), true (defaults) or an object."""
        if raw is None or raw is False:
            return cls(max_attempts=1)
        if raw is True:
            return cls(max_attempts=default_retries + 1)
        assert isinstance(raw, dict)
        jitter = raw.get("jitter", True)
        return cls(
            max_attempts=int(raw.get("maxAttempts", default_retries + 1)),
            initial_delay_ms=float(raw.get("initialDelayMs", cls.initial_delay_ms)),
            multiplier=float(raw.get("multiplier", cls.multiplier)),
            max_delay_ms=float(raw.get("maxDelayMs", cls.max_delay_ms)),
            jitter=0.5 if jitter is True else 0.0 if jitter is False else float(jitter),
        )

    def delay_ms(self, failed_attempt: int, rand: float) -> float:
        """Wait after attempt number `failed_attempt` (1-based) failed; `rand` is in [0, 1).

        Exponential backoff capped at `max_delay_ms`, then shortened by up to `jitter` of itself
        so that many retries do not arrive at the same moment.
        """
        base = self.initial_delay_ms * self.multiplier ** max(0, failed_attempt - 1)
        capped = min(base, self.max_delay_ms)
        return capped * (1.0 - self.jitter * rand)


def retry_problems(raw: Any, path: str) -> list[Problem]:
    """Problems with a `config.retry` value."""
    if raw is None or isinstance(raw, bool):
        return []
    if not isinstance(raw, dict):
        return [Problem(path, "must be true, false or an object")]
    problems = [
        Problem(f"{path}.{key}", "unknown retry field") for key in raw if key not in _FIELDS
    ]

    def number(key: str, low: float, high: float | None, integer: bool = False) -> None:
        if key not in raw:
            return
        value = raw[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and integer:
            ok = float(value).is_integer()
        if not ok or value < low or (high is not None and value > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            kind = "a whole number" if integer else "a number"
            problems.append(Problem(f"{path}.{key}", f"must be {kind} {bound}"))

    number("maxAttempts", 1, MAX_ATTEMPTS_LIMIT, integer=True)
    number("initialDelayMs", 0, 3_600_000)
    number("multiplier", 1, 10)
    number("maxDelayMs", 0, 3_600_000)
    if "jitter" in raw and not isinstance(raw["jitter"], bool):
        number("jitter", 0, 1)
    return problems
