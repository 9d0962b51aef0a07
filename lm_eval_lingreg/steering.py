"""Residual steering vectors: the difference of mean activations between two languages (DiffMean).

`diffmean(model, tokenizer, "en", "fr")` measures, after each decoder layer, the mean residual-stream
activation over the tokens of French calibration sentences minus that over English ones (eld sentences,
offline; the BOS position is left out, since it is the same in every sentence and carries no language).
Adding `value` times that vector to the residual stream (`vector=<file>:value=4`, see `perturbation`)
steers what language the model writes.

Vectors are stored as `.safetensors` (one 1-D float32 tensor `layers.<i>` per layer, with how they were
made in the metadata) and read back only from that format, never from a pickle. `export_steered` writes
the same vectors in the `.pt` format of lm-eval's own `steered` model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model
from lm_eval_lingreg.errors import PerturbationError

__all__ = ["FORMAT", "NEURON_SAMPLES", "diffmean", "neuron_statistic", "save_vectors", "load_vectors", "check_vectors", "hookpoints", "export_steered"]

#: The `format` metadata field of a steering-vector file.
FORMAT = "lingreg-steering-vectors"
_PREFIX = "layers"


def diffmean(
    model: torch.nn.Module,
    tokenizer: Any,
    source: str,
    target: str,
    layers: Sequence[int] | None = None,
    samples: int = 64,
    batch_size: int = 4,
    info: dict[str, Any] | None = None,
    data: str | None = None,
) -> dict[int, torch.Tensor]:
    """{layer: mean residual stream after that layer on `target` sentences minus that on `source` sentences}
    (float32), over every real token but BOS, of `samples` calibration sentences per language (eld, or the
    corpus `data` names, as `corpora.make_samples` reads it). `info`, when given, receives the token counts
    per language."""
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.interventions import decoder_layers

    src, tgt = _language(source), _language(target)
    if src == tgt:
        raise PerturbationError(f"source and target are both {src!r}: a steering vector needs two different languages")
    available = decoder_layers(model)
    if not available:
        raise PerturbationError("this model has no recognisable decoder layers (layers.<n>) to measure")
    chosen = sorted(available) if layers is None else sorted(set(layers))
    bad = [la for la in chosen if la not in available]
    if bad or not chosen:
        raise PerturbationError(f"layer {bad[0] if bad else '(none)'} out of range: this model has layers 0..{max(available)}")
    names = {id(m): n for n, m in base_model(model).named_modules()}
    modules = {la: names[id(available[la])] for la in chosen}
    means: dict[str, dict[int, torch.Tensor]] = {}
    tokens: dict[str, int] = {}
    for lang in (src, tgt):
        ids = [list(s) for s in make_samples(tokenizer, lang, samples, data=data).input_ids if len(s)]
        sums, count = _sums(model, ids, modules, tokenizer.bos_token_id, tokenizer.pad_token_id or 0, batch_size)
        if count == 0:
            from lm_eval_lingreg.errors import CorpusError

            raise CorpusError(f"no calibration tokens for {lang} (the sentences are empty after BOS); cannot measure its mean activation")
        tokens[lang] = count
        means[lang] = {la: s / count for la, s in sums.items()}
    if info is not None:
        info["tokens"] = tokens
    if all(bool(torch.equal(means[tgt][la], means[src][la])) for la in chosen):
        raise PerturbationError(
            f"the mean activations on the {src} and {tgt} calibration text are identical, so the vector would be zero: the same text "
            f"was read for both languages ({'--data ' + str(data) + ' names one text for both' if data else 'check the corpus'}); give each "
            "language its own text, e.g. a folder with <iso>.txt per language"
        )
    vectors = {la: (means[tgt][la] - means[src][la]).float() for la in chosen}
    bad_layer = next((la for la, v in vectors.items() if not bool(torch.isfinite(v).all())), None)
    if bad_layer is not None:
        raise PerturbationError(f"the mean activation after layer {bad_layer} is not finite (the model overflows on the calibration text)")
    return vectors


def _sums(
    model: torch.nn.Module, ids: list[list[int]], modules: Mapping[int, str], bos: int | None, pad_id: int, batch_size: int
) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: float64 sum of the layer's output over every real token but a leading BOS}, number of those tokens)."""
    sums = {la: torch.zeros((), dtype=torch.float64) for la in modules}

    def add(la: int, values: torch.Tensor) -> None:
        sums[la] = sums[la] + values.double().sum(0).cpu()

    count = _bos_free_pass(model, ids, modules, "output", bos, pad_id, batch_size, add)
    return sums, count


