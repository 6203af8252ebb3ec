"""The bounded evaluator: cheap work inline, the rest in worker processes that are killed at
the deadline, that die when out of memory and refuse results over the size bound, while the
event loop keeps running. A worker takes about 0.2 s to start, so few are started here.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.evaluation import Analysis, Job, JobKind, analyze
from orchestrator.infrastructure.expressions.pool import (
    INLINE_BUDGET,
    BoundedEvaluator,
    EvaluatorUnavailable,
)
from orchestrator.infrastructure.expressions.worker import HEADER

MB = 1 << 20
WHAT = "node 'check' expression"
# 25 million iterations for 5,000 items: seconds of work, which only a kill stops.
QUADRATIC = "input.exists(a, input.exists(b, a + b < 0))"
LARGE_LIST = {"input": list(range(5000))}
HIDDEN_NESTING = (
    'input.exists(a, ")" == ")" && input.exists(b, ")" == ")" && '
    'input.exists(c, ")" == ")" && input.exists(d, a+b+c+d < 0))))'
)


def work(spec: Any, context: dict[str, Any], kind: JobKind = "expression") -> tuple[Job, Analysis]:
    """A job and its analysis, as the engine hands them over."""
    return Job(kind, spec, context, WHAT), analyze(kind, spec)


def evaluator(**overrides: int) -> BoundedEvaluator:
    """An evaluator with test bounds; `overrides` replace them."""
    bounds = {"timeout_ms": 10_000, "workers": 2, "memory_mb": 128, "max_result_bytes": MB}
    return BoundedEvaluator(**(bounds | overrides))


@pytest.fixture(scope="module")
async def limits() -> AsyncIterator[BoundedEvaluator]:
    """One evaluator for the tests of memory and size, whose workers outlive each test."""
    pool = evaluator()
    await pool.start()
    yield pool
    await pool.close()


def test_four_hidden_levels_do_not_even_compile() -> None:
    with pytest.raises(ExpressionError, match="nests comprehensions deeper than 2"):
        analyze("condition", HIDDEN_NESTING)


async def test_cheap_work_runs_inline_without_a_worker() -> None:
    pool = evaluator()
    assert await pool.evaluate(*work("input.n > 1", {"input": {"n": 2}}, "condition")) is True
    assert await pool.evaluate(
        *work({"x": "$variables.x"}, {"variables": {"x": 1}}, "resolve")
    ) == {"x": 1}
    assert pool.processes == ()
    await pool.close()


async def test_an_inline_result_is_checked_against_the_size_bound() -> None:
    pool = evaluator(max_result_bytes=1024, inline_budget=10**9)
    job = work("input + input + input", {"input": "x" * 400})
    with pytest.raises(ExpressionError) as caught:
        await pool.evaluate(*job)
    assert caught.value.message == (
        f"{WHAT}: result is larger than MAX_NODE_OUTPUT_BYTES (1024 bytes)"
    )
    assert pool.processes == ()
    await pool.close()


def at_budget(element: Any) -> dict[str, Any]:
    """The largest context `{"input": [element, ...]}` that `input` may read inline."""
    step = len(orjson.dumps(element)) + 1
    count = (INLINE_BUDGET - len(orjson.dumps({"input": []})) + 1) // step
    return {"input": [element] * count}


@pytest.mark.parametrize(
    ("spec", "context"),
    [
        # One token over the most containers a budget buys: the costliest work per unit
        # (bench/expressions.py measures it precisely).
        pytest.param("input", at_budget([]), id="empty-lists"),
        pytest.param("input", at_budget([[]]), id="nested-lists"),
        pytest.param("input", at_budget({}), id="empty-maps"),
        pytest.param("input", at_budget([1]), id="lists-of-ints"),
        pytest.param(
            " + ".join(["input"] * 4), {"input": "x" * (INLINE_BUDGET // 49 - 12)}, id="concat"
        ),
    ],
)
async def test_the_worst_inline_work_at_the_budget_is_fast(
    spec: str, context: dict[str, Any]
) -> None:
    job, analysis = work(spec, context)
    assert not analysis.comprehensions
    units = analysis.tokens**2 * len(orjson.dumps(context))
    assert INLINE_BUDGET * 0.9 < units <= INLINE_BUDGET
    pool = evaluator()
    started = time.perf_counter()
    await pool.evaluate(job, analysis)
    assert time.perf_counter() - started < 0.5
    assert pool.processes == ()
    await pool.close()


async def test_a_quadratic_loop_is_stopped_at_the_timeout_while_the_event_loop_ticks() -> None:
    pool = evaluator(timeout_ms=300, workers=1)
    await pool.start()
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    try:
        started = loop.time()
        with pytest.raises(ExpressionError) as caught:
            await pool.evaluate(*work(QUADRATIC, LARGE_LIST))
        elapsed = loop.time() - started
        done.set()
        await ticker
        assert caught.value.message == (
            f"{WHAT}: evaluation took longer than EXPRESSION_TIMEOUT_MS (300 ms)"
        )
        assert 0.3 <= elapsed < 10
        assert max(gaps) < 0.2
        # The killed worker is replaced for the next job.
        assert await pool.evaluate(*work("input.map(x, x + 1)", {"input": [1]})) == [2]
    finally:
        done.set()
        await pool.close()


async def test_a_map_of_maps_blow_up_fails_on_a_bound(limits: BoundedEvaluator) -> None:
    # About 10 KB in, about 36 MB out.
    context = {"input": {"l": list(range(60)), "s": "x" * 10_000}}
    with pytest.raises(ExpressionError) as caught:
        await limits.evaluate(*work("input.l.map(a, input.l.map(b, input.s))", context))
    message = caught.value.message
    assert message.startswith(f"{WHAT}: ")
    assert "MAX_NODE_OUTPUT_BYTES" in message or "EXPRESSION_MEMORY_MB" in message


async def test_a_result_over_the_size_bound_is_refused_by_the_worker(
    limits: BoundedEvaluator,
) -> None:
    # 1.6 MB of result: within memory, over MAX_NODE_OUTPUT_BYTES.
    context = {"input": {"l": list(range(40)), "s": "x" * 1000}}
    with pytest.raises(ExpressionError) as caught:
        await limits.evaluate(*work("input.l.map(a, input.l.map(b, input.s))", context))
    assert caught.value.message == (
        f"{WHAT}: result is larger than MAX_NODE_OUTPUT_BYTES ({MB} bytes)"
    )


async def test_a_job_out_of_memory_is_reported_and_the_pool_goes_on(
    limits: BoundedEvaluator,
) -> None:
    # 400 copies of 512 KB: 200 MB, over the 128 MB a worker may take.
    spec = "[" + ", ".join(["input.s"] * 400) + "]"
    with pytest.raises(ExpressionError) as caught:
        await limits.evaluate(*work(spec, {"input": {"s": "x" * (512 * 1024)}}))
    assert caught.value.message == (
        f"{WHAT}: evaluation needed more memory than EXPRESSION_MEMORY_MB (128 MB)"
    )
    assert await limits.evaluate(*work("input.filter(x, x > 1)", {"input": [1, 2]})) == [2]


async def test_jobs_beyond_the_workers_wait_their_turn(limits: BoundedEvaluator) -> None:
    jobs = [work("input.map(x, x * 2)", {"input": [n]}) for n in range(8)]
    results = await asyncio.gather(*(limits.evaluate(*job) for job in jobs))
    assert results == [[2 * n] for n in range(8)]
    assert 1 <= len(limits.processes) <= 2


async def test_close_kills_every_worker_and_fails_the_job_it_interrupts() -> None:
    pool = evaluator(timeout_ms=30_000)
    await pool.start()
    assert await pool.evaluate(*work("input.map(x, x)", {"input": [1]})) == [1]
    processes = pool.processes
    busy = asyncio.create_task(pool.evaluate(*work(QUADRATIC, LARGE_LIST)))
    await asyncio.sleep(0)  # let the job start; it fails the same way at any point
    await pool.close()
    with pytest.raises(EvaluatorUnavailable):
        await busy
    assert processes
    assert all(process.returncode is not None for process in processes)
    assert pool.processes == ()
    await pool.close()
    with pytest.raises(EvaluatorUnavailable):
        await pool.evaluate(*work("input.map(x, x)", {"input": [1]}))
    assert await pool.evaluate(*work("input.n", {"input": {"n": 1}})) == 1


async def test_a_worker_whose_parent_cannot_kill_it_stops_on_its_cpu_limit() -> None:
    # A 1 ms timeout: the worker lets a job use about 2 s of CPU before the kernel stops it.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.infrastructure.expressions.worker",
        "256",
        str(MB),
        "1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert await process.stdout.readexactly(HEADER.size) == HEADER.pack(0)
        frame = orjson.dumps(
            {"kind": "expression", "spec": QUADRATIC, "what": WHAT, "context": LARGE_LIST}
        )
        process.stdin.write(HEADER.pack(len(frame)) + frame)
        await process.stdin.drain()
        async with asyncio.timeout(60):
            assert await process.stdout.read() == b""
            assert await process.wait() == -signal.SIGXCPU
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
