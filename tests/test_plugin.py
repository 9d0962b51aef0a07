"""lm-eval finds our models and tasks after a plain install, cheaply and safely (one fresh interpreter for the facts)."""

from __future__ import annotations

import json
import sys

import pytest

from lm_eval_lingreg.languages import LANGUAGES

from helpers import REPO, run

PROBE = """
import sys, json
facts = {"torch_at_start": "torch" in sys.modules}
from lm_eval.api.registry import model_registry, get_model
facts["registered"] = "hf-region-ablated" in model_registry and "hf-lingreg" in model_registry
facts["torch_after_registry"] = "torch" in sys.modules
facts["classes"] = [get_model(n).__module__ + ":" + get_model(n).__name__ for n in ("hf", "dummy", "hf-lingreg", "hf-region-ablated", "hf-perturbed")]
from lm_eval.tasks import TaskManager
facts["tasks"] = sorted(t for t in TaskManager().all_tasks if t.startswith("lingreg_ppl"))
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def facts() -> dict:
    proc = run([sys.executable, "-c", PROBE])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_models_resolve_without_importing_torch_at_start_up(facts):
    assert facts["torch_at_start"] is False and facts["registered"] is True and facts["torch_after_registry"] is False


def test_our_classes_and_the_builtin_ones_resolve(facts):
    assert facts["classes"] == [
        "lm_eval.models.huggingface:HFLM",
        "lm_eval.models.dummy:DummyLM",
        "lm_eval_lingreg.models:LingregLM",
        "lm_eval_lingreg.models:RegionAblatedLM",
        "lm_eval_lingreg.models:PerturbedLM",
    ]


def test_tasks_found_without_include_path(facts):
    assert "lingreg_ppl" in facts["tasks"] and all(f"lingreg_ppl_{iso}" in facts["tasks"] for iso in LANGUAGES)


def test_an_include_path_from_a_checkout_is_not_added_twice():
    from lm_eval_lingreg._hook import _with_ours
    from lm_eval_lingreg.resources import tasks_dir

    ours = str(tasks_dir())
    assert _with_ours(None, ours) == [ours] and _with_ours("other", ours) == [ours, "other"]
    assert _with_ours([str(REPO / "tasks")], ours) == [str(REPO / "tasks")]  # a checkout's tasks/ is ours already


def test_a_failing_callback_warns_instead_of_breaking_python():
    proc = run(
        [
            sys.executable,
            "-c",
            "import lm_eval_lingreg._hook as h\nh._CALLBACKS['wave'] = lambda m: 1 / 0\nimport wave\nprint('still alive', wave.Wave_read)",
        ]
    )
    assert proc.returncode == 0 and "still alive" in proc.stdout
    assert "could not register with lm-eval" in proc.stderr


def test_hook_can_be_disabled():
    proc = run(
        [sys.executable, "-c", "import json\nfrom lm_eval.api.registry import model_registry\nprint(json.dumps('hf-region-ablated' in model_registry))"],
        env={"LINGREG_DISABLE_HOOK": "1"},
    )
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1]) is False


def test_hook_stands_down_when_the_harness_loads_plugins_itself(monkeypatch):
    """Newer harnesses read our entry points (load_plugins / discover_plugin_task_paths): the hook then registers nothing."""
    import types

    import lm_eval_lingreg
    from lm_eval_lingreg import _hook

    calls = []
    monkeypatch.setattr(lm_eval_lingreg, "register", lambda: calls.append("register"))
    _hook._on_registry(types.SimpleNamespace(load_plugins=lambda *a: None))
    assert calls == []
    _hook._on_registry(types.SimpleNamespace())
    assert calls == ["register"]

    class Manager:
        def __init__(self, verbosity=None, include_path=None):
            self.include_path = include_path

    native = types.SimpleNamespace(TaskManager=Manager, discover_plugin_task_paths=lambda: ())
    monkeypatch.setattr(_hook, "_harness_finds_our_tasks", lambda module: True)
    _hook._on_task_manager(native)
    assert Manager().include_path is None  # untouched: the harness finds the tasks through the entry point
    monkeypatch.setattr(_hook, "_harness_finds_our_tasks", lambda module: False)
    _hook._on_task_manager(native)
    assert Manager().include_path and Manager().include_path[0].endswith("tasks")


def test_entry_points_name_the_models_and_the_tasks_package():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["lm_eval.tasks"] == {"lingreg": "lm_eval_lingreg.tasks"}
    from lm_eval_lingreg import MODELS

    assert project["entry-points"]["lm_eval.models"] == MODELS


def test_the_hook_adds_our_tasks_whatever_the_position_of_include_path():
    """The wrapper binds arguments by name: a TaskManager whose include_path is first, third or keyword-only still gets our tasks."""
    import types

    from lm_eval_lingreg import _hook
    from lm_eval_lingreg.resources import tasks_dir

    seen = {}

    class First:
        def __init__(self, include_path=None, verbosity="INFO"):
            seen["first"] = include_path

    class Third:
        def __init__(self, verbosity="INFO", include_defaults=True, include_path=None):
            seen["third"] = include_path

    class KeywordOnly:
        def __init__(self, *, include_path=None):
            seen["kw"] = include_path

    for cls in (First, Third, KeywordOnly):
        _hook._on_task_manager(types.SimpleNamespace(TaskManager=cls, __name__="lm_eval.tasks.manager"))
    First("/mine")
    Third("INFO", True, "/mine")
    KeywordOnly(include_path="/mine")
    ours = str(tasks_dir())
    assert seen == {"first": [ours, "/mine"], "third": [ours, "/mine"], "kw": [ours, "/mine"]}
