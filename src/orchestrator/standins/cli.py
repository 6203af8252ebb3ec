"""Command line of the stand-ins: ``python -m orchestrator.standins --port 3002``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from orchestrator.standins.app import create_standin_app

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve the stand-ins with uvicorn until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.standins",
        description="Stand-ins for agent-service (under --agent-prefix) and tool-service (root).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--agent-prefix", default="/api", help="path prefix of the agent routes")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    parser.add_argument(
        "--orchestrator-url",
        default=None,
        help="where streaming agents post progress (default: ORCHESTRATOR_URL)",
    )
    parser.add_argument(
        "--internal-token",
        default=None,
        help="bearer token of those posts (default: STANDIN_INTERNAL_TOKEN)",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        create_standin_app(
            prefix_agent=args.agent_prefix,
            orchestrator_url=args.orchestrator_url,
            internal_token=args.internal_token,
        ),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
