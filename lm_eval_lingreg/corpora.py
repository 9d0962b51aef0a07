"""Calibration text for importance scoring (never the UDHR evaluation text).

Sources, per language:
- the offline default: `eld`'s test sentences (1000 real sentences for each of 60 languages,
  Apache-2.0; not id or sw);
- the user's files: a directory with `<iso>.txt` (one sample per line) or `<iso>.jsonl`
  (a "text" field per line), or a single such file when scoring one language;
- any `datasets` source: `datasets:<path>[:<config>]` with `{lang}` substituted, e.g.
  `datasets:wikimedia/wikipedia:20231101.{lang}` (options: split=, column=).

Three sampling units, drawn in a seeded order (so the first n samples of a larger draw are the
n samples of a smaller one):
- `sentences` (default): BOS + one sentence/line, truncated to `seq_len` tokens;
- `documents` (the official preprocessing): BOS + one document/line + EOS, documents longer
  than `seq_len` (the paper: 512) tokens dropped, never packed or truncated;
- `blocks`: texts joined with EOS and packed into blocks of exactly `seq_len` tokens, each
  starting with BOS.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lm_eval_lingreg.errors import CorpusError
from lm_eval_lingreg.languages import LANGUAGES

UNITS = ("sentences", "documents", "blocks")


@dataclass(frozen=True)
class Samples:
    """Token id sequences for one language, and where they came from."""

    lang: str
    input_ids: list[list[int]]
    source: str
    sha256: str  # of the raw text used, for provenance

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.input_ids)

    @property
    def ids_sha256(self) -> str:
        """Hash of the exact token ids: text, tokenizer, sampling unit and seed all change it."""
        return ids_sha256(self.input_ids)


def ids_sha256(input_ids: Sequence[Sequence[int]]) -> str:
    """Hash of a list of token id sequences."""
    h = hashlib.sha256()
    for s in input_ids:
        h.update(json.dumps(list(s), separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def eld_path() -> Path:
    try:
        import eld
    except ImportError as e:
        raise CorpusError("the offline calibration corpus needs the `eld` package: pip install eld") from e
    return Path(eld.__file__).resolve().parent / "tests" / "data" / "big-test.txt"


def read_texts(lang: str, data: str | None = None, split: str = "train", column: str = "text") -> tuple[list[str], str]:
    """All raw texts available for `lang` from `data` (None = offline default), and a source label."""
    if lang not in LANGUAGES:
        raise CorpusError(f"unknown language {lang!r}; expected one of {','.join(LANGUAGES)}")
    if data is None or data == "eld":
        code = LANGUAGES[lang].eld
        if code is None:
            raise CorpusError(
                f"the offline calibration corpus (eld) has no {LANGUAGES[lang].name} ({lang}); "
                "give your own text with --data DIR (holding <iso>.txt or <iso>.jsonl) or a datasets source"
            )
        path = eld_path()
        texts = [line.split("\t", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(code + "\t")]
        return texts, f"eld:{code}"
    if data.startswith("datasets:"):
        return _read_datasets(data, lang, split, column)
    path = Path(data).expanduser()
    if path.is_dir():
        for suffix in (".jsonl", ".txt"):
            f = path / f"{lang}{suffix}"
            if f.exists() or f.is_symlink():  # named like the corpus: read it or say why not, never skip it
                return _read_file(f, column), str(f)
        raise CorpusError(f"{path}: no {lang}.txt or {lang}.jsonl calibration file for {LANGUAGES[lang].name}")
    if path.exists() or path.is_symlink():  # a FIFO or a broken link: read_text says what it is, not "not found"
        return _read_file(path, column), str(path)
    raise CorpusError(f"calibration data {data!r} not found: give a directory, a file, 'eld', or 'datasets:<path>[:<config>]'")


#: Largest calibration file read (the paper's 1,000 samples per language are a few MB).
MAX_CORPUS_BYTES = 2 * 2**30


def _read_file(path: Path, column: str) -> list[str]:
    from lm_eval_lingreg.strict import loads_json, read_text

    try:
        lines = read_text(path, CorpusError, "calibration file", max_bytes=MAX_CORPUS_BYTES).splitlines()
    except CorpusError as e:
        if "not UTF-8" in str(e):
            raise CorpusError(f"{e}; convert it first, e.g. `iconv -f latin1 -t utf-8`") from e
        raise
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines if line.strip()]
    texts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = loads_json(line, CorpusError, f"{path}:{i}")[column]
            if not isinstance(value, str):
                raise TypeError(f"its {column!r} is {type(value).__name__}, not text")
            texts.append(value)
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
            raise CorpusError(f"{path}:{i}: expected a JSON object with a {column!r} field ({e})") from e
    return texts


def _read_datasets(spec: str, lang: str, split: str, column: str) -> tuple[list[str], str]:
    import datasets

    parts = spec[len("datasets:") :].replace("{lang}", lang).split(":")
    path, name = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:
        raise CorpusError(f"cannot load datasets source {path!r} (config {name!r}, split {split!r}): {e}") from e
    if column not in ds.column_names:
        raise CorpusError(f"datasets source {path!r} has no column {column!r}; columns: {ds.column_names}")
    return [str(t) for t in ds[column] if str(t).strip()], f"datasets:{path}:{name or ''}:{split}"


def make_samples(
    tokenizer,
    lang: str,
    n: int,
    data: str | None = None,
    unit: str = "sentences",
    seq_len: int = 512,
    seed: int = 0,
    split: str = "train",
    column: str = "text",
) -> Samples:
    """`n` samples of token ids: sentences (truncated to `seq_len`), whole documents (at most `seq_len`) or packed `seq_len`-token blocks."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CorpusError(f"the number of samples must be a whole number >= 1, got {n!r}")
    if seq_len < 2:
        raise CorpusError(f"sequence length must be at least 2 tokens (a BOS and one token to predict), got {seq_len}")
    texts, source = read_texts(lang, data, split, column)
    if not texts:
        raise CorpusError(f"{source}: no text for {lang}")
    rng = random.Random(f"{seed}:{lang}")
    order = list(range(len(texts)))
    rng.shuffle(order)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    take = {"sentences": _sentences, "documents": _documents, "blocks": _blocks}.get(unit)
    if take is None:
        raise CorpusError(f"unknown sampling unit {unit!r}; expected one of {', '.join(UNITS)}")
    ids, used = take(tokenizer, texts, order, n, bos, seq_len, source, lang)
    digest = hashlib.sha256("\n".join(used).encode("utf-8")).hexdigest()
    return Samples(lang, ids, source, digest)


