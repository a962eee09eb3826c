#!/usr/bin/env bash
# Set up a virtual environment (once) and run the test suite.
#   launch/test.sh                 # the whole suite
#   launch/test.sh -k losses -x    # extra arguments go to pytest
# AMBIENT_VENV chooses the environment's folder (default: .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AMBIENT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch is a test-only dependency (reference networks, weight files); the CPU build is pinned.
"$venv/bin/python" -m pip install --quiet -e ".[test]"
# The formatter and linter first (settings in pyproject.toml): a lint error fails like a test.
"$venv/bin/python" -m ruff format --check --quiet .
"$venv/bin/python" -m ruff check --quiet .
# The type checker (settings in pyproject.toml) on the package and benchmarks/: every public
# function is annotated (tests/test_house.py) and mypy checks the annotated code.
"$venv/bin/python" -m mypy
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# Two test processes (pytest-xdist), a file each at a time: most of the suite's time is XLA
# compiling, one core per compile, so two processes keep both cores of a small machine busy.
# AMBIENT_TEST_WORKERS=0 runs in one process.
pytest=("$venv/bin/python" -m pytest tests -n "${AMBIENT_TEST_WORKERS:-2}" --dist loadfile "$@")
if [ -z "${AMBIENT_SUITE_RECORD:-}" ]; then
  exec "${pytest[@]}"
fi
# AMBIENT_SUITE_RECORD=FILE: also write the suite's summary line and wall time there (JSON), the
# figure docs/tests.md cites, so no one types it
start=$(date +%s)
log="$(mktemp)"
set +e
"${pytest[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
"$venv/bin/python" - "$log" "$AMBIENT_SUITE_RECORD" "$(( $(date +%s) - start ))" "$status" <<'PY'
import json, os, platform, sys, datetime
log, out, seconds, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
summary = [line.strip("= \n") for line in open(log) if " in " in line and ("passed" in line or "failed" in line)]
json.dump({"summary": summary[-1] if summary else "", "exit_status": status, "wall_seconds": seconds,
           "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine()}, open(out, "w"), indent=1)
print(f"recorded in {out}")
PY
rm -f "$log"
exit "$status"
