"""RetryPolicy and the tenacity-backed retrier."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest

from orchestrator.application.ports import InvocationError
from orchestrator.domain.retry import RetryPolicy
from orchestrator.infrastructure.clients.retry import TenacityRetrier

NO_JITTER = RetryPolicy(max_attempts=4, initial_delay_ms=100, multiplier=2, jitter=0.0)


class Recorder:
    """Collects sleeps and hook calls, and plays a script of outcomes as the call."""

    def __init__(self, outcomes: Iterable[BaseException | str]) -> None:
        self._outcomes = list(outcomes)
        self.calls = 0
        self.sleeps: list[float] = []
        self.attempts: list[int] = []
        self.failures: list[tuple[int, InvocationError, float]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def call(self) -> str:
        outcome = self._outcomes[self.calls]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def on_attempt(self, number: int) -> None:
        self.attempts.append(number)

    async def on_failure(self, number: int, error: InvocationError, delay_s: float) -> None:
        self.failures.append((number, error, delay_s))

    async def run(
        self,
        policy: RetryPolicy,
        first_attempt: int = 1,
        rand: Callable[[], float] = lambda: 0.0,
    ) -> object:
        retrier = TenacityRetrier(sleep=self.sleep, rand=rand)
        return await retrier.run(self.call, policy, first_attempt, self.on_attempt, self.on_failure)


def retryable(message: str = "503") -> InvocationError:
    return InvocationError(message, retryable=True, status_code=503)


async def test_success_on_first_attempt_calls_no_failure_hook() -> None:
    rec = Recorder(["ok"])

    assert await rec.run(NO_JITTER) == "ok"
    assert rec.attempts == [1]
    assert rec.failures == []
    assert rec.sleeps == []


async def test_retryable_errors_are_retried_with_numbered_hooks() -> None:
    first, second = retryable("first"), retryable("second")
    rec = Recorder([first, second, "ok"])

    assert await rec.run(NO_JITTER) == "ok"
    assert rec.calls == 3
    assert rec.attempts == [1, 2, 3]
    assert rec.failures == [(1, first, 0.1), (2, second, 0.2)]
    assert rec.sleeps == [0.1, 0.2]


async def test_non_retryable_error_is_raised_at_once() -> None:
    error = InvocationError("400", retryable=False, status_code=400)
    rec = Recorder([error, "ok"])

    with pytest.raises(InvocationError) as raised:
        await rec.run(NO_JITTER)
    assert raised.value is error
    assert rec.calls == 1
    assert rec.failures == []
    assert rec.sleeps == []


async def test_other_exceptions_are_not_retried() -> None:
    rec = Recorder([ValueError("bug"), "ok"])

    with pytest.raises(ValueError, match="bug"):
        await rec.run(NO_JITTER)
    assert rec.calls == 1
    assert rec.failures == []


async def test_exhaustion_raises_the_last_error() -> None:
    errors = [retryable(f"try {n}") for n in range(1, 5)]
    rec = Recorder(errors)

    with pytest.raises(InvocationError) as raised:
        await rec.run(NO_JITTER)
    assert raised.value is errors[-1]
    assert rec.attempts == [1, 2, 3, 4]
    assert [number for number, _, _ in rec.failures] == [1, 2, 3]
    assert rec.sleeps == [0.1, 0.2, 0.4]


async def test_single_attempt_policy_does_not_retry() -> None:
    error = retryable()
    rec = Recorder([error, "ok"])

    with pytest.raises(InvocationError) as raised:
        await rec.run(RetryPolicy(max_attempts=1))
    assert raised.value is error
    assert rec.attempts == [1]
    assert rec.failures == []


async def test_resumed_run_continues_numbering_and_backoff() -> None:
    errors = [retryable("3"), retryable("4")]
    rec = Recorder([*errors, "unused"])

    with pytest.raises(InvocationError) as raised:
        await rec.run(NO_JITTER, first_attempt=3)
    assert raised.value is errors[-1]
    assert rec.attempts == [3, 4]
    assert rec.failures == [(3, errors[0], 0.4)]
    assert rec.sleeps == [0.4]


async def test_resumed_run_past_the_limit_still_makes_one_attempt() -> None:
    error = retryable()
    rec = Recorder([error, "unused"])

    with pytest.raises(InvocationError) as raised:
        await rec.run(NO_JITTER, first_attempt=7)
    assert raised.value is error
    assert rec.attempts == [7]
    assert rec.failures == []


async def test_delays_are_capped() -> None:
    policy = RetryPolicy(
        max_attempts=5, initial_delay_ms=100, multiplier=3, max_delay_ms=500, jitter=0.0
    )
    rec = Recorder([retryable()] * 4 + ["ok"])

    assert await rec.run(policy) == "ok"
    assert rec.sleeps == [0.1, 0.3, 0.5, 0.5]


async def test_jitter_shortens_delays_by_at_most_its_share() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_ms=1000, multiplier=2, jitter=0.5)
    draws = iter([0.0, 0.999])
    rec = Recorder([retryable(), retryable(), "ok"])

    assert await rec.run(policy, rand=lambda: next(draws)) == "ok"
    assert rec.sleeps[0] == 1.0
    assert rec.sleeps[1] == pytest.approx(2.0 * (1 - 0.5 * 0.999))
    assert [delay for _, _, delay in rec.failures] == rec.sleeps


async def test_default_sleep_and_random_work() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_ms=1, jitter=0.5)
    rec = Recorder([retryable(), "ok"])
    retrier = TenacityRetrier()

    assert await retrier.run(rec.call, policy, 1, rec.on_attempt, rec.on_failure) == "ok"
    assert rec.attempts == [1, 2]
    assert 0.0005 <= rec.failures[0][2] <= 0.001


async def test_cancellation_during_the_call_propagates_without_retry() -> None:
    rec = Recorder([asyncio.CancelledError(), "ok"])

    with pytest.raises(asyncio.CancelledError):
        await rec.run(NO_JITTER)
    assert rec.calls == 1
    assert rec.failures == []
    assert rec.sleeps == []


async def test_cancellation_during_backoff_propagates() -> None:
    sleeping = asyncio.Event()
    rec = Recorder([retryable(), "ok"])

    async def sleep_forever(seconds: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()

    retrier = TenacityRetrier(sleep=sleep_forever, rand=lambda: 0.0)
    task = asyncio.create_task(retrier.run(rec.call, NO_JITTER, 1, rec.on_attempt, rec.on_failure))
    await asyncio.wait_for(sleeping.wait(), timeout=10)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.calls == 1
    assert rec.attempts == [1]


def test_policy_from_absent_or_false_config_is_one_attempt() -> None:
    assert RetryPolicy.from_config(None, default_retries=3).max_attempts == 1
    assert RetryPolicy.from_config(False, default_retries=3).max_attempts == 1


def test_policy_from_true_uses_default_retries() -> None:
    policy = RetryPolicy.from_config(True, default_retries=3)

    assert policy == RetryPolicy(max_attempts=4)


def test_policy_from_object_keeps_given_fields_and_defaults_the_rest() -> None:
    policy = RetryPolicy.from_config(
        {"maxAttempts": 5, "initialDelayMs": 250, "jitter": False}, default_retries=3
    )

    assert policy == RetryPolicy(
        max_attempts=5, initial_delay_ms=250.0, multiplier=2.0, max_delay_ms=30_000.0, jitter=0.0
    )


@pytest.mark.parametrize(("raw", "expected"), [(True, 0.5), (False, 0.0), (0.2, 0.2)])
def test_policy_jitter_forms(raw: object, expected: float) -> None:
    assert RetryPolicy.from_config({"jitter": raw}, default_retries=2).jitter == expected


def test_policy_object_without_max_attempts_uses_default_retries() -> None:
    assert RetryPolicy.from_config({"multiplier": 3}, default_retries=2).max_attempts == 3


def test_delay_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_delay_ms=100, multiplier=2, max_delay_ms=350, jitter=0.0)

    assert [policy.delay_ms(n, 0.5) for n in range(1, 5)] == [100, 200, 350, 350]


def test_delay_jitter_bounds() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, multiplier=2, max_delay_ms=30_000, jitter=0.25)

    assert policy.delay_ms(2, 0.0) == 2000
    assert policy.delay_ms(2, 0.5) == 1750
    assert 1500 < policy.delay_ms(2, 0.9999) < 1501
