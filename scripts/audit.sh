#!/usr/bin/env bash
# pip-audit on the installed dependencies: .venv, which holds exactly requirements-dev.lock (the
# runtime pins and the dev tools), less the project itself (editable, not on PyPI). One line when
# all is well; the vulnerable pins, and exit 1, when some are known to be vulnerable (bump them
# within pyproject.toml's ranges: `scripts/lock.sh --upgrade`, or `.venv/bin/uv lock
# --upgrade-package NAME` and `make lock`).
#
# When the vulnerability service cannot be used (unreachable, too slow, or answering "not found"
# for the pinned releases, as a PyPI mirror without the per-release JSON API does), nothing has
# been audited: one warning line says so and the check goes on, unless AUDIT_STRICT=1, which
# makes it an error. It is not keyed on CI=true because CI runs on a machine with the same
# network as a developer's, so a CI that cannot reach the service would never pass.
#
#   scripts/audit.sh    (AUDIT_TIMEOUT=seconds for the whole audit, default 30)
set -uo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timeout "${AUDIT_TIMEOUT:-30}" .venv/bin/pip-audit --local --skip-editable --progress-spinner off \
  --timeout 10 --format json --output "$work/report.json" >"$work/stdout" 2>"$work/stderr"
status=$?

.venv/bin/python - "$work" "$status" "${AUDIT_STRICT:-0}" <<'PY'
import json
import sys
from pathlib import Path

work, status, strict = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
EDITABLE = "distribution marked as editable"


def unusable(why: str) -> None:
    why = why if len(why) <= 160 else why[:157] + "..."
    if strict:
        print(f"error: pip-audit could not audit the dependencies ({why}); AUDIT_STRICT=1")
        sys.exit(1)
    print(f"warning: pip-audit could not audit the dependencies ({why}): NOT audited; "
          "AUDIT_STRICT=1 makes this an error")
    sys.exit(0)


try:
    report = json.loads((work / "report.json").read_text())
except (OSError, ValueError):
    lines = (work / "stderr").read_text().strip().splitlines()
    unusable("timed out" if status == 124 else (lines[-1] if lines else f"exit {status}"))

deps = [d for d in report["dependencies"] if d.get("skip_reason") != EDITABLE]
vulnerable = [d for d in deps if d.get("vulns")]
skipped = [d for d in deps if "skip_reason" in d]
for dep in vulnerable:
    for vuln in dep["vulns"]:
        fix = ", ".join(vuln.get("fix_versions") or []) or "none yet"
        print(f"vulnerable: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fix})")
if vulnerable:
    print(f"error: pip-audit: {len(vulnerable)} locked package(s) with known vulnerabilities: "
          "bump them in the lock (scripts/lock.sh --upgrade, or uv lock --upgrade-package NAME)")
    sys.exit(1)
if skipped:
    unusable(f"{len(skipped)} of {len(deps)} skipped, e.g. {skipped[0]['skip_reason']}")
print(f"pip-audit: {len(deps)} installed dependencies, no known vulnerabilities")
PY
