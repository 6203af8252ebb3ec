"""The test command's promise: with no PostgreSQL answering, it starts a throwaway one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
ip link set lo up
source scripts/services.sh
unset TEST_DATABASE_URL TEST_REDIS_URL
ensure_postgres
.venv/bin/python - <<'PY'
import asyncio, os, asyncpg
async def main() -> None:
    connection = await asyncpg.connect(os.environ["TEST_DATABASE_URL"])
    print("answered:", await connection.fetchval("SELECT 1"))
    await connection.close()
asyncio.run(main())
PY
stop_throwaways
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare and ip to hide the local PostgreSQL in a network namespace",
)
def test_a_throwaway_postgresql_starts_where_none_answers() -> None:
    # A new network namespace has its own loopback, where the machine's server is not.
    result = subprocess.run(
        ["unshare", "-n", "bash", "-euo", "pipefail", "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "starting a throwaway PostgreSQL" in result.stdout
    assert "answered: 1" in result.stdout
