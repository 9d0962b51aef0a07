#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set everything up, lint, then run the test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="${LINGREG_VENV:-.venv}"
"$VENV/bin/ruff" format --check lm_eval_lingreg tests bench scripts || { echo "error: code not formatted; run: $VENV/bin/ruff format lm_eval_lingreg tests bench scripts" >&2; exit 1; }
"$VENV/bin/ruff" check lm_eval_lingreg tests bench scripts || exit 1
# Parallel workers, one per core up to 4 (each real-model worker holds the bundled model, about 1 GB); `-n 0` runs serially.
WORKERS="$("$VENV/bin/python" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')"
"$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadgroup "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
if [ "$rc" -eq 0 ] && { [ "${CI:-}" = "true" ] || [ "${LINGREG_COMPAT:-}" = "1" ]; }; then
  bash scripts/compat.sh || rc=$?  # the oldest supported lm-eval (its cost: bench/README.md)
fi
exit "$rc"
