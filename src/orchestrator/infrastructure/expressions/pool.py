"""Expression work under bounds: inline when a static bound proves it cheap, else in a
worker process that is killed at the deadline.

The CEL package holds the GIL while it evaluates, so neither the event loop nor a thread can
stop a long evaluation; a process can be killed. Without comprehension macros (or `matches`)
a CEL expression has no loop, and this package (without the stdlib extension, which is not
loaded) has no function that makes a value larger than its operands (no repeat, range or
join), so its work is bounded by tokens² x data size: at or under INLINE_BUDGET it runs
inline, at no round-trip cost. The constant is measured by `bench/expressions.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import orjson

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.evaluation import Analysis, Job, run
from orchestrator.infrastructure.expressions.worker import (
    ERROR_ROOM,
    HEADER,
    out_of_memory,
    too_large,
)

log = logging.getLogger(__name__)

INLINE_BUDGET = 4096
"""tokens² x context bytes at or under which a job without loops runs inline.

The costliest work per unit is converting many tiny containers to CEL values and back
(`input` over `[[],[],...]`), about 0.5 µs a unit: the worst case at this budget takes about
2 ms; concatenating the largest strings allowed takes microseconds.
"""
STARTUP_TIMEOUT_S = 60.0
"""How long a worker may take to start; generous, since a busy machine is not the job's fault."""
_EXIT_GRACE_S = 5.0


class EvaluatorUnavailable(RuntimeError):
    """No worker can take the job: the evaluator is closed or a worker does not start.

    Not an ExpressionError: the expression is not at fault.
    """


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    async def read(self, limit: int) -> bytes:
        """One frame's payload; a frame longer than `limit` is a broken worker."""
        header = await self._stdout.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if length > limit:
            raise ConnectionError(f"an expression worker sent a frame of {length} bytes")
        return await self._stdout.readexactly(length)

    async def ask(self, frame: bytes, limit: int) -> bytes:
        """Send one job frame and read its answer."""
        self._stdin.write(HEADER.pack(len(frame)))
        self._stdin.write(frame)
        await self._stdin.drain()
        return await self.read(limit)