def _bos_free_pass(
    model: torch.nn.Module,
    ids: list[list[int]],
    modules: Mapping[int, str],
    kind: str,
    bos: int | None,
    pad_id: int,
    batch_size: int,
    consume: Callable[[int, torch.Tensor], None],
) -> int:
    """Run the model over `ids`, calling `consume(key, values)` with each named module's input or output
    (`kind`) at every real token but a leading BOS, as (tokens, features); returns the number of those tokens."""
    from lm_eval_lingreg.capture import activation_pass

    count = 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        # a leading BOS, in the (rows x width) layout activation_pass flattens to
        skip = torch.zeros(len(chunk), max(len(s) for s in chunk), dtype=torch.bool)
        skip[:, 0] = torch.tensor([bos is not None and s[0] == bos for s in chunk])
        skip = skip.reshape(-1)

        def collect_for(key: int, skip: torch.Tensor):
            def collect(values: torch.Tensor, keep: torch.Tensor) -> None:
                consume(key, values[keep & ~skip.to(keep.device)])

            return collect

        activation_pass(model, chunk, {name: collect_for(key, skip) for key, name in modules.items()}, kind, batch_size=len(chunk), pad_id=pad_id)
        count += sum(len(s) for s in chunk) - int(skip.sum())
    return count


#: Neuron means and medians (`op=mean|median` with `lang=`) are measured on this many eld sentences of the language.
NEURON_SAMPLES = 32


