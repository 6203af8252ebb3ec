#!/usr/bin/env bash
# Runs the README's `## Walkthrough` against a service you started as it says (make run with
# the stand-ins): its bash blocks in one shell, in a scratch directory (watch.py is written
# there). `bash scripts/walkthrough.sh [HOST:PORT]` when the service is not on localhost:3001.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && .venv/bin/python -m tests.readme_blocks "$@") > "$work/walkthrough.sh"
cd "$work" && PATH="$root/.venv/bin:$PATH" bash walkthrough.sh
