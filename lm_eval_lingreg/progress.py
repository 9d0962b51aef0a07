"""One progress bar over a whole evaluation job (conditions x tasks x documents, with an ETA).

lm-eval draws a bar per task while it builds requests and one per batch while it scores them: a
30-language job printed hundreds of them. While a job bar is open (`job`), the lingreg wrappers
tick it per document and ask lm-eval for no bars of its own, and lm-eval's remaining bars are
dropped from stderr; everything else it writes (warnings, errors) still shows. The `lingreg`
command opens job bars unless given `-q`, and keeps lm-eval's own bars with `-v` (`configure`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["configure", "job", "harness_quiet", "tick"]

_SETTINGS = {"enabled": False, "harness_bars": False}
_BAR: Any = None


def configure(enabled: bool, harness_bars: bool = False) -> None:
    """Whether `job` shows a bar (the CLI: yes unless -q), and whether lm-eval's own bars stay (-v)."""
    _SETTINGS.update(enabled=enabled, harness_bars=harness_bars)


def harness_quiet() -> bool:
    """Whether lm-eval's own bars are to be off now: a job bar is open and `-v` did not ask for them."""
    return _BAR is not None and not _SETTINGS["harness_bars"]


def tick(n: int = 1) -> None:
    if _BAR is not None and n > 0:
        _BAR.update(n)


@contextlib.contextmanager
def job(total: int, desc: str) -> Iterator[None]:
    """A bar over `total` documents while the block runs (nothing unless `configure` enabled it, or one is already open)."""
    global _BAR
    if not _SETTINGS["enabled"] or _BAR is not None:
        yield
        return
    from tqdm import tqdm

    stream = sys.stderr
    interactive = getattr(stream, "isatty", lambda: False)()
    bar = tqdm(total=total, desc=desc, unit="doc", file=stream, dynamic_ncols=True, mininterval=0.5 if interactive else 30.0)
    _BAR = bar
    try:
        if _SETTINGS["harness_bars"]:
            yield
        else:
            with contextlib.redirect_stderr(_WithoutBars(stream, bar)):
                yield
    finally:
        _BAR = None
        bar.close()


class _WithoutBars:
    """stderr for lm-eval while a job bar is open: its progress bars (carriage-return updates) dropped, other text kept."""

    def __init__(self, stream: TextIO, bar: Any) -> None:
        self._stream, self._bar = stream, bar

    def write(self, text: str) -> int:
        if "\r" in text or "\x1b[" in text or not text.strip():  # bar updates, cursor moves and the blank lines between them
            return len(text)
        with self._bar.external_write_mode(file=self._stream):
            self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
