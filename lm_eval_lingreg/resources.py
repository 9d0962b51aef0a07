"""Where the package's data lives: task configs, shipped masks, the model cache."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    # Installed wheels carry the folder inside the package; a source checkout has it at the top.
    inside = _PKG / name
    return inside if inside.is_dir() else _PKG.parent / name


def tasks_dir() -> Path:
    """The folder of lm-eval task YAMLs (`--include_path` for `lingreg_ppl*`)."""
    return _data_dir("tasks")


def masks_dir() -> Path:
    """The folder of masks shipped for the bundled model."""
    return _data_dir("masks")


def baselines_dir() -> Path:
    """The folder of shipped baselines and CI rules."""
    return _data_dir("baselines")


def cache_dir() -> Path:
    """Cache root (models converted once), `$LINGREG_CACHE` or ~/.cache/lm_eval_lingreg."""
    env = os.environ.get("LINGREG_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lm_eval_lingreg"
