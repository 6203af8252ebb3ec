#!/usr/bin/env bash
# Creates .venv with the project and its dev tools, unless it is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# The inputs: the lock installed and the project's own declarations. When either changes, the
# venv is made anew (--clear), so it holds exactly the lock: nothing left over from an older one.
stamp=.venv/.installed
want=$(cat requirements-dev.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python=$(pick_python)
"$python" -m venv --clear .venv
# pip, quiet; its output (less this machine's notes about its extra package locations) on failure.
install() {
  local log status=0
  log=$(mktemp)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    echo "error: pip install $* failed (exit $status)" >&2
    exit "$status"
  fi
  rm -f "$log"
}
# The locked versions only, each checked against its hashes (pip, setuptools and the dev tools
# included), then the project itself: no dependency resolution, no build isolation (the locked
# setuptools builds it), so nothing outside the lock is fetched.
install --require-hashes --no-deps -r requirements-dev.lock
install --no-deps --no-build-isolation -e .
.venv/bin/python -c 'import orchestrator, pytest' # fails loudly if the install did not work
echo "$want" > "$stamp"
