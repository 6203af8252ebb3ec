#!/usr/bin/env bash
# Every check: the lock agrees with pyproject.toml, pip-audit, ruff (lint and format), mypy
# (strict), import-linter, then pytest on real PostgreSQL (and Redis). Extra arguments go to
# pytest, e.g. scripts/check.sh -k workflows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh
source scripts/services.sh
trap stop_throwaways EXIT

echo "== lock";          scripts/lock.sh --check
echo "== pip-audit";     scripts/audit.sh
echo "== ruff";          .venv/bin/ruff check src tests bench migrations
echo "== ruff format";   .venv/bin/ruff format --check src tests bench migrations
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
ensure_postgres
ensure_redis
echo "== pytest"
.venv/bin/pytest "$@"
