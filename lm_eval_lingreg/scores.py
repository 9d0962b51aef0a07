"""Score files and scoring runs: one `<lang>.safetensors` per language holding s_l for every in-scope tensor.

Each file is written atomically once its language is finished, with the scoring configuration
in its header: the model's weight fingerprint, a hash of the exact calibration token ids, and
every option. A rerun reuses a language's file only when all of that matches; when anything
differs it says what, and rescores only with `overwrite`. Timings are printed, never stored,
so two identical runs write identical files.

With `checkpoints` (sample counts), the cumulative scores after the first n samples are also
written as `<out>/checkpoints/<n>/<lang>.safetensors`, each a complete score set of its own,
with the configuration `samples=n` would record and the same scores up to float rounding (the
samples are summed in another order): how the region settles as samples grow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg import __version__
from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, model_fingerprint, model_name
from lm_eval_lingreg.errors import OutputError, ScoreFileError, UsageError
from lm_eval_lingreg.importance import global_importance
from lm_eval_lingreg.lm_loss import DEFAULT_MAX_LOGITS_MB
from lm_eval_lingreg.outputs import atomic_path, check_writable, clean_folder, output_lock, sort_safetensors_header

__all__ = [
    "FORMAT",
    "config_sha",
    "score_path",
    "save_scores",
    "read_header",
    "differences",
    "ScoreSet",
    "LABELS",
    "Scoring",
    "check_score_targets",
    "score_languages",
    "PAPER_SCORING",
    "checkpoint_path",
    "IMPORTED_FINGERPRINT",
    "resumable",
    "check_shard",
]

log = logging.getLogger(__name__)
FORMAT = "lm-eval-lingreg/scores"
#: The model fingerprint recorded by imported scores (`lm_eval_lingreg.official`): no weights to hash.
IMPORTED_FINGERPRINT = "unknown (imported official scores)"


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
        raise ScoreFileError(f"{path}: cannot read as a score file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ScoreFileError(f"{path}: not a lingreg score file (format={meta.get('format')!r})")
    from lm_eval_lingreg.strict import loads_json

    if "config" not in meta or "info" not in meta:
        raise ScoreFileError(f"{path}: corrupt score file header (no config or info)")
    config, info = (loads_json(meta[k], ScoreFileError, f"{path}: score file header field {k!r}") for k in ("config", "info"))
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
        import stat

        from lm_eval_lingreg.languages import LANGUAGES

        entries = sorted(self.directory.glob("*.safetensors"))
        for p in entries:  # a FIFO, folder or broken link is an error, never a language silently left out
            try:
                regular = stat.S_ISREG(p.stat().st_mode)
            except OSError:
                regular = False
            if not regular:
                raise ScoreFileError(
                    f"{p} is not a regular file (a pipe, folder, or broken or looping link); a score file is a <lang>.safetensors "
                    f"file written by `lingreg score`: replace or remove it"
                )
        available = sorted(p.stem for p in entries if p.stem in LANGUAGES)
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
            raise ScoreFileError(f"{self.directory}: cannot open score files ({e})") from e
        names = {lang: list(f.keys()) for lang, f in self._files.items()}
        first = self.langs[0]
        for lang in self.langs[1:]:
            if set(names[lang]) != set(names[first]):
                raise ScoreFileError(f"{self.directory}: {lang} and {first} cover different tensors; were they scored on the same model and scope?")
            a, b = self.headers[lang]["config"], self.headers[first]["config"]
            # the fingerprint is the identity, and `model` only a label, except for imported scores (no weights to hash)
            for key in ("model_fingerprint", *(("model",) if a.get("model_fingerprint") == IMPORTED_FINGERPRINT else ())):
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


#: Configuration fields that only label the model and the text (a path can move): resume compares their hashes
#: (`model_fingerprint`, `corpus_sha256`) instead.
LABELS = ("model", "data")


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in LABELS}


def resumable(path: Path, config: Mapping[str, Any], overwrite: bool) -> bool:
    """True when `path` holds this very configuration's scores; raise when it holds another's."""
    if not path.is_file():
        return False
    try:
        old = read_header(path)["config"]
    except ScoreFileError as exc:
        if overwrite:
            return False
        raise ScoreFileError(f"{path} is not a readable score file; pass --overwrite to rescore it, or choose another --out") from exc
    old, config = _identity(old), _identity(config)
    if config_sha(old) == config_sha(config):
        return True
    if overwrite:
        log.info("%s: scored with another configuration, rescoring (--overwrite): %s", path.name, "; ".join(differences(old, config)))
        return False
    raise ScoreFileError(f"{path} holds scores made differently ({'; '.join(differences(old, config))}); pass --overwrite to rescore, or choose another --out")


@dataclass(frozen=True)
class Scoring:
    """What defines a language's scores besides the model and the text: recorded in every score file, compared on resume."""

    samples: int
    data: str | None = None  # None: the offline default (eld)
    unit: str = "sentences"
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 4
    scope: str = DEFAULT_SCOPE
    max_logits_mb: float = DEFAULT_MAX_LOGITS_MB
    loss_norm: str = "sample"
    grad_dtype: str = "float32"
    checkpoints: tuple[int, ...] = ()
    shard: str = "none"  # how the ranks hold the model: not in the configuration (the sums agree to float rounding)
    activation_checkpointing: bool = False  # memory only: not in the configuration

    def __post_init__(self) -> None:
        from lm_eval_lingreg.corpora import UNITS
        from lm_eval_lingreg.importance import SHARDS, check_loss_norm, grad_dtype_of

        check_loss_norm(self.loss_norm)
        grad_dtype_of(self.grad_dtype)
        if self.shard not in SHARDS:
            raise UsageError(f"unknown --shard {self.shard!r}; expected one of {', '.join(SHARDS)}")
        if self.unit not in UNITS:
            raise UsageError(f"unknown sampling unit {self.unit!r}; expected one of {', '.join(UNITS)}")
        points = tuple(self.checkpoints)
        bad = [n for n in points if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < self.samples]
        if bad or len(set(points)) != len(points):
            raise UsageError(f"checkpoints must be distinct sample counts between 1 and --samples ({self.samples}) exclusive, got {list(points)}")
        if self.loss_norm == "batch-token" and any(n % self.batch_size for n in points):
            raise UsageError(
                f"with --loss-norm batch-token the micro-batches define the loss, so checkpoints must be multiples of --batch-size {self.batch_size} (got {list(points)})"
            )
        object.__setattr__(self, "checkpoints", tuple(sorted(points)))

    def at(self, samples: int) -> Scoring:
        """The same scoring stopped after `samples` samples (a checkpoint's own configuration)."""
        return dataclasses.replace(self, samples=samples, checkpoints=())

    def config(self, model: str, fingerprint: str, lang: str, corpus_sha256: str) -> dict[str, Any]:
        """The score file's configuration: everything that changes the scores beyond float32 rounding (not
        chunking, sharding or activation checkpointing; batch size only under `batch-token`, which it defines,
        or bfloat16 accumulation, where it decides when the sum is rounded)."""
        config = {
            "model": model,
            "model_fingerprint": fingerprint,
            "lang": lang,
            "samples": self.samples,
            "data": self.data or "eld",
            "corpus_sha256": corpus_sha256,
            "unit": self.unit,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "scope": self.scope,
            "loss_norm": self.loss_norm,
            "grad_dtype": self.grad_dtype,
        }
        if self.loss_norm == "batch-token" or self.grad_dtype == "bfloat16":  # the micro-batches, or where bf16 rounds
            config["batch_size"] = self.batch_size
        return config


