"""lm-eval-lingreg: find, ablate, perturb and freeze the linguistic regions of causal LMs.

Importing this package is cheap (no torch); see `register()` for lm-eval integration.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
