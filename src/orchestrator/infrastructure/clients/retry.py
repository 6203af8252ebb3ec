"""Retries of agent and tool calls, on tenacity."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random,
)

from orchestrator.application.ports import AttemptHook, FailureHook, InvocationError
from orchestrator.domain.errors import ConcurrentChange
from orchestrator.domain.retry import RetryPolicy
from orchestrator.infrastructure.logs import bind

T = TypeVar("T")
CONFLICT_ATTEMPTS = 10


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, InvocationError) and error.retryable


def _failed_error(state: RetryCallState) -> InvocationError:
    # Only reached after `_is_retryable` accepted the outcome, so it is an InvocationError.
    error = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(error, InvocationError)
    return error


class TenacityRetrier:
    """Runs a call under a RetryPolicy, retrying only retryable InvocationErrors."""

    def __init__(
        self,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._sleep = sleep
        self._rand = rand

    async def run(
        self,
        call: Callable[[], Awaitable[Any]],
        policy: RetryPolicy,
        first_attempt: int,
        on_attempt: AttemptHook,
        on_failure: FailureHook,
    ) -> Any:
        """Attempt `call`, numbering from `first_attempt`, until it succeeds or attempts run out."""

        def number(state: RetryCallState) -> int:
            return first_attempt + state.attempt_number - 1

        async def before(state: RetryCallState) -> None:
            # The attempt on this node's log lines (and its call's span) from here on.
            bind(attempt=number(state))
            await on_attempt(number(state))

        async def before_sleep(state: RetryCallState) -> None:
            await on_failure(number(state), _failed_error(state), state.upcoming_sleep)

        def wait(state: RetryCallState) -> float:
            return policy.delay_ms(number(state), self._rand()) / 1000

        # A resumed node whose attempts are used up still gets the attempt it was resumed for.
        remaining = max(1, policy.max_attempts - first_attempt + 1)
        if remaining == 1:
            # Nothing to retry (most nodes): spare building a retry controller for each call.
            await on_attempt(first_attempt)
            return await call()
        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(remaining),
            wait=wait,
            retry=retry_if_exception(_is_retryable),
            before=before,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(call)


async def retry_conflicts(operation: Callable[[], Awaitable[T]]) -> T:
    """Run `operation` again while another writer got in between (ConcurrentChange)."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(CONFLICT_ATTEMPTS),
        wait=wait_random(0.005, 0.05),
        retry=retry_if_exception_type(ConcurrentChange),
        reraise=True,
    )
    result: T = await retrying(operation)
    return result