def neuron_statistic(
    model: torch.nn.Module,
    tokenizer: Any,
    lang: str,
    modules: Mapping[int, str],
    indices: Mapping[int, torch.Tensor],
    stat: str,
    samples: int = NEURON_SAMPLES,
    batch_size: int = 4,
) -> dict[int, torch.Tensor]:
    """{layer: the mean or median (`stat`) of neurons `indices[layer]`'s activation, the input of the FFN down
    projection `modules[layer]`, over every token but BOS of `samples` eld sentences of `lang`} (float32),
    measured on the model as it is now."""
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.errors import CorpusError

    if stat not in ("mean", "median"):
        raise PerturbationError(f"unknown neuron statistic {stat!r}; expected mean or median")
    code = _language(lang)
    ids = [list(s) for s in make_samples(tokenizer, code, samples).input_ids if len(s)]
    if not ids:
        raise CorpusError(f"no calibration sentences for {code}; cannot measure its neurons' {stat} activation")
    chosen = {la: idx.long() for la, idx in indices.items()}
    values: dict[int, list[torch.Tensor]] = {la: [] for la in modules}

    def keep(la: int, x: torch.Tensor) -> None:
        values[la].append(x[:, chosen[la].to(x.device)].float().cpu())

    count = _bos_free_pass(model, ids, modules, "input", tokenizer.bos_token_id, tokenizer.pad_token_id or 0, batch_size, keep)
    if count == 0:
        raise CorpusError(f"no calibration tokens for {code} (the sentences are empty after BOS); cannot measure its neurons' {stat} activation")
    out = {}
    for la, parts in values.items():
        x = torch.cat(parts)
        out[la] = x.mean(0) if stat == "mean" else torch.quantile(x, 0.5, dim=0)
    bad = next((la for la, v in out.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise PerturbationError(f"the {stat} activation of the neurons of layer {bad} is not finite (the model overflows on the {code} calibration text)")
    return out


def _language(value: Any) -> str:
    """One language code (a steering vector goes from one language to one other)."""
    from lm_eval_lingreg.errors import UnknownLanguageError
    from lm_eval_lingreg.languages import parse_languages

    if not isinstance(value, str) or "," in value or value.strip().lower() == "all":
        raise UnknownLanguageError(f"a steering vector goes from one language to another; got {value!r}, expected one code like en or fr")
    return parse_languages([value])[0]


def _key(layer: int) -> str:
    return f"{_PREFIX}.{layer}"


def _layer_of(key: str) -> int | None:
    prefix, _, number = key.partition(".")
    return int(number) if prefix == _PREFIX and number.isdigit() and str(int(number)) == number else None


def check_vectors(vectors: Mapping[int, torch.Tensor], where: str = "steering vectors") -> int:
    """Refuse vectors that are not one finite 1-D float tensor of one size per layer; return that size."""
    if not vectors:
        raise PerturbationError(f"{where}: no vectors")
    sizes = set()
    for la, v in vectors.items():
        if isinstance(la, bool) or not isinstance(la, int) or la < 0:
            raise PerturbationError(f"{where}: layer {la!r} is not a layer number (0, 1, ...)")
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise PerturbationError(f"{where}: the vector of layer {la} is not a floating-point tensor")
        if v.dim() != 1 or v.numel() == 0:
            raise PerturbationError(f"{where}: the vector of layer {la} has shape {tuple(v.shape)}; a steering vector is 1-D (the hidden size)")
        if not bool(torch.isfinite(v).all()):
            raise PerturbationError(f"{where}: the vector of layer {la} holds NaN or inf")
        sizes.add(v.numel())
    if len(sizes) != 1:
        raise PerturbationError(f"{where}: the vectors have different sizes {sorted(sizes)}; every layer's vector has the model's hidden size")
    return sizes.pop()


def save_vectors(vectors: Mapping[int, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `vectors` as `.safetensors` (`layers.<i>`: float32), atomically; `metadata` values are stored as
    strings (JSON for anything that is not a string)."""
    from safetensors.torch import save_file

    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.outputs import atomic_path, sort_safetensors_header

    hidden = check_vectors(vectors)
    header = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in (metadata or {}).items()}
    header.update(format=FORMAT, format_version="1", lingreg_version=__version__, hidden_size=str(hidden), layers=json.dumps(sorted(vectors)))
    tensors = {_key(la): v.detach().float().cpu().contiguous() for la, v in sorted(vectors.items())}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        sort_safetensors_header(tmp)
    return Path(path)


def load_vectors(path: str | os.PathLike) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """({layer: float32 vector}, metadata) from a `.safetensors` steering-vector file; never unpickles."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.exists():
        raise PerturbationError(f"steering-vector file {path} not found (write one with `lingreg steer-vector --from en --to fr --out {path.name}`)")
    if not path.is_file():
        raise PerturbationError(f"{path} is not a regular file; a steering-vector file is a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(sorted((f.metadata() or {}).items()))
            keys = list(f.keys())
            raw = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises several types for a file that is not its format
        raise PerturbationError(
            f"{path}: not a .safetensors steering-vector file ({' '.join(str(e).split())[:200]}); "
            "vectors are read from .safetensors only, never from a pickle (.pt): write them with `lingreg steer-vector`"
        ) from e
    if metadata.get("format", FORMAT) != FORMAT:
        raise PerturbationError(f"{path}: not a steering-vector file (format={metadata.get('format')!r}, expected {FORMAT!r})")
    vectors: dict[int, torch.Tensor] = {}
    for k, v in raw.items():
        la = _layer_of(k)
        if la is None:
            raise PerturbationError(f"{path}: tensor {k!r} is not named {_PREFIX}.<layer> (e.g. {_key(3)!r}); not a steering-vector file")
        vectors[la] = v
    check_vectors(vectors, str(path))
    return {la: v.float() for la, v in sorted(vectors.items())}, metadata


def hookpoints(model: torch.nn.Module, layers: Sequence[int]) -> dict[int, str]:
    """{layer: the decoder layer's name in `model.base_model.named_modules()`}: where lm-eval's `steered` model hooks."""
    from lm_eval_lingreg.interventions import decoder_layers

    hf = base_model(model)
    root = getattr(hf, "base_model", hf)
    names = {id(m): n for n, m in root.named_modules()}
    available = decoder_layers(model)
    out = {}
    for la in layers:
        if la not in available:
            raise PerturbationError(f"layer {la} out of range: this model has layers 0..{max(available) if available else '?'}")
        if id(available[la]) not in names:
            raise PerturbationError(f"the decoder layer {la} is not under the model's base_model; lm-eval's steered model cannot hook it")
        out[la] = names[id(available[la])]
    return out


def export_steered(vectors: Mapping[int, torch.Tensor], path: str | os.PathLike, alpha: float, model: torch.nn.Module) -> Path:
    """Write `vectors` for lm-eval's `steered` model (`--model steered --model_args steer_path=<path>`): a `.pt`
    of plain tensors, floats, strings and None, so `torch.load(path, weights_only=True)` reads it."""
    from lm_eval_lingreg.anatomy import hidden_size
    from lm_eval_lingreg.outputs import atomic_path

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise PerturbationError(f"alpha must be a finite number, got {alpha!r}")
    if abs(alpha) > torch.finfo(torch.float32).max:
        raise PerturbationError(f"alpha {alpha:g} overflows float32 (largest {torch.finfo(torch.float32).max:.4g}); use a smaller coefficient")
    size = check_vectors(vectors)
    hidden = hidden_size(model)
    if hidden is not None and size != hidden:
        raise PerturbationError(f"the vectors have size {size} but the model's hidden size is {hidden}")
    if not str(path).endswith((".pt", ".pth")):
        raise PerturbationError(f"{path}: lm-eval's steered model reads .pt or .pth files; name the output <name>.pt")
    names = hookpoints(model, sorted(vectors))
    config = {
        names[la]: {
            "steering_vector": vectors[la].detach().float().cpu().contiguous().clone(),
            "steering_coefficient": float(alpha),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
        for la in sorted(vectors)
    }
    with atomic_path(path) as tmp:
        torch.save(config, tmp)
    return Path(path)
