"""Score files and scoring runs: one `<lang>.safetensors` per language holding s_l for every in-scope tensor.

Each file is written atomically once its language is finished, with the scoring configuration
in its header: the model's weight fingerprint, a hash of the exact calibration token ids, and
every option. A rerun reuses a language's file only when all of that matches; when anything
differs it says what, and rescores only with `overwrite`. Timings are printed, never stored,
so two identical runs write identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg import __version__
from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, model_fingerprint, model_name
from lm_eval_lingreg.errors import ScoreFileError
from lm_eval_lingreg.lm_loss import DEFAULT_MAX_LOGITS_MB
from lm_eval_lingreg.outputs import atomic_path, check_writable, clean_folder, output_lock, sort_safetensors_header

log = logging.getLogger(__name__)
FORMAT = "lm-eval-lingreg/scores"


def config_sha(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_path(out_dir: str | os.PathLike, lang: str) -> Path:
    return Path(out_dir) / f"{lang}.safetensors"


def save_scores(out_dir: str | os.PathLike, lang: str, scores: Mapping[str, torch.Tensor], info: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
    from safetensors.torch import save_file

    header = {
        "format": FORMAT,
        "lang": lang,
        "config": json.dumps(config, sort_keys=True, default=str),
        "config_sha": config_sha(config),
        "info": json.dumps(info, sort_keys=True, default=str),
    }
    path = score_path(out_dir, lang)
    with atomic_path(path) as tmp:
        save_file({n: t.contiguous() for n, t in scores.items()}, str(tmp), metadata=header)
        sort_safetensors_header(tmp)
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ScoreFileError(f"{path}: cannot read as a score file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ScoreFileError(f"{path}: not a lingreg score file (format={meta.get('format')!r})")
    try:
        config, info = json.loads(meta["config"]), json.loads(meta["info"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise ScoreFileError(f"{path}: corrupt score file header") from None
    if not isinstance(config, dict) or not isinstance(info, dict):
        raise ScoreFileError(f"{path}: corrupt score file header")
    return {**meta, "config": config, "info": info}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two scoring configurations, as `key: old -> new`."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {str(old.get(k))[:40]} -> {str(new.get(k))[:40]}" for k in keys if old.get(k) != new.get(k)]


class ScoreSet:
    """Lazy access to the score files of several languages in one directory."""

    def __init__(self, directory: str | os.PathLike, langs: list[str] | None = None) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ScoreFileError(f"scores directory {self.directory} not found; create it with `lingreg score --out {self.directory}`")
        from lm_eval_lingreg.languages import LANGUAGES

        available = sorted(p.stem for p in self.directory.glob("*.safetensors") if p.stem in LANGUAGES and p.is_file())
        if not available and not langs:
            raise ScoreFileError(f"{self.directory} holds no score files (<lang>.safetensors); create them with `lingreg score --out {self.directory}`")
        self.langs = langs or available
        missing = [lang for lang in self.langs if lang not in available]
        if missing:
            raise ScoreFileError(f"{self.directory}: no scores for {missing} (found: {available or 'none'}); run `lingreg score --langs {','.join(missing)}`")
        self.files = [score_path(self.directory, lang) for lang in self.langs]
        self.headers = {lang: read_header(score_path(self.directory, lang)) for lang in self.langs}
        wrong = [lang for lang in self.langs if self.headers[lang].get("lang") != lang]
        if wrong:
            raise ScoreFileError(
                f"{score_path(self.directory, wrong[0])} holds the scores of {self.headers[wrong[0]].get('lang')!r}, not {wrong[0]!r}; was it renamed?"
            )
        try:
            self._files = {lang: safe_open(str(score_path(self.directory, lang)), framework="pt") for lang in self.langs}
        except Exception as e:  # noqa: BLE001
            raise ScoreFileError(f"{self.directory}: cannot open score files ({e})") from None
        names = {lang: list(f.keys()) for lang, f in self._files.items()}
        first = self.langs[0]
        for lang in self.langs[1:]:
            if set(names[lang]) != set(names[first]):
                raise ScoreFileError(f"{self.directory}: {lang} and {first} cover different tensors; were they scored on the same model and scope?")
            a, b = self.headers[lang]["config"], self.headers[first]["config"]
            for key in ("model", "model_fingerprint"):
                if a.get(key) != b.get(key):
                    raise ScoreFileError(f"{self.directory}: {lang} was scored on {key} {a.get(key)!r} but {first} on {b.get(key)!r}")
        self.names = names[first]
        for lang in self.langs[1:]:
            for n in self.names:
                if self._files[lang].get_slice(n).get_shape() != self._files[first].get_slice(n).get_shape():
                    raise ScoreFileError(
                        f"{self.directory}: {n} has shape {self._files[lang].get_slice(n).get_shape()} in {lang} but {self._files[first].get_slice(n).get_shape()} in {first}"
                    )

    def get(self, lang: str, name: str) -> torch.Tensor:
        t = self._files[lang].get_tensor(name)
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ScoreFileError(
                f"{score_path(self.directory, lang)}: the scores of {name} are {'not floating point' if not t.is_floating_point() else 'not all finite'}; rescore with --overwrite"
            )
        return t

    def shapes(self) -> dict[str, tuple[int, ...]]:
        first = self._files[self.langs[0]]
        return {n: tuple(first.get_slice(n).get_shape()) for n in self.names}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def provenance(self) -> dict[str, Any]:
        """What the region metadata records about these scores."""
        h = hashlib.sha256()
        for lang in self.langs:
            h.update(self.headers[lang]["config_sha"].encode())
        infos = {lang: self.headers[lang]["info"] for lang in self.langs}
        first = self.headers[self.langs[0]]["config"]
        return {
            "model": first.get("model"),
            "languages": self.langs,
            "samples": {lang: i.get("samples") for lang, i in infos.items()},
            "tokens": {lang: i.get("tokens") for lang, i in infos.items()},
            "calibration": {lang: self.headers[lang]["config"].get("data") for lang in self.langs},
            "scores_sha256": h.hexdigest(),
        }


def _resume(path: Path, config: Mapping[str, Any], overwrite: bool) -> bool:
    """True when `path` holds this very configuration's scores; raise when it holds another's."""
    if not path.is_file():
        return False
    try:
        old = read_header(path)["config"]
    except ScoreFileError:
        if overwrite:
            return False
        raise ScoreFileError(f"{path} is not a readable score file; pass --overwrite to rescore it, or choose another --out") from None
    if config_sha(old) == config_sha(config):
        return True
    if overwrite:
        log.info("%s: scored with another configuration, rescoring (--overwrite): %s", path.name, "; ".join(differences(old, config)))
        return False
    raise ScoreFileError(f"{path} holds scores made differently ({'; '.join(differences(old, config))}); pass --overwrite to rescore, or choose another --out")


def score_languages(
    model: torch.nn.Module,
    tokenizer: Any,
    langs: Sequence[str],
    out_dir: str | os.PathLike,
    samples: int,
    data: str | None = None,
    unit: str = "sentences",
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int = 4,
    scope: str = DEFAULT_SCOPE,
    model_label: str | None = None,
    max_logits_mb: float = DEFAULT_MAX_LOGITS_MB,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict]:
    """Score each language into `<out_dir>/<lang>.safetensors`, reusing matching finished ones.

    Under torch.distributed, every rank scores its shard of the samples, gradients are summed
    across ranks and rank 0 writes (holding the output's lock for the whole run).
    """
    import contextlib

    import torch.distributed as dist

    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import all_reduce, importance

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    out_dir = Path(out_dir)
    if rank == 0:
        check_writable(out_dir, directory=True, into=True)
    name = model_label or model_name(model)
    fingerprint = model_fingerprint(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    summary = {}
    with output_lock(out_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            clean_folder(out_dir)  # what a killed run left behind, whatever this run ends up doing
        for lang in langs:
            batch = make_samples(tokenizer, lang, samples, data=data, unit=unit, seq_len=seq_len, seed=seed)
            config = {
                "model": name,
                "model_fingerprint": fingerprint,
                "lang": lang,
                "samples": samples,
                "data": data or "eld",
                "corpus_sha256": batch.ids_sha256,
                "unit": unit,
                "seq_len": seq_len,
                "seed": seed,
                "scope": scope,
            }
            if _resume(score_path(out_dir, lang), config, overwrite):
                log.info("%s: already scored in %s with this model, text and configuration; reusing it", lang, out_dir)
                summary[lang] = {"skipped": True}
                continue
            result, seconds = _score_one(model, batch, rank, world, batch_size, scope, pad_id, max_logits_mb, progress)
            if distributed:
                result = all_reduce(result)
            info = {
                "samples": result.samples,
                "tokens": result.tokens,
                "source": batch.source,
                "corpus_sha256": batch.sha256,
                "world_size": world,
                "lm_eval_lingreg": __version__,
            }
            if result.tokens == 0 or not any(bool(g.any()) for g in result.grads.values()):
                raise ScoreFileError(
                    f"{lang}: the summed gradients are all zero ({result.tokens} tokens scored); nothing to rank. Use samples of at least 2 tokens"
                )
            if rank == 0:
                save_scores(out_dir, lang, importance(model, result.grads), info, config)
                log.info(
                    "%s: %d samples, %d tokens from %s in %.1fs (%.0f tokens/s) -> %s",
                    lang,
                    result.samples,
                    result.tokens,
                    batch.source,
                    seconds,
                    result.tokens / max(seconds, 1e-9),
                    score_path(out_dir, lang),
                )
            summary[lang] = {**info, "seconds": round(seconds, 2)}
            if distributed:
                dist.barrier()
    return summary


def _score_one(
    model: torch.nn.Module, batch: Any, rank: int, world: int, batch_size: int, scope: str, pad_id: int, max_logits_mb: float, progress: bool
) -> tuple[Any, float]:
    """One language's gradient sum on this rank's shard, with a progress bar (samples, tokens/s)."""
    from tqdm.auto import tqdm

    from lm_eval_lingreg import importance as imp
    from lm_eval_lingreg.corpora import shard

    mine = shard(batch.input_ids, rank, world)
    bar = tqdm(total=len(mine), desc=f"scoring {batch.lang}", unit="sample", disable=not progress or rank != 0)
    t0 = time.perf_counter()
    last = [0]

    def step(done: int, tokens: int) -> None:
        bar.update(done - last[0])
        last[0] = done
        bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - t0):.0f}", tokens=tokens)

    try:
        result = imp.sum_gradients(model, mine, scope=scope, batch_size=batch_size, pad_id=pad_id, progress=step, max_logits_mb=max_logits_mb)
    finally:
        bar.close()
    return result, time.perf_counter() - t0
