#!/usr/bin/env bash
# Sourced by check.sh: makes sure a PostgreSQL (and, if possible, a Redis) answers for the tests.
# Uses TEST_DATABASE_URL / TEST_REDIS_URL when set, else the local servers on their usual ports,
# else starts throwaway servers from the local binaries (stopped when the tests end).

THROWAWAY_DIR=""

_free_port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && echo "$found"
}

_pg_answers() {
  .venv/bin/python - "$1" <<'PY'
import asyncio, sys
import asyncpg
async def main(url):
    conn = await asyncio.wait_for(asyncpg.connect(url), 3)
    await conn.close()
try:
    asyncio.run(main(sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")))
except Exception:
    sys.exit(1)
PY
}

ensure_postgres() {
  local url=${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
  if _pg_answers "$url"; then
    export TEST_DATABASE_URL=$url
    return 0
  fi
  if [ -n "${TEST_DATABASE_URL:-}" ]; then
    echo "error: no PostgreSQL answers at TEST_DATABASE_URL=$TEST_DATABASE_URL" >&2
    return 1
  fi
  local initdb pg_ctl
  initdb=$(_pg_bin initdb || true)
  pg_ctl=$(_pg_bin pg_ctl || true)
  if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
    echo "error: no PostgreSQL at 127.0.0.1:5432 and no local PostgreSQL binaries: install PostgreSQL 14+ (e.g. 'apt-get install postgresql') or set TEST_DATABASE_URL=postgresql://user@host:port/db" >&2
    return 1
  fi
  THROWAWAY_DIR=$(mktemp -d /tmp/orchestrator-test-pg.XXXXXX)
  local port run_as=()
  port=$(_free_port)
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$THROWAWAY_DIR"
    run_as=(runuser -u postgres --)
  fi
  echo "starting a throwaway PostgreSQL on port $port"
  "${run_as[@]}" "$initdb" -D "$THROWAWAY_DIR/data" -U postgres --auth=trust >/dev/null
  "${run_as[@]}" "$pg_ctl" -D "$THROWAWAY_DIR/data" -l "$THROWAWAY_DIR/log" -w \
    -o "-p $port -k $THROWAWAY_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  export THROWAWAY_PG_CTL="$pg_ctl"
}

_redis_answers() {
  .venv/bin/python - "$1" <<'PY'
import sys
import redis
try:
    redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()
except Exception:
    sys.exit(1)
PY
}

ensure_redis() {
  local url=${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
  if _redis_answers "$url"; then
    export TEST_REDIS_URL=$url
    return 0
  fi
  if command -v redis-server >/dev/null 2>&1; then
    local port
    port=$(_free_port)
    [ -n "$THROWAWAY_DIR" ] || THROWAWAY_DIR=$(mktemp -d /tmp/orchestrator-test.XXXXXX)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
      --pidfile "$THROWAWAY_DIR/redis.pid" --logfile "$THROWAWAY_DIR/redis.log" >/dev/null
    export TEST_REDIS_URL="redis://127.0.0.1:$port/0"
    echo "started a throwaway Redis on port $port"
  else
    echo "note: no Redis answers and redis-server is not installed: the multi-replica Socket.IO tests will be skipped" >&2
    unset TEST_REDIS_URL
  fi
}

stop_throwaways() {
  [ -n "$THROWAWAY_DIR" ] || return 0
  if [ -f "$THROWAWAY_DIR/redis.pid" ]; then kill "$(cat "$THROWAWAY_DIR/redis.pid")" 2>/dev/null || true; fi
  if [ -d "$THROWAWAY_DIR/data" ]; then
    if [ "$(id -u)" = 0 ]; then
      runuser -u postgres -- "$THROWAWAY_PG_CTL" -D "$THROWAWAY_DIR/data" -m fast stop >/dev/null 2>&1 || true
    else
      "$THROWAWAY_PG_CTL" -D "$THROWAWAY_DIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$THROWAWAY_DIR"
}
