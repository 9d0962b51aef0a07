"""lm-eval finds our model and tasks after a plain install, cheaply and safely."""

from __future__ import annotations

import json
import sys

from helpers import REPO, run

from lm_eval_lingreg.languages import LANGUAGES


def _py(code: str, **env) -> dict:
    proc = run([sys.executable, "-c", code], env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_resolves_without_importing_torch_at_start_up():
    out = _py(
        "import sys, json\n"
        "started_with_torch = 'torch' in sys.modules\n"
        "from lm_eval.api.registry import model_registry\n"
        "print(json.dumps({'torch': started_with_torch, 'registered': 'hf-region-ablated' in model_registry,"
        " 'torch_after_registry': 'torch' in sys.modules}))"
    )
    assert out == {"torch": False, "registered": True, "torch_after_registry": False}


def test_get_model_materialises_our_class():
    out = _py(
        "import json\nfrom lm_eval.api.registry import get_model\n"
        "c = get_model('hf-region-ablated')\nprint(json.dumps(c.__module__ + ':' + c.__name__))"
    )
    assert out == "lm_eval_lingreg.models:RegionAblatedLM"


def test_builtin_models_still_resolve():
    out = _py(
        "import json\nfrom lm_eval.api.registry import get_model\n"
        "print(json.dumps([get_model(n).__name__ for n in ('hf', 'dummy', 'hf-region-ablated', 'hf-perturbed')]))"
    )
    assert out == ["HFLM", "DummyLM", "RegionAblatedLM", "PerturbedLM"]


def test_tasks_found_without_include_path():
    out = _py(
        "import json\nfrom lm_eval.tasks import TaskManager\ntm = TaskManager()\n"
        "print(json.dumps(sorted(t for t in tm.all_tasks if t.startswith('lingreg_ppl'))))"
    )
    assert "lingreg_ppl" in out and all(f"lingreg_ppl_{iso}" in out for iso in LANGUAGES)


def test_include_path_from_a_checkout_still_works():
    out = _py(
        "import json\nfrom lm_eval.tasks import TaskManager\n"
        f"tm = TaskManager(include_path={str(REPO / 'tasks')!r})\n"
        "print(json.dumps(len(tm.match_tasks(['lingreg_ppl_en', 'lingreg_ppl_zh']))))"
    )
    assert out == 2


def test_a_failing_callback_warns_instead_of_breaking_python():
    proc = run(
        [
            sys.executable,
            "-c",
            "import lm_eval_lingreg._hook as h\n"
            "h._CALLBACKS['wave'] = lambda m: 1 / 0\n"
            "import wave\nprint('still alive', wave.Wave_read)",
        ]
    )
    assert proc.returncode == 0 and "still alive" in proc.stdout
    assert "could not register with lm-eval" in proc.stderr


def test_hook_can_be_disabled():
    out = _py(
        "import json\nfrom lm_eval.api.registry import model_registry\n"
        "print(json.dumps('hf-region-ablated' in model_registry))",
        LINGREG_DISABLE_HOOK="1",
    )
    assert out is False
