"""Strict readers for the YAML, JSON and CSV files this package reads: rules, baselines, perturbation
specs, coordinates, results and region metadata.

A file that cannot be read exactly as written is an error that names it, never a guess:

- a repeated key (`{max: 1, max: 1000}`: plain PyYAML and `json` keep the last one silently);
- booleans and numbers only as YAML 1.2 writes them (`true`/`false`; YAML 1.1 also reads `on`, `off`,
  `yes`, `no` as booleans, which would turn the key `on:` into True, `1:30` as 90, `010` as 8 and `1_000`
  as 1000: those stay text here, and a number field refuses them);
- integers of more than `MAX_DIGITS` digits and number literals longer than that (`1e400` is read,
  as the infinity it is, only where a caller allows non-finite values);
- files larger than the caller's bound, anything but a regular file (a FIFO would block the read),
  text that is not UTF-8;
- CSV rows with more or fewer fields than the header, repeated or empty column names, fields over
  `MAX_CSV_FIELD` characters, and bad quoting;
- a .safetensors header (`read_safetensors_header`) with a repeated key, a number beyond a float's range,
  or a length past the end of the file or over `MAX_HEADER_BYTES`.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import LingregError, RegionFileError

__all__ = [
    "read_text",
    "loads_json",
    "loads_yaml",
    "read_csv",
    "read_number",
    "parse_whole",
    "shown",
    "MAX_DIGITS",
    "MAX_HEADER_BYTES",
    "read_safetensors_header",
]

#: Longest integer (or number literal) accepted, in characters.
MAX_DIGITS = 100
#: Largest CSV field accepted, in characters.
MAX_CSV_FIELD = 10_000
#: Default bound on a file's size.
MAX_BYTES = 64 * 2**20


def read_text(path: str | os.PathLike, error: type[LingregError], what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`; the type is checked before opening, so a FIFO never blocks."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as e:
        if path.is_symlink():
            raise error(f"{what} {path} is a broken link (to {os.readlink(path)}); give the file itself") from e
        raise error(f"{what} {path} not found") from e
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path} is a folder; give the {what} itself")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file (a pipe, socket or device?); give the {what} as a regular file")
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size:,} bytes is too large for a {what} (at most {max_bytes:,})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # replaced by a FIFO since the check: still no block
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from e
    if len(data) > max_bytes:
        raise error(f"{path}: too large for a {what} (at most {max_bytes:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); a {what} is UTF-8 YAML, JSON or CSV") from e


def _unique(error: type[LingregError], where: str) -> Callable[[list[tuple[str, Any]]], dict]:
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise error(f"{where}: the key {k!r} appears twice in one object; keep one (a reader would silently keep only the last)")
            seen.add(k)
        return dict(pairs)

    return hook


def _bounded_int(error: type[LingregError], where: str) -> Callable[[str], int]:
    def parse(s: str) -> int:
        if len(s.lstrip("-+")) > MAX_DIGITS:
            raise error(f"{where}: an integer of {len(s)} digits is not a number a value here can have (at most {MAX_DIGITS} digits)")
        return int(s)

    return parse


def _bounded_float(error: type[LingregError], where: str, finite: bool) -> Callable[[str], float]:
    def parse(s: str) -> float:
        if len(s) > MAX_DIGITS:
            raise error(f"{where}: a number written with {len(s)} characters is not a number a value here can have (at most {MAX_DIGITS})")
        v = float(s)
        if finite and not math.isfinite(v):
            raise error(f"{where}: {s} is beyond the range of a float; give a finite number")
        return v

    return parse


def loads_json(text: str, error: type[LingregError], where: str, finite: bool = False, hint: str = "") -> Any:
    """JSON with unique keys and bounded numbers; NaN/Infinity (which lm-eval writes) only when not `finite`."""
    import json

    def constant(name: str) -> float:
        if finite:
            raise error(f"{where}: {name} is not a number this file may hold; give a finite number")
        return float(name.replace("Infinity", "inf"))

    try:
        return json.loads(
            text,
            object_pairs_hook=_unique(error, where),
            parse_int=_bounded_int(error, where),
            parse_float=_bounded_float(error, where, finite),
            parse_constant=constant,
        )
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}){hint}") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested too deeply") from e


_BOOL_TAG, _INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def _yaml_loader(error: type[LingregError], where: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    _core_schema(Loader)
    mapping = _unique_mapping(error, where)
    integer, floating = _bounded_numbers(error, where)
    Loader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: mapping(loader, node))
    Loader.construct_mapping = lambda self, node, deep=False: mapping(self, node, deep)
    Loader.add_constructor(_INT_TAG, integer)
    Loader.add_constructor(_FLOAT_TAG, floating)
    return Loader


def _core_schema(loader: Any) -> None:
    """Replace the YAML 1.1 resolvers of booleans and numbers on `loader` by those of YAML 1.2."""
    import yaml

    ours = (_BOOL_TAG, _INT_TAG, _FLOAT_TAG)
    loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] not in ours] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    # the YAML 1.2 core schema: no sexagesimal (1:30), no implicit octal (010), no underscores (1_000), no 0b
    loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    loader.add_implicit_resolver(_INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
    loader.add_implicit_resolver(
        _FLOAT_TAG,
        re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."),
    )


def _unique_mapping(error: type[LingregError], where: str) -> Callable[..., dict]:
    """A mapping constructor that refuses a key repeated in one mapping."""
    import yaml

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        loader.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # an unhashable key: the safe loader refuses it itself
            if key in seen:
                line = key_node.start_mark.line + 1
                raise error(f"{where}: line {line}: the key {key!r} appears twice in one mapping; keep one (YAML readers keep only the last)")
            seen[key] = True
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    return mapping


def _bounded_numbers(error: type[LingregError], where: str) -> tuple[Callable[[Any, Any], int], Callable[[Any, Any], float]]:
    """The integer and float constructors: at most `MAX_DIGITS` characters, errors naming the line."""

    def _line(node: Any) -> str:
        return f"{where}: line {node.start_mark.line + 1}"

    def integer(loader: Any, node: Any) -> int:
        text = str(node.value)
        if len(text.lstrip("-+")) > MAX_DIGITS:
            raise error(f"{_line(node)}: an integer of {len(text)} digits is not a number a value here can have (at most {MAX_DIGITS} digits)")
        try:
            return int(text, 8) if text.startswith("0o") else int(text, 16) if text.startswith("0x") else int(text, 10)
        except ValueError as e:  # an explicit !!int tag on something else
            raise error(f"{_line(node)}: {text[:40]!r} is not a whole number") from e

    def floating(loader: Any, node: Any) -> float:
        text = str(node.value)
        if len(text) > MAX_DIGITS:
            raise error(f"{_line(node)}: a number written with {len(text)} characters is not a number a value here can have (at most {MAX_DIGITS})")
        special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
        if text.lower() in special:
            return special[text.lower()]
        try:
            return float(text)
        except ValueError as e:
            raise error(f"{_line(node)}: {text[:40]!r} is not a number") from e

    return integer, floating


def loads_yaml(text: str, error: type[LingregError], where: str) -> Any:
    """YAML 1.2 booleans, unique keys, bounded numbers (JSON is YAML too)."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader(error, where))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML ({' '.join(str(e).split())[:200]})") from e
    except RecursionError as e:
        raise error(f"{where}: YAML nested too deeply") from e