class BoundedEvaluator:
    """Evaluates jobs within EXPRESSION_TIMEOUT_MS, EXPRESSION_MEMORY_MB and a result size.

    At most `workers` jobs run in worker processes at once; the others wait their turn, and
    neither that wait nor a worker's start counts toward a job's timeout.
    """

    def __init__(
        self,
        *,
        timeout_ms: int,
        workers: int,
        memory_mb: int,
        max_result_bytes: int,
        inline_budget: int = INLINE_BUDGET,
    ) -> None:
        self._timeout_ms = timeout_ms
        self._memory_mb = memory_mb
        self._max_result_bytes = max_result_bytes
        self._inline_budget = inline_budget
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._warming: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def processes(self) -> tuple[asyncio.subprocess.Process, ...]:
        """The worker processes alive or starting now."""
        return tuple(worker.process for worker in self._live)

    async def start(self) -> None:
        """Start one worker in the background, so that the first job that needs one need not
        wait for it; returns at once."""
        if self._warming is None and not self._closed:
            self._warming = asyncio.create_task(self._prewarm(), name="expression-worker-start")

    async def evaluate(self, job: Job, analysis: Analysis) -> Any:
        """The job's result; ExpressionError when it fails or breaks a bound, and
        EvaluatorUnavailable when the evaluator is closed or no worker starts."""
        try:
            context = orjson.dumps(job.context)
        except orjson.JSONEncodeError as exc:
            raise ExpressionError(f"{job.what}: its data cannot be read as JSON: {exc}") from exc
        if not analysis.comprehensions and (
            analysis.tokens**2 * len(context) <= self._inline_budget
        ):
            return self._checked(job, run(job))
        async with self._slots:
            # Framed once a slot is free, so that a job waiting its turn holds one copy of
            # its data, not two.
            frame = orjson.dumps(
                {
                    "kind": job.kind,
                    "spec": job.spec,
                    "what": job.what,
                    "context": orjson.Fragment(context),
                }
            )
            worker = await self._take()
            answer = await self._ask(worker, job, frame)
        if "error" in answer:
            raise ExpressionError(answer["error"])
        return answer["ok"]

    async def close(self) -> None:
        """Kill every worker, busy or idle; a job still running fails. Idempotent."""
        self._closed = True
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.wait([self._warming])
        self._idle.clear()
        for worker in list(self._live):
            await self._discard(worker)

    def _checked(self, job: Job, value: Any) -> Any:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:
            raise ExpressionError(f"{job.what}: result cannot be stored as JSON: {exc}") from exc
        if size > self._max_result_bytes:
            raise ExpressionError(too_large(job.what, self._max_result_bytes))
        return value

    async def _ask(self, worker: _Worker, job: Job, frame: bytes) -> dict[str, Any]:
        """The worker's answer to the job; any failure kills the worker, which is never left
        half-read."""
        try:
            async with asyncio.timeout(self._timeout_ms / 1000):
                payload = await worker.ask(frame, self._max_result_bytes + ERROR_ROOM)
            answer: dict[str, Any] = orjson.loads(payload)
        except TimeoutError:
            await self._discard(worker)
            raise self._too_slow(job) from None
        except (asyncio.IncompleteReadError, OSError, orjson.JSONDecodeError) as exc:
            await self._discard(worker, exiting=isinstance(exc, asyncio.IncompleteReadError))
            raise self._stopped(job, worker.process.returncode) from None
        except BaseException:
            await self._discard(worker)
            raise
        if self._closed:
            await self._discard(worker)
        else:
            self._idle.append(worker)
        return answer

    def _too_slow(self, job: Job) -> ExpressionError:
        return ExpressionError(
            f"{job.what}: evaluation took longer than EXPRESSION_TIMEOUT_MS ({self._timeout_ms} ms)"
        )

    def _stopped(self, job: Job, returncode: int | None) -> Exception:
        """The error for a worker that stopped while it had the job."""
        if self._closed:
            return EvaluatorUnavailable("the expression evaluator is closed")
        if returncode == -signal.SIGXCPU:
            return self._too_slow(job)
        if returncode in (-signal.SIGABRT, -signal.SIGKILL):
            return ExpressionError(out_of_memory(job.what, self._memory_mb))
        return ExpressionError(
            f"{job.what}: evaluation stopped its worker (exit code {returncode}); "
            f"EXPRESSION_MEMORY_MB ({self._memory_mb} MB) may be too low"
        )

    async def _take(self) -> _Worker:
        """An idle worker, the one being started ahead of need, or a new one."""
        if not self._idle and self._warming is not None and not self._warming.done():
            await asyncio.wait([self._warming])
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            await self._discard(worker)
        return await self._spawn()

    async def _prewarm(self) -> None:
        try:
            worker = await self._spawn()
        except EvaluatorUnavailable as exc:
            log.warning("expression worker not started ahead of need: %s", exc)
            return
        self._idle.append(worker)

    async def _spawn(self) -> _Worker:
        """A new worker, once it has said it is ready."""
        if self._closed:
            raise EvaluatorUnavailable("the expression evaluator is closed")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orchestrator.infrastructure.expressions.worker",
                str(self._memory_mb),
                str(self._max_result_bytes),
                str(self._timeout_ms),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise EvaluatorUnavailable(f"an expression worker did not start: {exc}") from exc
        worker = _Worker(process)
        self._live.add(worker)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await worker.read(0)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            await self._discard(worker, exiting=isinstance(exc, asyncio.IncompleteReadError))
            raise EvaluatorUnavailable(
                f"an expression worker did not start (exit code {process.returncode})"
            ) from exc
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker, *, exiting: bool = False) -> None:
        """Kill the worker (if it still runs) and reap it.

        A worker that closed its stdout is exiting: it gets a moment to do so, since killing
        it would race its own exit, and its exit status tells why it stopped.
        """
        self._live.discard(worker)
        if exiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_GRACE_S):
                    await worker.process.wait()
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        await worker.process.wait()
