"""Start-up hook run by `lm_eval_lingreg.pth`: plugs into lm-eval when, and only when, it is imported.

lm-eval 0.4.13 resolves `--model` only from its own registry and finds tasks only in its own
folder or an `--include_path`. This hook waits (a meta-path finder, no imports) until
`lm_eval.api.registry` / `lm_eval.tasks.manager` are imported, then registers our model
names as lazy placeholders and adds our task folder. It never imports torch, and any
failure is reported as a warning instead of breaking the interpreter.
Harness versions that read the `lm_eval.models` / `lm_eval.tasks` entry points themselves
(`load_plugins`, `discover_plugin_task_paths`) get nothing from the hook, so nothing registers twice.
Set LINGREG_DISABLE_HOOK=1 to turn it off.
"""

from __future__ import annotations

import os
import sys


def _on_registry(module) -> None:
    if callable(getattr(module, "load_plugins", None)):  # the harness loads our lm_eval.models entry points itself
        return
    import lm_eval_lingreg

    lm_eval_lingreg.register()


def _harness_finds_our_tasks(module) -> bool:
    """True when this harness scans `lm_eval.tasks` entry points and ours resolves (an installed wheel)."""
    if not callable(getattr(module, "discover_plugin_task_paths", None)):
        return False
    import importlib.util

    try:
        return importlib.util.find_spec("lm_eval_lingreg.tasks") is not None
    except ImportError:
        return False


def _on_task_manager(module) -> None:
    import functools

    from lm_eval_lingreg.resources import tasks_dir

    if _harness_finds_our_tasks(module):
        return
    cls = getattr(module, "TaskManager", None)
    if cls is None or getattr(cls.__init__, "_lingreg", False):
        return
    import inspect

    original = cls.__init__
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        signature = None
    if signature is None or "include_path" not in signature.parameters:
        import warnings

        warnings.warn(
            "lm_eval_lingreg: this lm-eval's TaskManager takes no include_path; pass --include_path to lm_eval for the lingreg tasks",
            stacklevel=2,
        )
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        # bound by name, whatever position include_path has in this lm-eval version
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)  # the harness reports the bad call itself
        bound.arguments["include_path"] = _with_ours(bound.arguments.get("include_path"), str(tasks_dir()))
        original(*bound.args, **bound.kwargs)

    __init__._lingreg = True
    cls.__init__ = __init__


def _with_ours(include_path, ours: str) -> list:
    """Our task folder first, so a user's own --include_path can still override it."""
    if include_path is None:
        paths = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    resolved = {os.path.realpath(str(p)) for p in paths}
    return paths if os.path.realpath(ours) in resolved else [ours, *paths]


# lm-eval 0.4.11+ defines TaskManager in lm_eval.tasks.manager, 0.4.10 in lm_eval.tasks itself: watch both (the
# wrapper is applied once)
_CALLBACKS = {"lm_eval.api.registry": _on_registry, "lm_eval.tasks.manager": _on_task_manager, "lm_eval.tasks": _on_task_manager}


class _Loader:
    """Delegates to the real loader, then runs our callback on the fresh module."""

    def __init__(self, loader, callback) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as e:  # never break lm-eval because of the plugin
            import warnings

            warnings.warn(f"lm-eval-lingreg could not register with lm-eval: {e!r}", stacklevel=2)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """A meta-path finder (duck-typed: importing importlib.abc would cost ~25 ms at start-up)."""

    def find_spec(self, fullname, path, target=None):
        callback = _CALLBACKS.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, callback)
                return spec
        return None


def install() -> None:
    if os.environ.get("LINGREG_DISABLE_HOOK"):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    # lm-eval already imported (e.g. the hook installed late): register right away.
    for name, callback in _CALLBACKS.items():
        module = sys.modules.get(name)
        if module is not None:
            callback(module)


try:
    install()
except Exception:  # a start-up hook must never stop Python from starting
    pass
