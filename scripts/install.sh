#!/usr/bin/env bash
# Create ./.venv (if missing) and install the project with its test dependencies, from scratch.
# Used by .ci/run and run_local.sh so both set up a fresh machine the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: the local CPU wheel. Anything unpinned would pull the CUDA build (gigabytes).
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -r requirements-test.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