def check_score_targets(paths: Sequence[Path], lang: str) -> None:
    """Refuse a link, folder or special file where a score file of `lang` goes (a regular file is resumed or replaced)."""
    for path in paths:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
            raise OutputError(f"{path} is {kind}, where the scores of {lang} go; move it away, or choose another --out")


def check_shard(shard: str, device: str | torch.device) -> None:
    """Refuse a sharding mode this process cannot run: `fsdp` needs a process group of 2 or more ranks (torchrun)
    and a device its backend can reduce-scatter on (GPUs with nccl, the CPU with gloo)."""
    import os

    import torch.distributed as dist

    from lm_eval_lingreg.importance import SHARDS

    if shard not in SHARDS:
        raise UsageError(f"unknown --shard {shard!r}; expected one of {', '.join(SHARDS)}")
    if shard == "none":
        return
    launch = "torchrun --nproc_per_node N -m lm_eval_lingreg.cli score ... --shard fsdp (N >= 2)"
    if not (dist.is_available() and dist.is_initialized()):
        if os.environ.get("WORLD_SIZE") == "1":
            raise UsageError(
                f"--shard fsdp splits the model over several processes, and this run has one (WORLD_SIZE=1); launch `{launch}`, or drop --shard fsdp"
            )
        raise UsageError(f"--shard fsdp needs several processes and none were started: launch `{launch}`, or drop --shard fsdp")
    if dist.get_world_size() < 2:
        raise UsageError(f"--shard fsdp splits the model over several processes, and this process group has one; launch `{launch}`, or drop --shard fsdp")
    kind, backend = torch.device(device).type, dist.get_backend()
    if kind not in ("cpu", "cuda") or (backend == "gloo") != (kind == "cpu"):
        raise UsageError(
            f"--shard fsdp on {kind} with the {backend} backend: FSDP2 runs on GPUs with --backend nccl, or on the CPU with --device cpu --backend gloo"
        )


