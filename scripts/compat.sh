#!/usr/bin/env bash
# The plugin's own tests (registration, the literal lm_eval commands, the wrappers, BOS, the tasks) against the oldest
# supported lm-eval, in a second environment: the set-up one with that lm-eval laid over it (its requirements are the
# same packages), so nothing is downloaded but the lm-eval wheel. Run by scripts/test.sh when CI=true or LINGREG_COMPAT=1.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${LINGREG_VENV:-.venv}"
OLDEST="${LINGREG_OLDEST_LM_EVAL:-0.4.10}"
OVERLAY=".compat/lm-eval-$OLDEST"
if [ ! -d "$OVERLAY/lm_eval" ]; then
  rm -rf "$OVERLAY.tmp"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$OVERLAY.tmp" "lm-eval==$OLDEST" || exit 1
  mv "$OVERLAY.tmp" "$OVERLAY"
fi
export PYTHONPATH="$PWD/$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
got="$("$VENV/bin/python" -c 'import importlib.metadata as m, lm_eval; print(m.version("lm_eval"), lm_eval.__file__)')"
case "$got" in
  "$OLDEST "*"$OVERLAY"*) echo "compatibility run: lm-eval $got" ;;
  *) echo "error: expected lm-eval $OLDEST from $OVERLAY, got $got" >&2; exit 1 ;;
esac
"$VENV/bin/python" -m pytest -q -n 2 -m "not slow and not install" -p no:cacheprovider \
  tests/test_plugin.py tests/test_models.py tests/test_tasks.py tests/test_language.py "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "error: pytest collected no tests" >&2; exit 1; }
exit "$rc"
