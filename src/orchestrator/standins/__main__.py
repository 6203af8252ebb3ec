"""Serve the stand-ins: ``python -m orchestrator.standins --host 127.0.0.1 --port 3002``."""

from orchestrator.standins.cli import main

main()
