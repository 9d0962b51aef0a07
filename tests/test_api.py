"""The public surface: importable from the package top level, lazily (importing the package loads no torch), pinned."""

from __future__ import annotations

import subprocess
import sys

import lm_eval_lingreg

PUBLIC = [
    "Region", "apply_region", "validate_region", "load_region", "save_region", "shipped_masks", "scope_shapes", "prepare",
    "sum_gradients", "ScoreSet", "score_languages", "select_core", "select_monolingual", "select_random",
    "Perturbation", "parse_spec", "perturb",
    "TrainConfig", "further_pretrain", "FrozenRegion", "FreezeCallback",
    "LingregLM", "RegionAblatedLM", "PerturbedLM", "evaluate_conditions",
    "Run", "read_run", "load_runs", "build_table", "render_table", "load_baseline", "compare", "load_rules", "apply_rules", "gate",
    "identify", "language_metrics", "chrf",
    "diffmean", "save_vectors", "load_vectors", "export_steered",
    "LingregError",
]  # fmt: skip


def test_the_public_names_are_pinned_and_all_resolve():
    assert lm_eval_lingreg.__all__ == ["__version__", "MODELS", "register", *PUBLIC]
    for name in PUBLIC:
        assert getattr(lm_eval_lingreg, name) is not None, name
    assert set(PUBLIC) <= set(dir(lm_eval_lingreg))


def test_importing_the_package_stays_cheap():
    code = "import sys, lm_eval_lingreg; print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_no_public_name_hides_a_module_of_the_package():
    from pathlib import Path

    package = Path(lm_eval_lingreg.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} | {p.name for p in package.iterdir() if p.is_dir()}
    assert not set(PUBLIC) & modules


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lm_eval_lingreg.nope  # noqa: B018


def test_the_readme_python_example_runs_on_the_public_surface(tiny_model_dir):
    """What the package docstring shows, on a tiny model: a region applied and restored, a table, a language."""
    import torch

    import lm_eval_lingreg as lr

    from helpers import make_tiny, snapshot

    model = make_tiny("llama")
    before = snapshot(model)
    region = lr.select_random(lr.scope_shapes(model), 0.1, seed=0)
    with lr.apply_region(region, model):
        assert any(not torch.equal(before[k], v) for k, v in snapshot(model).items())
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    assert lr.identify("Tous les êtres humains naissent libres et égaux en dignité et en droits.")[0] == "fr"
    runs = lr.load_runs([__import__("helpers").REPO / "docs" / "results" / "regions" / "base"])
    assert "English (en)" in lr.render_table(lr.build_table(runs))


def test_the_python_examples_in_the_docs_import_only_public_names():
    import re

    from helpers import REPO

    pages = [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
    found = 0
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.splitlines():
                if "lm_eval_lingreg" not in line:
                    continue
                m = re.match(r"\s*from lm_eval_lingreg import (.+)$", line)
                assert m, f"{page.name}: {line.strip()!r} reaches into a module; import from the package top level"
                names = [n.strip() for n in m.group(1).split("#")[0].split(",")]
                assert set(names) <= set(lm_eval_lingreg.__all__), (page.name, names)
                found += 1
    assert found >= 3