def _sentences(
    tokenizer, texts: list[str], order: list[int], n: int, bos: list[int], seq_len: int, source: str, lang: str
) -> tuple[list[list[int]], list[str]]:
    """The first `n` sentences in `order`, each after BOS and truncated to `seq_len`."""
    if n > len(texts):
        raise CorpusError(f"{source}: asked for {n} samples of {lang} but only {len(texts)} sentences exist; lower --samples")
    used = [texts[i] for i in order[:n]]
    return [(bos + tokenizer(t, add_special_tokens=False)["input_ids"])[:seq_len] for t in used], used


def _documents(
    tokenizer, texts: list[str], order: list[int], n: int, bos: list[int], seq_len: int, source: str, lang: str
) -> tuple[list[list[int]], list[str]]:
    """The first `n` documents in `order` that fit in `seq_len` tokens with BOS and EOS; longer ones are dropped."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids, used, dropped = [], [], 0
    for i in order:
        doc = bos + tokenizer(texts[i], add_special_tokens=False)["input_ids"] + eos
        if len(doc) > seq_len:
            dropped += 1
            continue
        ids.append(doc)
        used.append(texts[i])
        if len(ids) == n:
            break
    if len(ids) < n:
        raise CorpusError(
            f"{source}: only {len(ids)} {lang} documents fit in {seq_len} tokens with BOS and EOS ({dropped} longer ones dropped; asked for {n}); "
            "lower --samples, raise --seq-len, or give more text"
        )
    return ids, used


def _blocks(tokenizer, texts: list[str], order: list[int], n: int, bos: list[int], seq_len: int, source: str, lang: str) -> tuple[list[list[int]], list[str]]:
    """`n` blocks of `seq_len` tokens (BOS, then the texts in `order` packed, each followed by EOS)."""
    stream: list[int] = []
    used: list[str] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for i in order:
        used.append(texts[i])
        stream.extend(tokenizer(texts[i], add_special_tokens=False)["input_ids"] + eos)
        if len(stream) >= n * (seq_len - len(bos)):
            break
    body = seq_len - len(bos)
    ids = [bos + stream[k * body : (k + 1) * body] for k in range(n) if (k + 1) * body <= len(stream)]
    if len(ids) < n:
        raise CorpusError(
            f"{source}: only {len(ids)} blocks of {seq_len} tokens fit in the {lang} text (asked for {n}); lower --samples or --seq-len, or give more text"
        )
    return ids, used


def shard(items: Sequence, rank: int, world: int) -> list:
    """Round-robin share of one rank (so the union over ranks is every item once)."""
    return list(items[rank::world])


def shard_batches(items: Sequence, batch_size: int, rank: int, world: int) -> list:
    """Round-robin share of whole consecutive micro-batches of `batch_size` items: each rank's
    list, cut into `batch_size` pieces, gives exactly the micro-batches of one process."""
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    return [x for b in batches[rank::world] for x in b]