def score_languages(
    model: torch.nn.Module,
    tokenizer: Any,
    langs: Sequence[str],
    out_dir: str | os.PathLike,
    samples: int,
    model_label: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    **options: Any,
) -> dict[str, dict]:
    """Score each language into `<out_dir>/<lang>.safetensors`, reusing matching finished ones.

    `options` are the fields of `Scoring` (data, unit, seq_len, seed, batch_size, scope, max_logits_mb,
    loss_norm, grad_dtype, checkpoints, shard, activation_checkpointing).
    Under torch.distributed, every rank scores its shard of the samples, gradients are summed
    across ranks and rank 0 writes (holding the output's lock for the whole run). With `shard="fsdp"`
    the model is sharded in place with FSDP2 (onto `device`, by default where it is) once its
    fingerprint is taken, and stays sharded.
    """
    import torch.distributed as dist

    scoring = Scoring(samples, **options)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    from lm_eval_lingreg.importance import is_sharded

    target = torch.device(device) if device is not None else next(model.parameters()).device
    check_shard(scoring.shard, target)
    if is_sharded(model):
        raise UsageError("this model is already sharded (FSDP2); pass it whole: scoring shards it once its fingerprint is taken")
    out_dir = Path(out_dir)
    if rank == 0:
        check_writable(out_dir, directory=True, into=True)
        for lang in langs:  # the files this run will write, before any work
            check_score_targets([score_path(out_dir, lang), *(checkpoint_path(out_dir, n, lang) for n in scoring.checkpoints)], lang)
    identity = (model_label or model_name(model), model_fingerprint(model))
    if scoring.shard == "fsdp":
        from lm_eval_lingreg.importance import shard_model

        shard_model(model, target)
    summary = {}
    with output_lock(out_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            folders = [checkpoint_path(out_dir, n, "x").parent for n in scoring.checkpoints]
            for folder in [out_dir / "checkpoints", *folders] if folders else []:
                if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                    raise OutputError(
                        f"{folder} is {'a link' if folder.is_symlink() else 'not a folder'}; checkpoint scores go in real folders under --out. Remove it"
                    )
            for folder in [out_dir, *folders]:
                clean_folder(folder)  # what a killed run left behind, whatever this run ends up doing
        for lang in langs:
            summary[lang] = _score_language(model, tokenizer, lang, out_dir, scoring, identity, overwrite, progress)
    return summary


#: The official scoring protocol (PAPER.md): whole documents of at most 512 tokens with BOS and EOS, the
#: Hugging Face loss over micro-batches of 8, bf16 forward, gradients accumulated and saved in bf16.
PAPER_SCORING: dict[str, Any] = {
    "unit": "documents",
    "seq_len": 512,
    "loss_norm": "batch-token",
    "grad_dtype": "bfloat16",
    "batch_size": 8,
    "dtype": "bfloat16",
}


def checkpoint_path(out_dir: str | os.PathLike, samples: int, lang: str) -> Path:
    return Path(out_dir) / "checkpoints" / str(samples) / f"{lang}.safetensors"


def _score_language(
    model: torch.nn.Module, tokenizer: Any, lang: str, out_dir: Path, scoring: Scoring, identity: tuple[str, str], overwrite: bool, progress: bool
) -> dict[str, Any]:
    """One language: reuse its files if everything matches, else sum the gradients (over the ranks) and
    write the scores at every checkpoint and at the end."""
    import torch.distributed as dist

    from lm_eval_lingreg.corpora import ids_sha256, make_samples

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    batch = make_samples(tokenizer, lang, scoring.samples, data=scoring.data, unit=scoring.unit, seq_len=scoring.seq_len, seed=scoring.seed)
    stops = [*scoring.checkpoints, scoring.samples]
    outputs = [
        (
            n,
            score_path(out_dir, lang) if n == scoring.samples else checkpoint_path(out_dir, n, lang),
            scoring.at(n).config(*identity, lang, ids_sha256(batch.input_ids[:n])),
        )
        for n in stops
    ]
    if all([resumable(path, config, overwrite) for _, path, config in outputs]):
        log.info("%s: already scored in %s with this model, text and configuration; reusing it", lang, out_dir)
        return {"skipped": True}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    segments = [batch.input_ids[a:b] for a, b in zip([0, *stops], stops, strict=False)]
    with _progress(batch.lang, sum(len(_share(s, rank, world, scoring)) for s in segments), rank, progress) as step:
        result = None
        for segment, (n, path, config) in zip(segments, outputs, strict=True):
            result = _sum_shard(model, _share(segment, rank, world, scoring), scoring, pad_id, step, result)
            scores, nonzero, samples, tokens = global_importance(model, result, distributed, keep=rank == 0)
            if tokens == 0 or not nonzero:
                raise ScoreFileError(f"{lang}: the summed gradients are all zero ({tokens} tokens scored); nothing to rank. Use samples of at least 2 tokens")
            info = {"samples": samples, "tokens": tokens, "source": batch.source, "world_size": world, "lm_eval_lingreg": __version__}
            info |= {"shard": scoring.shard} if scoring.shard != "none" else {}
            info |= {"corpus_sha256": batch.sha256} if n == scoring.samples else {"checkpoint_of": scoring.samples}
            if rank == 0:  # save_scores creates the folder, and removes it again if the write fails (a full disk)
                save_scores(path.parent, lang, scores, info, config)
    if rank == 0:
        log.info(
            "%s: %d samples, %d tokens from %s in %.1fs (%.0f tokens/s) -> %s",
            lang,
            samples,
            tokens,
            batch.source,
            step.seconds,
            tokens / max(step.seconds, 1e-9),
            score_path(out_dir, lang),
        )
    if distributed:
        dist.barrier()
    return {**info, "seconds": round(step.seconds, 2)}


def _share(samples: list[list[int]], rank: int, world: int, scoring: Scoring) -> list[list[int]]:
    """This rank's share of one segment's samples: round-robin samples, or whole micro-batches under batch-token."""
    from lm_eval_lingreg.corpora import shard, shard_batches
    from lm_eval_lingreg.importance import usable

    kept = usable(samples, scoring.loss_norm)
    return shard_batches(kept, scoring.batch_size, rank, world) if scoring.loss_norm == "batch-token" else shard(kept, rank, world)


def _sum_shard(model: torch.nn.Module, mine: list[list[int]], scoring: Scoring, pad_id: int, step: Any, start: Any) -> Any:
    """Continue this rank's gradient sum over its share of a segment."""
    from lm_eval_lingreg import importance as imp

    return imp.sum_gradients(
        model,
        mine,
        scope=scoring.scope,
        batch_size=scoring.batch_size,
        pad_id=pad_id,
        progress=step,
        max_logits_mb=scoring.max_logits_mb,
        loss_norm=scoring.loss_norm,
        grad_dtype=scoring.grad_dtype,
        start=start,
        activation_checkpointing=scoring.activation_checkpointing,
    )


class _Progress:
    """A progress bar (samples of this rank, tokens/s) fed by `sum_gradients`' progress calls, across segments."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.t0, self.last = bar, time.perf_counter(), 0

    def __call__(self, done: int, tokens: int) -> None:
        self.bar.update(done - self.last)
        self.last = done
        self.bar.set_postfix(tok_s=f"{tokens / max(1e-9, self.seconds):.0f}", tokens=tokens)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


@contextlib.contextmanager
def _progress(lang: str, total: int, rank: int, progress: bool) -> Iterator[_Progress]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"scoring {lang}", unit="sample", disable=not progress or rank != 0)
    try:
        yield _Progress(bar)
    finally:
        bar.close()
