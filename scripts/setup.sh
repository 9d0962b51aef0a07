#!/usr/bin/env bash
# Set-up shared by main.sh and test.sh: a virtual environment with the CPU torch wheel first
# (an unpinned torch would pull several GB of CUDA packages), then this package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LINGREG_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
