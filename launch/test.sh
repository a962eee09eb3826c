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
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# Two test processes (pytest-xdist), a file each at a time: most of the suite's time is XLA
# compiling, one core per compile, so two processes keep both cores of a small machine busy.
# AMBIENT_TEST_WORKERS=0 runs in one process.
exec "$venv/bin/python" -m pytest tests -n "${AMBIENT_TEST_WORKERS:-2}" --dist loadfile "$@"
