"""The lm-eval model wrappers: thin `HFLM` subclasses that change the weights once after loading.

`hf-region-ablated`: every HFLM model_arg, plus `mask` (path or shipped mask name) and
`mask_value` (default 0.0).
`hf-perturbed`: every HFLM model_arg, plus one or more perturbations (`PerturbedLM`).
`pretrained` may be omitted for the bundled default model.
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.models.huggingface import HFLM

from lm_eval_lingreg import __version__
from lm_eval_lingreg.bundled import resolve_pretrained
from lm_eval_lingreg.region_io import file_sha256, load_region, resolve
from lm_eval_lingreg.regions import Region, apply

log = logging.getLogger(__name__)


class TokenCountedLoglik(float):
    """A rolling log-likelihood that also carries how many tokens it scored."""

    n_tokens: int

    def __new__(cls, value: float, n_tokens: int) -> TokenCountedLoglik:
        obj = super().__new__(cls, value)
        obj.n_tokens = n_tokens
        return obj

    def __reduce__(self):
        return (TokenCountedLoglik, (float(self), self.n_tokens))


class _LingregHFLM(HFLM):
    """HFLM that reports token counts (for token perplexity) and lingreg provenance."""

    def __init__(self, pretrained: Any = None, **kwargs: Any) -> None:
        super().__init__(pretrained=resolve_pretrained(pretrained), **kwargs)
        self._lingreg_info: dict[str, Any] = {"version": __version__}
        if pretrained in (None, ""):
            self._lingreg_info["pretrained"] = "gemma-3-270m (bundled)"

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        lls = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        # get_rolling_token_windows predicts every token of the encoded string once.
        return [TokenCountedLoglik(ll, len(self.tok_encode(req.args[0]))) for ll, req in zip(lls, requests, strict=True)]

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "lingreg": self._lingreg_info}


class RegionAblatedLM(_LingregHFLM):
    """`lm_eval --model hf-region-ablated --model_args [pretrained=...,]mask=core.safetensors`."""

    def __init__(self, pretrained: Any = None, mask: str | None = None, mask_value: float | str = 0.0, **kwargs: Any) -> None:
        region: Region | None = None
        if mask:  # read and check the file before spending time on the model
            path = resolve(mask)
            region = load_region(path)
        super().__init__(pretrained=pretrained, **kwargs)
        if region is None:
            self._lingreg_info["mask"] = None
            log.warning("hf-region-ablated: no `mask` given, evaluating the unchanged model")
            return
        value = float(mask_value)
        apply(region, self._model, value)
        self._lingreg_info.update(
            mask=str(mask),
            mask_path=str(path),
            mask_sha256=file_sha256(path),
            mask_value=value,
            entries_changed=region.num_selected,
            tensors_changed=sum(1 for i in region.indices.values() if i.numel()),
            mask_metadata=region.metadata,
        )
        log.info("hf-region-ablated: set %d entries in %d tensors to %s", region.num_selected, len(region.indices), value)


class PerturbedLM(_LingregHFLM):
    """`lm_eval --model hf-perturbed --model_args [pretrained=...,]layer=1,dim=2100,op=mul,value=4`.

    Perturbation keys (see `lm_eval_lingreg.perturbation`): `param`+`index` (or `row`+`col`) for
    one entry, `layer`/`layers`+`dim`/`dims` [+`modules`] for a hidden dimension, `mask` for a
    region; `op`, `value`, `on`, `scale`, `seed`. `perturb=` takes a spec file (YAML/JSON) or the
    compact form `k=v:k=v;k=v:...` for several perturbations, applied in order.
    """

    def __init__(self, pretrained: Any = None, perturb: str | None = None, **kwargs: Any) -> None:
        from lm_eval_lingreg.perturbation import _KEYS, PerturbationError, parse_spec

        direct = {k: kwargs.pop(k) for k in list(kwargs) if k in _KEYS}
        perturbations = parse_spec(perturb) if perturb else []
        if direct:
            perturbations += parse_spec(direct)
        if not perturbations:
            raise PerturbationError(
                "hf-perturbed needs a perturbation in --model_args, e.g. layer=1,dim=2100,op=mul,value=4 "
                "or param=<name>,index=<i>,op=mul,value=4 or perturb=spec.yaml"
            )
        for p in perturbations:  # region files are read and checked before the model loads
            if p.kind == "region":
                load_region(resolve(p.mask))
        super().__init__(pretrained=pretrained, **kwargs)
        from lm_eval_lingreg.perturbation import perturb as apply_perturbations

        self.perturbation = apply_perturbations(self._model, perturbations)
        self._lingreg_info.update(self.perturbation.info())
        log.info("hf-perturbed: %s changed %d entries", self._lingreg_info["perturbation_spec"], self.perturbation.entries_changed)