def read_csv(text: str, error: type[LingregError], where: str) -> list[dict[str, str]]:
    """Rows of a CSV with a header: every row has exactly the header's fields; column names unique and non-empty."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_CSV_FIELD)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise error(f"{where}: line {reader.line_num}: not valid CSV ({e}); fields are at most {MAX_CSV_FIELD:,} characters") from e
    finally:
        csv.field_size_limit(limit)
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise error(f"{where}: empty; a CSV file needs a header line")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header) or len(set(header)) != len(header):
        dup = next((h for h in header if header.count(h) > 1), "")
        raise error(f"{where}: the header has " + (f"the column {dup!r} twice" if dup else "an empty column name") + "; name each column once")
    out = []
    for i, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise error(f"{where}: row {i} has {len(r)} fields but the header has {len(header)}; quote fields that hold commas")
        out.append(dict(zip(header, r, strict=True)))
    return out


def shown(text: str, limit: int = 40) -> str:
    """A value as a message shows it: quoted, at most `limit` characters and the length beyond that."""
    return repr(text) if len(text) <= limit else f"{text[: limit // 2]!r}... ({len(text):,} characters)"


def parse_whole(text: str, error: type[LingregError], what: str, minimum: int = 0) -> int:
    """A whole number as written on a command line or in a spec: ASCII digits only (not `²`, `1_000`,
    `+3` or `1e3`), at most `MAX_DIGITS` of them, at least `minimum`; `what` names the option in the error."""
    t = text.strip()
    if not re.fullmatch(r"[0-9]+", t):
        raise error(f"{what}: {shown(t)} is not a whole number (digits 0-9)")
    if len(t) > MAX_DIGITS:
        raise error(f"{what}: a number of {len(t):,} digits is beyond any value it can have (at most {MAX_DIGITS} digits)")
    n = int(t)
    if n < minimum:
        raise error(f"{what}: must be at least {minimum}, got {n}")
    return n


def read_number(v: Any, what: str, where: str, error: type[LingregError], allow_inf: bool = False) -> float:
    """A number as written in a rule or baseline: a finite number, or (where allowed) the word inf; never
    1e400 (which a float reader turns into inf), 4_0 (which float() reads as 40) or a 5,000-digit string.
    `what` shows the value in messages: "value {v}" or "`min: {v}`"."""

    def show(x: Any) -> str:
        return what.format(v=repr(x) if isinstance(x, str) else str(x)[:40])

    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise error(f"{where}: {show(v)} is not a number")
    if isinstance(v, str):
        text = v.strip()
        if allow_inf and text.lower() in ("inf", "+inf", "infinity"):
            return math.inf
        if "_" in text or len(text) > 100:
            raise error(f"{where}: {show(text[:40])} is not a number as written here (digits, a point, an exponent)")
        try:
            v = float(text)
        except ValueError as exc:
            raise error(f"{where}: {show(text[:40])} is not a number") from exc
    try:
        value = float(v)
    except OverflowError as exc:
        raise error(f"{where}: {show(str(v)[:40] + '...')} is not a number (too large for a float)") from exc
    if math.isinf(value):
        hint = "; write inf if the reference really was infinite" if allow_inf else ""
        raise error(f"{where}: {show(v)} is beyond the range of a float, not a number it can have{hint}")
    return value


#: Largest safetensors header read (the JSON before the data); a region's is a few kilobytes per tensor.
MAX_HEADER_BYTES = 100 * 2**20


def read_safetensors_header(path: Path, error: type[Exception] = RegionFileError) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON), read strictly:
    a repeated key (safetensors itself keeps the last `__metadata__` or tensor entry silently), a number
    beyond a float's range or a length past the end of the file is an error naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a FIFO
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{path} is not a regular file (a pipe or device?)")
            prefix = f.read(8)
            if len(prefix) < 8:
                raise error(f"{path}: {st.st_size} bytes, too short for a .safetensors file")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES or n > st.st_size - 8:
                raise error(
                    f"{path}: cannot read as a .safetensors file: its header declares {n:,} bytes (file: {st.st_size:,} bytes, limit {MAX_HEADER_BYTES:,})"
                )
            raw = f.read(n)
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: cannot read as a .safetensors file: its header is not UTF-8 (byte {e.start})") from e
    header = loads_json(text, error, f"{path}: .safetensors header", finite=True)
    if not isinstance(header, dict):
        raise error(f"{path}: cannot read as a .safetensors file: its header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise error(f"{path}: cannot read as a .safetensors file: __metadata__ must map names to strings")
    return header
