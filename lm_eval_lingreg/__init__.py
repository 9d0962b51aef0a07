"""lm-eval-lingreg: find, ablate, perturb and freeze the linguistic regions of causal LMs.

Importing this package is cheap (no torch): the public names below are loaded on first use.

    import lm_eval_lingreg as lr

    region = lr.load_region("core")                        # a shipped mask, or a file
    with lr.apply_region(region, model): ...               # zeroed, then restored bit for bit
    runs = lr.load_runs(["out/"]); print(lr.render_table(lr.build_table(runs, ratio_to="base")))
    lr.identify("Bonjour tout le monde")                   # ('fr', 0.99...)

See `register()` for lm-eval integration.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The public surface: name -> "module:attribute", imported on first access.
_PUBLIC = {
    # regions and their files
    "Region": "regions:Region",
    "apply_region": "regions:apply",
    "validate_region": "regions:validate",
    "load_region": "region_io:load_region",
    "save_region": "region_io:save_region",
    "shipped_masks": "region_io:shipped_masks",
    "scope_shapes": "anatomy:scope_shapes",
    "prepare": "bundled:prepare",
    # scoring and selection
    "sum_gradients": "importance:sum_gradients",
    "ScoreSet": "scores:ScoreSet",
    "score_languages": "scores:score_languages",
    "select_core": "selection:select_core",
    "select_monolingual": "selection:select_monolingual",
    "select_random": "selection:select_random",
    # perturbations
    "Perturbation": "perturbation:Perturbation",
    "parse_spec": "perturbation:parse_spec",
    "perturb": "interventions:perturb",
    # freezing and further pre-training
    "TrainConfig": "training:TrainConfig",
    "further_pretrain": "training:further_pretrain",
    "FrozenRegion": "freeze:FrozenRegion",
    "FreezeCallback": "freeze:FreezeCallback",
    # evaluation through lm-eval
    "LingregLM": "models:LingregLM",
    "RegionAblatedLM": "models:RegionAblatedLM",
    "PerturbedLM": "models:PerturbedLM",
    "evaluate_conditions": "evaluation:evaluate_conditions",
    # results, tables and checks
    "Run": "results:Run",
    "read_run": "results:read_run",
    "load_runs": "results:load_runs",
    "build_table": "report:build_table",
    "render_table": "report:render_table",
    "load_baseline": "report:load_baseline",
    "compare": "report:compare",
    "load_rules": "rules:load_rules",
    "apply_rules": "rules:apply_rules",
    "gate": "rules:gate",
    # which language comes out
    "identify": "langid:identify",
    "language_metrics": "confusion:language_metrics",
    "chrf": "confusion:chrf",
    # steering the output language
    "diffmean": "steering:diffmean",
    "save_vectors": "steering:save_vectors",
    "load_vectors": "steering:load_vectors",
    "export_steered": "steering:export_steered",
    # errors
    "LingregError": "errors:LingregError",
}

__all__ = ["__version__", "MODELS", "register", *_PUBLIC]


def __getattr__(name: str):
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'lm_eval_lingreg' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(f"lm_eval_lingreg.{module}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


#: lm-eval model names provided by this package -> lazy "module:Class" targets.
MODELS = {
    "hf-lingreg": "lm_eval_lingreg.models:LingregLM",
    "hf-region-ablated": "lm_eval_lingreg.models:RegionAblatedLM",
    "hf-perturbed": "lm_eval_lingreg.models:PerturbedLM",
}


def register() -> None:
    """Register our models with lm-eval's registry (idempotent; imports no torch)."""
    # lm-eval fills its registry with the built-in models only when it finds it empty, so
    # load those first or ours would hide them ("no model named 'hf'").
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)
