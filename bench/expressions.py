"""Expression costs: the worst inline work at INLINE_BUDGET, the worker round trip, and what
the expressions that used to block the event loop cost now.

Run: `.venv/bin/python -m bench.expressions` (about 15 s). The evaluator has the default
settings (EXPRESSION_TIMEOUT_MS=1000, EXPRESSION_WORKERS=2, EXPRESSION_MEMORY_MB=512,
MAX_NODE_OUTPUT_BYTES=1048576). Lines:

- inline worst case: the best of 20 runs of each job at the budget through the inline path
  (one token over many tiny containers costs the most per unit; string concatenation, the
  obvious suspect, costs next to nothing);
- pool round trip: p50 / p95 of 1000 small jobs that must go to a worker (a `.map`);
- then the 4-level expression that blocked the loop 21 s, the 2-level loop over 5,000 items
  that blocked it 5.4 s and the map of maps that made 36 MB out of 10 KB: the outcome, the
  wall time and the longest stall of a 5 ms ticker on the event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.evaluation import Analysis, Job, analyze
from orchestrator.infrastructure.expressions.pool import INLINE_BUDGET, BoundedEvaluator

WHAT = "bench"
BLOCKED_21_S = (
    'input.exists(a, ")" == ")" && input.exists(b, ")" == ")" && '
    'input.exists(c, ")" == ")" && input.exists(d, a+b+c+d < 0))))'
)


def _evaluator() -> BoundedEvaluator:
    return BoundedEvaluator(timeout_ms=1000, workers=2, memory_mb=512, max_result_bytes=1 << 20)


def _work(spec: str, context: dict[str, Any]) -> tuple[Job, Analysis]:
    return Job("expression", spec, context, WHAT), analyze("expression", spec)


def _at_budget(element: Any) -> dict[str, Any]:
    step = len(orjson.dumps(element)) + 1
    count = (INLINE_BUDGET - len(orjson.dumps({"input": []})) + 1) // step
    return {"input": [element] * count}


async def _inline_worst_case() -> None:
    pool = _evaluator()
    cases = {
        "input over [[],...]": ("input", _at_budget([])),
        "input over [[[]],...]": ("input", _at_budget([[]])),
        "input over [{},...]": ("input", _at_budget({})),
        "input over [[1],...]": ("input", _at_budget([1])),
        "input + input + input + input": (
            " + ".join(["input"] * 4),
            {"input": "x" * (INLINE_BUDGET // 49 - 12)},
        ),
    }
    print(f"inline worst case at INLINE_BUDGET={INLINE_BUDGET} (tokens² x context bytes):")
    for label, (spec, context) in cases.items():
        job, analysis = _work(spec, context)
        units = analysis.tokens**2 * len(orjson.dumps(context))
        best = float("inf")
        for _ in range(20):
            started = time.perf_counter()
            await pool.evaluate(job, analysis)
            best = min(best, time.perf_counter() - started)
        print(f"  {label:<32} {units:>6} units  {best * 1000:7.3f} ms")
    assert pool.processes == (), "the worst cases must run inline"
    await pool.close()


async def _round_trip() -> None:
    pool = _evaluator()
    job, analysis = _work("input.map(x, x * 2)", {"input": [1, 2, 3]})
    await pool.evaluate(job, analysis)  # starts the worker
    times = []
    for _ in range(1000):
        started = time.perf_counter()
        await pool.evaluate(job, analysis)
        times.append(time.perf_counter() - started)
    await pool.close()
    p50 = statistics.median(times) * 1000
    p95 = statistics.quantiles(times, n=20)[-1] * 1000
    print(f"pool round trip, small job: p50 {p50:.3f} ms  p95 {p95:.3f} ms")


async def _cost(pool: BoundedEvaluator, label: str, spec: str, context: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stall = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal stall
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            stall = max(stall, loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    started = loop.time()
    try:
        await pool.evaluate(*_work(spec, context))
        outcome = "ok"
    except ExpressionError as exc:
        outcome = exc.message.removeprefix(f"{WHAT}: ")
    elapsed = loop.time() - started
    done.set()
    await ticker
    print(f"  {label:<28} {elapsed * 1000:7.1f} ms  loop stall {stall * 1000:5.1f} ms  {outcome}")


async def _former_blockers() -> None:
    pool = _evaluator()
    await pool.evaluate(*_work("input.map(x, x)", {"input": [1]}))  # starts a worker
    print("what the former blockers cost now (wall time, longest event-loop stall, outcome):")
    await _cost(pool, "4 levels, 90 items (21 s)", BLOCKED_21_S, {"input": list(range(90))})
    await _cost(
        pool,
        "2 levels, 5,000 items (5.4 s)",
        "input.exists(a, input.exists(b, a + b < 0))",
        {"input": list(range(5000))},
    )
    await _cost(
        pool,
        "map of maps, 10 KB in",
        "input.l.map(a, input.l.map(b, input.s))",
        {"input": {"l": list(range(60)), "s": "x" * 10_000}},
    )
    await pool.close()


async def main() -> None:
    """Print the three measurements."""
    await _inline_worst_case()
    await _round_trip()
    await _former_blockers()


if __name__ == "__main__":
    asyncio.run(main())
