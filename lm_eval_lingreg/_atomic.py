"""Atomic writes: a file or directory appears complete under its final name, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success rename it over `target`.

    On any exception the temporary file or directory is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    umask = os.umask(0)
    os.umask(umask)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp (and some writers) make 0600/0700; the result is meant to be shared
        os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)
        if directory and target.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: object, default=str) -> None:
    """Write `data` as indented UTF-8 JSON, atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=default) + "\n", encoding="utf-8")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically; the format follows the suffix (.png default, .svg, .pdf, ...)."""
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"": "png", "jpg": "jpeg"}.get(suffix, suffix)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
