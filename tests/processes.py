"""Real processes for end-to-end tests: the service and the stand-in services, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 30.0
WORKER_READY_LINE = "worker started"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_answers(process: Process) -> bool:
    """The default readiness check: the health URL answers 200."""
    try:
        return httpx.get(process.health_url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def log_line(text: str) -> Callable[[Process], bool]:
    """A readiness check: `text` appeared in the process's output since its last start."""

    def seen(process: Process) -> bool:
        return text in process.log_since_start()

    return seen


@dataclass
class Process:
    """A child process with its log in a file; stopped by `stop`, whatever happens.

    `start` waits until `ready(process)` holds: by default until the health URL answers 200;
    a process that serves no HTTP (a worker) passes another check, e.g. `log_line(...)`.
    """

    args: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    popen: subprocess.Popen[bytes] | None = None
    ready: Callable[[Process], bool] = health_answers
    log_offset: int = field(default=0, init=False)

    def start(self) -> Process:
        """Start and wait until the process is ready (see the class)."""
        try:
            self.log_offset = self.log_path.stat().st_size
        except OSError:
            self.log_offset = 0
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args} exited at start:\n{self.log_tail()}")
            if self.ready(self):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args} did not get ready in time:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        """Started and not exited."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM...)."""
        assert self.popen is not None
        os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait(10)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code."""
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with_suppressed = [signal.SIGCONT, signal.SIGTERM]
        for sig in with_suppressed:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                return
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        """The end of the process's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_since_start(self) -> str:
        """The process's output since its last start (the log file is shared by restarts)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


def service_env(database_url: str, standin_url: str, **extra: str) -> dict[str, str]:
    """The environment of a service process under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DATABASE_URL=database_url,
        AGENT_SERVICE_URL=f"{standin_url}/api",
        TOOL_SERVICE_URL=standin_url,
        LOG_LEVEL="WARNING",
        HOST="127.0.0.1",
        POLL_INTERVAL_MS="200",
    )
    env.update(extra)
    return env


def service_process(
    database_url: str, standin_url: str, command: str = "serve", **extra: str
) -> Process:
    """A service process (not started).

    `command="worker"` serves no HTTP: it is ready once it logs that it started, so it logs
    at INFO unless LOG_LEVEL is given (its health_url and base_url mean nothing).
    """
    port = free_port()
    if command == "worker":
        extra = {"LOG_LEVEL": "INFO", **extra}
    env = service_env(database_url, standin_url, PORT=str(port), **extra)
    process = Process(
        [sys.executable, "-m", "orchestrator", command],
        env,
        f"http://127.0.0.1:{port}/health",
    )
    if command == "worker":
        process.ready = log_line(WORKER_READY_LINE)
    return process


@contextmanager
def running(process: Process) -> Iterator[Process]:
    """Start the process and stop it at the end, whatever the outcome."""
    process.start()
    try:
        yield process
    finally:
        process.stop()


def standin_process() -> Process:
    """The stand-in agent and tool services (not started)."""
    port = free_port()
    return Process(
        [sys.executable, "-m", "orchestrator.standins", "--port", str(port)],
        dict(os.environ),
        f"http://127.0.0.1:{port}/health",
    )


def base_url(process: Process) -> str:
    """http://127.0.0.1:PORT of a process."""
    return process.health_url.removesuffix("/health")
