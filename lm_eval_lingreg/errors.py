"""One error root, one subclass per concern.

Every error raised for bad input is a `LingregError`: the CLI prints it as one `error:` line and
exits 2; through lm-eval it is the last line of the traceback. Each message says what was
given, what was expected and what to do. The classes also derive from `ValueError` where they
did before, so existing `except ValueError` code keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class LingregError(Exception):
    """Bad input to lm-eval-lingreg (any concern): one clear message naming the problem and the fix.

    The message is kept on one line (newlines of embedded library messages folded), so it is the whole
    last line of a traceback when lm-eval shows one.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


class UsageError(LingregError, ValueError):
    """A command-line option or argument that is malformed or out of range."""


class OutputError(LingregError, OSError):
    """An output path that cannot be written, would be replaced without --overwrite, or is in use."""


class UnknownLanguageError(LingregError, ValueError):
    """A language code that is not one of the 30 evaluation languages."""


class BundledModelError(LingregError, RuntimeError):
    """The bundled model cannot be prepared."""


class ModelLoadError(LingregError, OSError):
    """A model that cannot be found or loaded, or a device that cannot be used."""


class RegionError(LingregError, ValueError):
    """A region that is malformed in itself (bad indices, bad file, bad arguments)."""


class RegionMismatchError(RegionError):
    """A region that does not fit the model it is applied to."""


class RegionFileError(RegionError):
    """A region file that is missing, unreadable, unsafe or malformed."""


class PerturbationError(LingregError, ValueError):
    """A perturbation that is malformed, or that does not fit the model it is applied to."""


class CorpusError(LingregError, ValueError):
    """Calibration or training text that is missing, unreadable or too small."""


class ScoreFileError(LingregError, ValueError):
    """Score files that are missing, malformed, stale or inconsistent with each other."""


class TrainingError(LingregError, ValueError):
    """A training configuration that cannot work, or a run that diverged."""


class ReportError(LingregError, ValueError):
    """Bad input to a report command: unreadable or malformed results, baselines or rules."""


# message helpers -----------------------------------------------------------------------------


def first(items: Sequence, k: int = 5) -> str:
    """The first `k` items, for error messages."""
    shown = ", ".join(str(i) for i in items[:k])
    return shown + (f" ... ({len(items)} in all)" if len(items) > k else "")


def close_matches(name: str, names: Iterable[str]) -> str:
    """' (did you mean ...?)' for names close to `name`, else ''."""
    import difflib

    names = list(names)
    same_but_case = [n for n in names if n.lower() == name.lower() and n != name]
    hint = same_but_case or difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""


class EditOrderError(LingregError, RuntimeError):
    """Edits of the same weights restored out of order (the model would not come back exactly)."""
