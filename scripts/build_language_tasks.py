"""Rewrite the generated lingreg_gen_* and lingreg_mt_* task YAMLs in tasks/ (tests fail when they are stale).

python scripts/build_language_tasks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lm_eval_lingreg.language_tasks import write_shipped  # noqa: E402

if __name__ == "__main__":
    written = write_shipped(ROOT / "tasks")
    print(f"wrote {len(written)} task files to {ROOT / 'tasks'}")
