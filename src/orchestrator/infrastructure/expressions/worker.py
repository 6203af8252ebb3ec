"""An expression worker process: reads jobs from stdin, answers on stdout, one at a time.

Run as `python -m orchestrator.infrastructure.expressions.worker MEMORY_MB MAX_RESULT_BYTES
TIMEOUT_MS`. Frames are a 4-byte big-endian length and an orjson document; the first frame
out is empty and says the worker is ready. A job frame holds `kind`, `spec`, `context` and
`what`; the answer is `{"ok": value}` or `{"error": message}`.

The parent kills the worker when a job runs past its deadline. The address-space limit set
here stops a job that would take all the memory (the allocation fails and the process
aborts; the parent reports it), and a CPU-time limit set per job stops the worker when its
parent is gone and cannot kill it.
"""

from __future__ import annotations

import math
import os
import resource
import struct
import sys
from typing import BinaryIO

import orjson

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.evaluation import Job, run

HEADER = struct.Struct(">I")
ERROR_ROOM = 65_536
"""Bytes an answer may take beyond the largest result: the `{"ok":}` around it, or an error."""
_MESSAGE_CHARACTERS = 8_192
# CPU seconds a job may use beyond its timeout before the kernel stops the worker: the
# parent's kill comes first unless the parent is stalled or gone.
_CPU_MARGIN_S = 1


def too_large(what: str, max_result_bytes: int) -> str:
    """The message for a result over MAX_NODE_OUTPUT_BYTES (inline or in a worker)."""
    return f"{what}: result is larger than MAX_NODE_OUTPUT_BYTES ({max_result_bytes} bytes)"


def out_of_memory(what: str, memory_mb: int) -> str:
    """The message for an evaluation that needed more memory than its worker may take."""
    return f"{what}: evaluation needed more memory than EXPRESSION_MEMORY_MB ({memory_mb} MB)"


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's payload, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    """Send one frame at once."""
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def answer(frame: bytes, memory_mb: int, max_result_bytes: int) -> bytes:
    """The answer frame's payload for one job frame; every failure is an error answer."""
    data = orjson.loads(frame)
    job = Job(data["kind"], data["spec"], data["context"], data["what"])
    try:
        encoded = orjson.dumps(run(job))
    except ExpressionError as exc:
        return _error(exc.message)
    except MemoryError:
        return _error(out_of_memory(job.what, memory_mb))
    except orjson.JSONEncodeError as exc:
        return _error(f"{job.what}: result cannot be stored as JSON: {exc}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic is a BaseException
        return _error(f"{job.what}: evaluation failed: {type(exc).__name__}: {exc}")
    if len(encoded) > max_result_bytes:
        return _error(too_large(job.what, max_result_bytes))
    return b'{"ok":' + encoded + b"}"


def _error(message: str) -> bytes:
    if len(message) > _MESSAGE_CHARACTERS:
        message = message[:_MESSAGE_CHARACTERS] + "..."
    return orjson.dumps({"error": message})


def _limit_cpu(timeout_ms: int) -> None:
    """Let the next job use its timeout (and a margin) of CPU time, counted from now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    budget = math.ceil(usage.ru_utime + usage.ru_stime + timeout_ms / 1000) + _CPU_MARGIN_S
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        budget = min(budget, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (budget, hard))


def main() -> None:
    """Serve jobs until stdin closes."""
    memory_mb, max_result_bytes, timeout_ms = (int(arg) for arg in sys.argv[1:4])
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # An abort for want of memory must not write a core file of that size.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Stdout carries frames only: whatever else writes to it lands on stderr.
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    frames_in = sys.stdin.buffer
    write_frame(frames_out, b"")
    while (frame := read_frame(frames_in)) is not None:
        _limit_cpu(timeout_ms)
        write_frame(frames_out, answer(frame, memory_mb, max_result_bytes))


if __name__ == "__main__":
    main()
