"""The lm-eval model wrappers: thin `HFLM` subclasses that change the weights once after loading.

`hf-lingreg`: the unchanged model, with token counts (token perplexity) and provenance.
`hf-region-ablated`: every HFLM model_arg, plus `mask` (path or shipped mask name) and
`mask_value` (default 0.0).
`hf-perturbed`: every HFLM model_arg, plus one or more perturbations (`PerturbedLM`).
`pretrained` may be omitted for the bundled default model.

What a run did is recorded in the results JSON under `config.lingreg`; code that evaluates
several conditions on one loaded model says what each one is with `lm.recording(...)`.
`lm.ablation.restore()` and `lm.perturbation.restore()` give the unchanged model back.

Tensor-parallel (`tp_plan=auto` under torchrun; each process edits its own shards) and
data-parallel (`accelerate launch`, on GPUs or CPUs) runs give one process's results.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from lm_eval.models.huggingface import HFLM

from lm_eval_lingreg import __version__, progress
from lm_eval_lingreg.bundled import DEFAULT_MODEL, resolve_pretrained
from lm_eval_lingreg.errors import LingregError, ModelLoadError, close_matches
from lm_eval_lingreg.perturbation import KEYS as PERTURBATION_KEYS

__all__ = ["TokenCountedLoglik", "ROLLING_BOS", "LingregLM", "RegionAblatedLM", "PerturbedLM"]

log = logging.getLogger(__name__)

#: Keyword arguments of transformers' `from_pretrained` that HFLM passes through (not exhaustive).
_FROM_PRETRAINED = {
    "device_map",
    "attn_implementation",
    "load_in_8bit",
    "load_in_4bit",
    "low_cpu_mem_usage",
    "quantization_config",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "cache_dir",
    "local_files_only",
    "token",
    "use_safetensors",
    "variant",
    "offload_state_dict",
    "torch_dtype",
}


#: HFLM arguments that differ across the supported lm-eval versions, and whether this one takes them.
_HFLM_TAKES = {k: k in inspect.signature(HFLM.__init__).parameters for k in ("softmax_dtype", "dtype", "tp_plan")}


class TokenCountedLoglik(float):
    """A rolling log-likelihood that also carries how many tokens it scored."""

    n_tokens: int

    def __new__(cls, value: float, n_tokens: int) -> TokenCountedLoglik:
        obj = super().__new__(cls, value)
        obj.n_tokens = n_tokens
        return obj

    def __reduce__(self):
        return (TokenCountedLoglik, (float(self), self.n_tokens))


#: How a rolling log-likelihood treats a tokenizer's BOS: `context` (default) scores only the document's own
#: tokens, with BOS as context, as a plain Hugging Face forward on BOS + document does; `score` keeps lm-eval
#: 0.4.13's behaviour, which also scores p(BOS | BOS) when the tokenizer adds a BOS (Gemma's, Llama's do).
ROLLING_BOS = ("context", "score")


class LingregLM(HFLM):
    """`lm_eval --model hf-lingreg`: HFLM that scores documents by their own tokens (`rolling_bos`), reports token
    counts (token perplexity) and what was scored and how fast, and records lingreg provenance."""

    #: model_args this wrapper adds to HFLM's
    OWN_ARGS: frozenset[str] = frozenset({"rolling_bos"})

    def __init__(self, pretrained: Any = None, rolling_bos: str = "context", **kwargs: Any) -> None:
        if rolling_bos not in ROLLING_BOS:
            raise ModelLoadError(
                f"rolling_bos={rolling_bos!r}: use context (score the document's own tokens, default) or score (lm-eval's own, also p(BOS|BOS))"
            )
        self._check_args(kwargs)
        if kwargs.get("tp_plan") not in (None, "") and not _HFLM_TAKES["tp_plan"]:
            from importlib.metadata import version

            raise ModelLoadError(
                f"tp_plan: tensor-parallel evaluation needs lm-eval >= 0.4.12 (this is {version('lm_eval')}); "
                "upgrade it, or evaluate on one device, with parallelize=True or with accelerate launch"
            )
        if "torch_dtype" in kwargs and "dtype" not in kwargs and _HFLM_TAKES["dtype"]:
            kwargs["dtype"] = kwargs.pop("torch_dtype")  # the name older transformers used; HFLM takes `dtype`
        dtype = kwargs.get("dtype")
        if isinstance(dtype, str) and dtype not in ("auto", "float32", "bfloat16", "float16", "float64"):
            raise ModelLoadError(f"dtype={dtype!r}: use auto, float32, bfloat16 or float16")
        if dtype in ("bfloat16", "float16") and "softmax_dtype" not in kwargs and _HFLM_TAKES["softmax_dtype"]:
            kwargs["softmax_dtype"] = "float32"  # half-precision weights, fp32 log-softmax: honest log-likelihoods
        try:
            super().__init__(pretrained=resolve_pretrained(pretrained), **kwargs)
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise
            raise ModelLoadError(f"{self._model_name()}: {e}; it is not a model_arg of this model, of HFLM or of from_pretrained") from e
        except LingregError:
            raise
        except (OSError, RuntimeError, ValueError) as e:
            first = " ".join(str(e).split())[:300]
            if pretrained in (None, "", DEFAULT_MODEL):
                from lm_eval_lingreg.bundled import bundled_cache_error

                raise bundled_cache_error(resolve_pretrained(pretrained), f"{type(e).__name__}: {first}") from e
            raise ModelLoadError(f"{self._model_name()}: cannot load model {pretrained!r}: {type(e).__name__}: {first}") from e
        self._split_over_processes()
        self._rolling_bos = rolling_bos
        self._in_rolling = False
        self._docs_to_tick = 0
        self._costs = {"tokens": 0, "seconds": 0.0}
        param = next(self._model.parameters())
        self._lingreg_info: dict[str, Any] = {
            "version": __version__,
            "rolling_bos": rolling_bos,
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": str(param.device),
        }
        if pretrained in (None, ""):
            self._lingreg_info["pretrained"] = f"{DEFAULT_MODEL} (bundled)"
        if kwargs.get("tp_plan") not in (None, ""):
            self._lingreg_info["tensor_parallel"] = int(os.environ.get("WORLD_SIZE", "1"))  # processes sharing each weight
        elif self.world_size > 1:
            self._lingreg_info["data_parallel"] = self.world_size  # processes sharing the documents

    def _split_over_processes(self) -> None:
        """Under `accelerate launch` on CPUs, HFLM (0.4.10-0.4.13) counts GPUs to decide on data parallelism and finds
        none, so every process would evaluate every document; split them over the processes, as on GPUs."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1 and self.world_size == 1 and accelerator.device.type == "cpu":
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes

    @classmethod
    def _model_name(cls) -> str:
        from lm_eval_lingreg import MODELS

        return next((name for name, target in MODELS.items() if target.endswith(f":{cls.__name__}")), cls.__name__)

    @classmethod
    def _check_args(cls, kwargs: dict[str, Any]) -> None:
        """A model_arg that looks like a misspelt known one is an error, not something for from_pretrained."""
        known = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"} | cls.OWN_ARGS | LingregLM.OWN_ARGS | _FROM_PRETRAINED
        for key in kwargs:
            if key not in known and close_matches(key, known):
                raise ModelLoadError(f"unknown model_args key {key!r} for {cls._model_name()}{close_matches(key, known)}")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        if self._in_rolling and self._rolling_bos == "context" and add_special_tokens is None:
            add_special_tokens = False  # the document's own tokens; the rolling windows put BOS (the prefix token) before them
        return super().tok_encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        t0 = time.perf_counter()
        self._in_rolling = True
        self._docs_to_tick = len(requests)
        try:
            lls = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or progress.harness_quiet())
            progress.tick(self._docs_to_tick)  # a document of several windows ticked once per window: the rest now
            # get_rolling_token_windows predicts every token of the encoded string once.
            out = [TokenCountedLoglik(ll, len(self.tok_encode(req.args[0]))) for ll, req in zip(lls, requests, strict=True)]
        finally:
            self._in_rolling = False
            self._docs_to_tick = 0
        self._costs["tokens"] += sum(x.n_tokens for x in out)
        self._costs["seconds"] += time.perf_counter() - t0
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        out = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm or progress.harness_quiet(), override_bs=override_bs)
        if self._in_rolling:  # a window at a time: at most the documents of this call
            n = min(len(requests), self._docs_to_tick)
            self._docs_to_tick -= n
            progress.tick(n)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        t0 = time.perf_counter()
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm or progress.harness_quiet())
        finally:
            self._costs["generation_seconds"] = self._costs.get("generation_seconds", 0.0) + time.perf_counter() - t0

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs: Any):
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        # every row of a batch runs until the last one stops: these are the tokens computed
        self._costs["tokens_generated"] = self._costs.get("tokens_generated", 0) + (out.shape[1] - context.shape[1]) * out.shape[0]
        progress.tick(out.shape[0])
        return out

    @contextlib.contextmanager
    def recording(self, **info: Any) -> Iterator[None]:
        """Add `info` to what results record under `config.lingreg` while evaluating in this block."""
        saved = dict(self._lingreg_info)
        self._lingreg_info.update(info)
        try:
            yield
        finally:
            self._lingreg_info = saved

    def get_model_info(self) -> dict:
        """Provenance and the scoring costs since the last call (lm-eval calls this once per evaluation, after the requests)."""
        tokens, seconds = self._costs["tokens"], self._costs["seconds"]
        generated, gen_seconds = self._costs.get("tokens_generated", 0), self._costs.get("generation_seconds", 0.0)
        self._costs = {"tokens": 0, "seconds": 0.0}
        costs = {"tokens_scored": tokens, "scoring_seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds else None}
        if gen_seconds:
            costs |= {"tokens_generated": generated, "generation_seconds": round(gen_seconds, 3), "generated_per_second": round(generated / gen_seconds, 1)}
        return {**super().get_model_info(), "lingreg": {**self._lingreg_info, **costs}}


class RegionAblatedLM(LingregLM):
    """`lm_eval --model hf-region-ablated --model_args [pretrained=...,]mask=core.safetensors`."""

    OWN_ARGS = frozenset({"mask", "mask_value"})

    def __init__(self, pretrained: Any = None, mask: str | None = None, mask_value: float | str = 0.0, **kwargs: Any) -> None:
        from lm_eval_lingreg.region_io import file_sha256, held_value, load_region, resolve
        from lm_eval_lingreg.regions import apply

        region = path = None
        if mask not in (None, ""):  # read and check the file before spending time on the model
            path = resolve(mask)
            region = load_region(path)
        super().__init__(pretrained=pretrained, **kwargs)
        self.ablation = None  # the changed entries' original values: `lm.ablation.restore()` gives the unchanged model back
        if region is None:
            self._lingreg_info["mask"] = None
            log.warning("hf-region-ablated: no `mask` given, evaluating the unchanged model (hf-lingreg does that without this warning)")
            return
        self.ablation = apply(region, self._model, mask_value)
        self._lingreg_info.update(
            mask=str(mask),
            mask_path=str(path),
            mask_sha256=file_sha256(path),
            mask_value=held_value(mask_value, region, self._model),  # as the weights hold it: 0.1 in bfloat16 is 0.10009765625
            entries_changed=sum(int(i.numel()) for i in region.indices.values()),  # all processes' (each changed its own shards')
            tensors_changed=sum(1 for i in region.indices.values() if i.numel()),
            mask_metadata=region.metadata,
        )
        log.info("hf-region-ablated: set %d entries in %d tensors to %s", region.num_selected, len(region.indices), mask_value)


class PerturbedLM(LingregLM):
    """`lm_eval --model hf-perturbed --model_args [pretrained=...,]layer=1,dim=2100,op=mul,value=4`.

    Perturbation keys (see `lm_eval_lingreg.perturbation`): `param`+`index` (or `row`+`col`) for
    one entry, `layer`/`layers`+`dim`/`dims` [+`modules`] for a hidden dimension, `mask` for a
    region; `op`, `value`, `on`, `scale`, `seed`. `perturb=` takes a spec file (YAML/JSON) or the
    compact form `k=v:k=v;k=v:...` for several perturbations, applied in order.
    """

    OWN_ARGS = frozenset({"perturb", *PERTURBATION_KEYS})

    def __init__(self, pretrained: Any = None, perturb: str | None = None, **kwargs: Any) -> None:
        from lm_eval_lingreg.errors import PerturbationError
        from lm_eval_lingreg.interventions import perturb as apply_perturbations
        from lm_eval_lingreg.perturbation import parse_spec
        from lm_eval_lingreg.region_io import load_region

        self._check_args(kwargs)  # a misspelt key (opp=, valeu=) is named before the spec is judged without it
        direct = {k: kwargs.pop(k) for k in list(kwargs) if k in PERTURBATION_KEYS}
        perturbations = parse_spec(str(perturb)) if perturb not in (None, "") else []
        if direct:
            perturbations += parse_spec(direct)
        if not perturbations:
            raise PerturbationError(
                "hf-perturbed needs a perturbation in --model_args, e.g. layer=1,dim=2100,op=mul,value=4 "
                "or param=<name>,index=<i>,op=mul,value=4 or perturb=spec.yaml"
            )
        for p in perturbations:  # region, neuron-region and vector files are read and checked before the model loads
            if p.kind == "region" and isinstance(p.mask, str):
                load_region(p.mask)
            elif p.kind == "neuron" and isinstance(p.neurons, str):
                load_region(p.neurons)
            elif p.kind == "steering":
                from lm_eval_lingreg.steering import load_vectors

                load_vectors(p.vector)
        super().__init__(pretrained=pretrained, **kwargs)
        self.perturbation = apply_perturbations(self._model, perturbations, tokenizer=self.tokenizer)
        self._lingreg_info.update(self.perturbation.info())
        log.info("hf-perturbed: %s changed %d entries", self._lingreg_info["perturbation_spec"], self.perturbation.entries_changed)
