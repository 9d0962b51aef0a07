"""A wheel built from the repo, installed into a fresh venv, still plugs into lm-eval."""

from __future__ import annotations

import json
import site
import sys
import venv
from pathlib import Path

import pytest

from helpers import REPO, run


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(REPO)])
    assert proc.returncode == 0
    (wheel,) = (tmp / "dist").glob("lm_eval_lingreg-*.whl")
    venv.create(tmp / "venv", with_pip=False)
    py = tmp / "venv" / "bin" / "python"
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # dependencies come from this environment; the package itself only from the wheel
    Path(purelib, "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)])
    assert proc.returncode == 0
    return py, Path(purelib)


def test_wheel_carries_tasks_masks_and_the_hook(fresh_python):
    py, purelib = fresh_python
    assert (purelib / "lm_eval_lingreg.pth").is_file()
    assert (purelib / "lm_eval_lingreg" / "tasks" / "lingreg_ppl.yaml").is_file()
    assert (purelib / "lm_eval_lingreg" / "tasks" / "data" / "udhr" / "en.jsonl").is_file()
    assert (purelib / "lm_eval_lingreg" / "masks" / "MANIFEST.json").is_file()


def test_installed_wheel_resolves_model_and_task(fresh_python):
    py, purelib = fresh_python
    code = (
        "import json, lm_eval_lingreg\n"
        "from lm_eval.api.registry import get_model\n"
        "from lm_eval.tasks import TaskManager\n"
        "tm = TaskManager()\n"
        "print(json.dumps({'file': lm_eval_lingreg.__file__, 'model': get_model('hf-region-ablated').__name__, 'perturbed': get_model('hf-perturbed').__name__,"
        " 'tasks': tm.match_tasks(['lingreg_ppl_en', 'lingreg_ppl'])}))"
    )
    proc = run([str(py), "-c", code], cwd="/")
    assert proc.returncode == 0
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(purelib)), out["file"]
    assert out["model"] == "RegionAblatedLM" and out["perturbed"] == "PerturbedLM" and set(out["tasks"]) == {"lingreg_ppl_en", "lingreg_ppl"}


def test_installed_wheel_runs_lm_eval_end_to_end(fresh_python, tiny_model_dir, tmp_path):
    py, _ = fresh_python
    proc = run(
        [str(py), "-m", "lm_eval", "--model", "hf-region-ablated", "--model_args", f"pretrained={tiny_model_dir}",
         "--tasks", "lingreg_ppl_en", "--limit", "1", "--device", "cpu", "--output_path", str(tmp_path)],
        cwd="/",
    )
    assert proc.returncode == 0 and list(tmp_path.rglob("results*.json"))
