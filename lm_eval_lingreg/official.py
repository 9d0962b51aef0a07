"""Scores computed with the official code, imported as score files.

The official scorer writes one folder per checkpoint, `grad-mul-param_checkpoint_N/<parameter>.pt`, each file
a bf16 tensor of theta * summed gradient for one parameter. `import_official` reads one language's folder (in-scope
tensors only, loaded with `weights_only=True` and checked) and writes `<out_dir>/<lang>.safetensors` in the format
of `lm_eval_lingreg.scores`, so that `lingreg extract` builds regions from it like from scores made here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg import __version__
from lm_eval_lingreg.anatomy import DEFAULT_SCOPE
from lm_eval_lingreg.errors import ScoreFileError, UsageError
from lm_eval_lingreg.outputs import check_writable, clean_folder, output_lock
from lm_eval_lingreg.scores import IMPORTED_FINGERPRINT, check_score_targets, resumable, save_scores, score_path

__all__ = ["OFFICIAL_CHECKPOINT", "official_checkpoint", "import_official"]

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT = re.compile(r"grad-mul-param_checkpoint_(\d+)")


def official_checkpoint(folder: Path, samples: int | None = None) -> tuple[Path, int | None]:
    """The `grad-mul-param_checkpoint_N` folder to read: `folder` itself, or the one inside it with N = `samples`
    (default: the largest N found)."""
    if not folder.is_dir():
        raise ScoreFileError(f"{folder} is not a folder; give the official scorer's output folder or one of its grad-mul-param_checkpoint_N folders")
    m = OFFICIAL_CHECKPOINT.fullmatch(folder.name)
    if m:
        if samples is not None and samples != int(m.group(1)):
            raise ScoreFileError(f"{folder} holds the scores after {m.group(1)} samples, not {samples}")
        return folder, int(m.group(1))
    found = {int(m.group(1)): p for p in folder.iterdir() if p.is_dir() and (m := OFFICIAL_CHECKPOINT.fullmatch(p.name))}
    if not found:
        if any(folder.glob("*.pt")):
            return folder, samples
        raise ScoreFileError(f"{folder} holds neither grad-mul-param_checkpoint_N folders nor <parameter name>.pt files (the official scorer's layout)")
    n = max(found) if samples is None else samples
    if n not in found:
        raise ScoreFileError(f"{folder} has no grad-mul-param_checkpoint_{n}; found checkpoints {sorted(found)}; pass --samples with one of them")
    return found[n], n


def import_official(
    folder: str | os.PathLike,
    lang: str,
    out_dir: str | os.PathLike,
    model_label: str = "official",
    samples: int | None = None,
    scope: str = DEFAULT_SCOPE,
    overwrite: bool = False,
) -> Path:
    """Import one language's scores written by the official scorer (`grad-mul-param_checkpoint_N/<parameter>.pt`, bf16
    theta * summed gradient, every parameter) as `<out_dir>/<lang>.safetensors`: in-scope tensors only, loaded with
    `weights_only=True`, checked to be finite floating-point tensors backed by their data. Languages imported with the
    same `model_label` form a score set from which `lingreg extract` builds regions."""
    lang = _one_language(lang)
    out_dir = Path(out_dir)
    check_writable(out_dir, directory=True, into=True)
    check_score_targets([score_path(out_dir, lang)], lang)
    checkpoint, n = official_checkpoint(Path(folder), samples)
    scores, digest = _read_scores(checkpoint, scope)
    config = _config(scores, model_label, lang, n, digest, scope)
    with output_lock(out_dir):
        clean_folder(out_dir)
        path = score_path(out_dir, lang)
        if resumable(path, config, overwrite):
            log.info("%s: already imported from %s; reusing it", lang, checkpoint)
            return path
        info = {"samples": n, "tokens": None, "source": str(checkpoint.resolve()), "imported": "official", "lm_eval_lingreg": __version__}
        return save_scores(out_dir, lang, scores, info, config)


def _one_language(lang: str) -> str:
    """The one language `--lang` names (an official score folder holds a single language's scores)."""
    from lm_eval_lingreg.languages import parse_languages

    langs = parse_languages(lang)
    if len(langs) != 1:
        raise UsageError(f"--lang {lang!r}: an official score folder holds one language's scores; import each language with its own --lang")
    return langs[0]


def _read_scores(checkpoint: Path, scope: str) -> tuple[dict[str, torch.Tensor], str]:
    """The in-scope `<parameter>.pt` tensors of a checkpoint folder, checked, and a hash of their names, dtypes, shapes and bytes."""
    from lm_eval_lingreg.anatomy import compile_scope

    pattern = compile_scope(scope)
    scores: dict[str, torch.Tensor] = {}
    digest = hashlib.sha256()
    for f in sorted(checkpoint.glob("*.pt")):
        name = f.name[: -len(".pt")].removeprefix("module.")
        if not pattern.search(name):
            continue
        t = _read_tensor(f, name)
        scores[name] = t.contiguous()
        digest.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if not scores:
        raise ScoreFileError(f"{checkpoint}: no <parameter>.pt file matches the scope {scope!r} (names like model.layers.0.mlp.up_proj.weight.pt)")
    return scores, digest.hexdigest()


def _read_tensor(f: Path, name: str) -> torch.Tensor:
    """One parameter's scores: a finite floating-point tensor backed by its data, under a valid parameter name."""
    from lm_eval_lingreg.region_io import check_backed, torch_load
    from lm_eval_lingreg.regions import check_name

    advice = "The official scorer saves one plain tensor per file; this one was written by something else."
    t = torch_load(f, ScoreFileError, advice)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ScoreFileError(f"{f}: expected a floating-point tensor of scores, got {getattr(t, 'dtype', type(t).__name__)}")
    check_backed(t, name, f, ScoreFileError)
    if not bool(torch.isfinite(t).all()):
        raise ScoreFileError(f"{f}: the scores are not all finite; the official run that wrote it diverged")
    try:
        check_name(name)
    except Exception as e:  # noqa: BLE001 - a RegionError from the name check
        raise ScoreFileError(f"{f}: {e}") from e
    return t


def _config(scores: dict[str, torch.Tensor], model_label: str, lang: str, n: int | None, digest: str, scope: str) -> dict[str, Any]:
    """The configuration an imported score file records: the official protocol, with the dump's hash in place of the corpus's."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in scores.values()})
    return {
        "model": model_label,
        "model_fingerprint": IMPORTED_FINGERPRINT,
        "lang": lang,
        "samples": n,
        "data": "official",
        "corpus_sha256": digest,
        "unit": "documents",
        "seq_len": 512,
        "seed": None,
        "scope": scope,
        "loss_norm": "batch-token",
        "grad_dtype": ",".join(dtypes),
    }
