#!/usr/bin/env bash
# The dependency lock. uv.lock (uv's universal lock: Linux x86_64, every Python from
# requires-python up, a hash for every file) is the source; requirements.lock (runtime, for the
# Dockerfile) and requirements-dev.lock (runtime + dev tools, for scripts/venv.sh) are its exports
# in pip's format, so that pip alone installs them with --require-hashes.
#
#   scripts/lock.sh          (make lock) resolve again from pyproject.toml, keeping the pins that
#                            still fit (uv lock), and rewrite the two exports
#   scripts/lock.sh --upgrade  the same, moving every pin to the newest release that fits
#   scripts/lock.sh --check  fail, with one line, if pyproject.toml, uv.lock and the exports
#                            disagree; offline, well under a second
set -euo pipefail
cd "$(dirname "$0")/.."

uv=.venv/bin/uv
if [ ! -x "$uv" ]; then
  echo "error: $uv is missing: run scripts/venv.sh first" >&2
  exit 1
fi
# The venv's Python, never a download of uv's own.
export UV_PYTHON=.venv/bin/python UV_PYTHON_DOWNLOADS=never

export_lock() { # $1: output file; then uv export options
  local out=$1
  shift
  {
    echo "# Generated from uv.lock by 'make lock' (scripts/lock.sh): do not edit. Install with"
    echo "# pip install --require-hashes --no-deps -r $(basename "$out"), then the project with --no-deps."
    "$uv" export --quiet --frozen --no-emit-project --no-header --format requirements-txt "$@"
  } >"$out"
}

exports() { # $1: directory to write the two exports into
  export_lock "$1/requirements.lock"
  export_lock "$1/requirements-dev.lock" --extra dev
}

case "${1:-}" in
  --check)
    # `uv lock --check` compares the requirements recorded in uv.lock with pyproject.toml (and
    # [tool.uv]) without resolving; --offline makes sure it never reaches for the network.
    if ! "$uv" lock --check --offline --quiet 2>/dev/null; then
      echo "error: uv.lock does not match pyproject.toml's dependencies: run 'make lock' (and commit uv.lock and requirements*.lock)" >&2
      exit 1
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    exports "$tmp"
    for file in requirements.lock requirements-dev.lock; do
      if ! cmp -s "$tmp/$file" "$file"; then
        echo "error: $file is not the export of uv.lock: run 'make lock' (and commit it)" >&2
        exit 1
      fi
    done
    ;;
  "" | --upgrade)
    "$uv" lock ${1:+"$1"}
    exports .
    echo "lock: uv.lock, requirements.lock and requirements-dev.lock written"
    ;;
  *)
    echo "usage: scripts/lock.sh [--check | --upgrade]" >&2
    exit 2
    ;;
esac
