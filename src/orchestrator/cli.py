"""`orchestrator serve | worker | migrate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from pydantic import ValidationError

from orchestrator.settings import Settings, describe_errors


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for line in describe_errors(exc):
            print(f"invalid setting: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _logging(settings: Settings) -> None:
    from orchestrator.infrastructure.logs import configure

    configure(settings.log_level, settings.log_format)
    _tracing()


def _tracing() -> None:
    """Traces, when OTEL_EXPORTER_OTLP_ENDPOINT is set; a clear stop without the extra."""
    from orchestrator.infrastructure import tracing

    try:
        tracing.configure_from_env()
    except tracing.TracingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(args: argparse.Namespace) -> None:
    """Serve the API (and, unless told otherwise, run executions)."""
    import uvicorn

    from orchestrator.main import create_app

    overrides: dict[str, object] = {}
    if args.no_migrate:
        overrides["auto_migrate"] = False
    if args.no_runner:
        overrides["runner_enabled"] = False
    if args.port is not None:
        overrides["port"] = args.port
    settings = _settings(**overrides)
    _logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        # Far longer than any client keeps an idle connection (httpx 5 s, aiohttp 15 s, load
        # balancers 60 s): a server that closes an idle connection first races the client's
        # next request on it, and that request is reset (see keep_alive_seconds).
        timeout_keep_alive=settings.keep_alive_seconds,
        proxy_headers=True,
        server_header=False,  # no version banner
        log_config=None,  # uvicorn's lines go through the service's structured logging
    )


def worker(args: argparse.Namespace) -> None:
    """Run executions without serving HTTP."""
    settings = _settings(**({"auto_migrate": False} if args.no_migrate else {}))
    _logging(settings)
    asyncio.run(_worker(settings))


async def _worker(settings: Settings) -> None:
    from orchestrator.application.ports import EventPublisher
    from orchestrator.infrastructure.realtime.publisher import SocketIOPublisher, build_emitter
    from orchestrator.main import NoPublisher, Runtime

    log = logging.getLogger("orchestrator.worker")
    publisher: EventPublisher
    if settings.redis_url:
        publisher = SocketIOPublisher(build_emitter(settings.redis_url, settings.redis_channel))
    else:
        log.warning(
            "REDIS_URL is not set: live events of this worker reach no Socket.IO client "
            "(they are stored; clients can catch up through the events route)"
        )
        publisher = NoPublisher()
    runtime = await Runtime.start(settings, publisher, with_runner=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker started")
    try:
        await stop.wait()
    finally:
        log.info("worker stopping")
        await runtime.stop()


def migrate(args: argparse.Namespace) -> None:
    """Apply pending migrations and exit."""
    from orchestrator.infrastructure.db.engine import create_engine
    from orchestrator.infrastructure.db.engine import migrate as run_migrations

    settings = _settings()
    _logging(settings)

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await run_migrations(engine, args.revision)
        finally:
            await engine.dispose()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `orchestrator` command."""
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_serve = commands.add_parser("serve", help="serve the REST API and Socket.IO")
    p_serve.add_argument("--port", type=int, default=None, help="overrides PORT")
    p_serve.add_argument("--no-migrate", action="store_true", help="do not migrate on start")
    p_serve.add_argument("--no-runner", action="store_true", help="leave executions to workers")
    p_serve.set_defaults(func=serve)
    p_worker = commands.add_parser("worker", help="run executions, serve no HTTP")
    p_worker.add_argument("--no-migrate", action="store_true", help="do not migrate on start")
    p_worker.set_defaults(func=worker)
    p_migrate = commands.add_parser("migrate", help="apply database migrations")
    p_migrate.add_argument("revision", nargs="?", default="head")
    p_migrate.set_defaults(func=migrate)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        args.func(args)
