"""Score files: one `<lang>.safetensors` per language holding s_l for every in-scope tensor.

Each file is written atomically once its language is finished, with the scoring
configuration in its header; a rerun with the same configuration skips finished
languages, so an interrupted run resumes without losing or recomputing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg._atomic import atomic_path

FORMAT = "lm-eval-lingreg/scores"


class ScoreFileError(ValueError):
    """Score files that are missing, malformed or inconsistent with each other."""


def config_sha(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_path(out_dir: str | os.PathLike, lang: str) -> Path:
    return Path(out_dir) / f"{lang}.safetensors"


def is_done(out_dir: str | os.PathLike, lang: str, config: Mapping[str, Any]) -> bool:
    """True if `lang` was already scored into `out_dir` with exactly this configuration."""
    path = score_path(out_dir, lang)
    if not path.is_file():
        return False
    try:
        header = read_header(path)
    except ScoreFileError:
        return False
    return header.get("config_sha") == config_sha(config)


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
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ScoreFileError(f"{path}: cannot read as a score file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ScoreFileError(f"{path}: not a lingreg score file (format={meta.get('format')!r})")
    return {**meta, "config": json.loads(meta["config"]), "info": json.loads(meta["info"])}


class ScoreSet:
    """Lazy access to the score files of several languages in one directory."""

    def __init__(self, directory: str | os.PathLike, langs: list[str] | None = None) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ScoreFileError(f"scores directory {self.directory} not found; create it with `lingreg score --out {self.directory}`")
        available = sorted(p.stem for p in self.directory.glob("*.safetensors"))
        self.langs = langs or available
        missing = [lang for lang in self.langs if lang not in available]
        if missing:
            raise ScoreFileError(f"{self.directory}: no scores for {missing} (found: {available or 'none'}); run `lingreg score --langs {','.join(missing)}`")
        self.headers = {lang: read_header(score_path(self.directory, lang)) for lang in self.langs}
        self._files = {lang: safe_open(str(score_path(self.directory, lang)), framework="pt") for lang in self.langs}
        names = {lang: list(f.keys()) for lang, f in self._files.items()}
        first = self.langs[0]
        for lang in self.langs[1:]:
            if set(names[lang]) != set(names[first]):
                raise ScoreFileError(f"{self.directory}: {lang} and {first} cover different tensors; were they scored on the same model and scope?")
            if self.headers[lang]["config"].get("model") != self.headers[first]["config"].get("model"):
                raise ScoreFileError(
                    f"{self.directory}: {lang} was scored on {self.headers[lang]['config'].get('model')!r} but "
                    f"{first} on {self.headers[first]['config'].get('model')!r}"
                )
        self.names = names[first]

    def get(self, lang: str, name: str) -> torch.Tensor:
        return self._files[lang].get_tensor(name)

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
