# The two commands a new user needs: `make run` and `make test`.
.PHONY: run test check venv lock format bench

venv:
	@scripts/venv.sh

run: venv  ## start the service on :3001 (SQLite in ./orchestrator.db unless DATABASE_URL is set)
	.venv/bin/orchestrator serve

test: check  ## every check: lock, pip-audit, ruff, mypy, import-linter, pytest (real PostgreSQL)

check:
	@scripts/check.sh

lock: venv  ## after changing dependencies in pyproject.toml: uv.lock and requirements*.lock anew
	@scripts/lock.sh

format: venv
	.venv/bin/ruff format src tests bench migrations
	.venv/bin/ruff check --fix src tests bench migrations

bench: venv  ## the benchmarks of bench/ on the local PostgreSQL
	.venv/bin/python -m bench.transitions
