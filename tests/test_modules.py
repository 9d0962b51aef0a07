"""The package's modules: each public module says what it exports, no module reaches into another's private
names, decoder layers are found in names by one pattern, anatomy's, and activations are captured and changed through
one primitive, capture's forward hooks."""

from __future__ import annotations

import ast
import importlib

import pytest

from helpers import REPO

PACKAGE = REPO / "lm_eval_lingreg"
PUBLIC_MODULES = [
    "regions", "region_io", "scores", "official", "selection", "results", "report", "training", "freeze", "models",
    "evaluation", "perturbation", "interventions", "importance", "anatomy", "bundled", "sources", "capture", "progress",
    "rules", "langid", "confusion", "strict", "language_tasks", "udhr", "steering",
]  # fmt: skip


def _defined(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_a_public_module_exports_its_own_public_names(name):
    module = importlib.import_module(f"lm_eval_lingreg.{name}")
    exported = module.__all__
    assert len(exported) == len(set(exported)) and exported
    assert not [n for n in exported if n.startswith("_")]
    assert all(hasattr(module, n) for n in exported)
    # defined here, not re-exported from another module
    assert set(exported) <= _defined(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8")))


def test_no_module_imports_a_private_name_of_another():
    private_modules = {p.stem for p in PACKAGE.rglob("_*.py") if not p.name.startswith("__")}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lm_eval_lingreg")):
                found += [
                    f"{path.relative_to(REPO)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name not in private_modules
                ]
    assert not found


def test_only_anatomy_spells_the_decoder_layer_pattern():
    spelled = [
        str(p.relative_to(REPO))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "anatomy.py" and any(s in p.read_text(encoding="utf-8") for s in (r"layers\.\d", r"layers\.(\d"))
    ]
    assert not spelled


def test_only_capture_hooks_the_forward_pass():
    hooking = [
        str(p.relative_to(REPO))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "capture.py"
        and any(s in p.read_text(encoding="utf-8") for s in ("register_forward_hook", "register_forward_pre_hook", "output_hidden_states"))
    ]
    assert not hooking
