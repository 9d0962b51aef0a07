"""Region file formats.

- `.safetensors` (ours): one uint8 tensor per parameter holding its sorted flat indices as
  LEB128 varints of the gaps between them (about 1-1.5 bytes per selected entry at 1%),
  with shapes, counts and the region's metadata as JSON in the header.
- `.pt` / `.pth` / `.bin`: a dict of bool masks (parameter-shaped) or 1-D flat index
  tensors, optionally with a `"__metadata__"` dict; loaded only with `weights_only=True`.
- a directory of `<parameter name>.pt` bool tensors: the layout of the official code.

`load_region` also takes the name of a mask shipped in `masks/` (see `masks/MANIFEST.json`).
Nothing in a file is trusted: no pickled code is run, declared sizes are checked against the
data before anything is allocated, and names never become paths outside the target folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lm_eval_lingreg.anatomy import numel
from lm_eval_lingreg.errors import RegionError, RegionFileError
from lm_eval_lingreg.outputs import atomic_path, sort_safetensors_header
from lm_eval_lingreg.regions import MAX_TENSOR_NUMEL, Region, check_name
from lm_eval_lingreg.resources import masks_dir

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ENCODING",
    "TORCH_SUFFIXES",
    "FORMATS",
    "MAX_DENSE_GB",
    "encode_indices",
    "decode_indices",
    "save_safetensors",
    "load_safetensors",
    "torch_load",
    "load_torch",
    "save_torch",
    "check_backed",
    "load_official_dir",
    "save_official_dir",
    "shipped_masks",
    "resolve",
    "load_region",
    "format_for",
    "save_region",
    "file_sha256",
]

FORMAT = "lm-eval-lingreg/region"
FORMAT_VERSION = "1"
ENCODING = "delta-leb128"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
FORMATS = ("safetensors", "pt", "official")
#: Dense formats write one byte per covered entry: 2 GB covers the blocks of models up to about 2B parameters.
MAX_DENSE_GB = 2.0
_MAX_VARINT = 9  # bytes: 63 bits, so a gap can never overflow int64
_DECODE_BLOCK = 1 << 20  # bytes decoded at a time: bounded working memory


# varint coding of sorted indices ----------------------------------------------------------


def encode_indices(indices: torch.Tensor) -> np.ndarray:
    """Sorted unique int64 indices -> LEB128 bytes of (gap - 1) between successive indices."""
    idx = indices.detach().cpu().numpy().astype(np.int64, copy=False)
    if idx.size == 0:
        return np.zeros(0, dtype=np.uint8)
    gaps = np.diff(idx, prepend=-1) - 1
    nbytes = 1 + sum(((gaps >> (7 * k)) > 0).astype(np.int64) for k in range(1, 10))
    offsets = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = (gaps[sel] >> (7 * k)) & 0x7F
        byte |= (nbytes[sel] > k + 1).astype(np.int64) << 7
        out[offsets[sel] + k] = byte.astype(np.uint8)
    return out


def _decode_gaps(data: np.ndarray) -> np.ndarray:
    """Gaps of one block of whole varints."""
    ends = (data & 0x80) == 0
    end_pos = np.flatnonzero(ends)
    starts = np.concatenate([[0], end_pos[:-1] + 1])
    value_id = np.cumsum(ends) - ends
    pos = np.arange(data.size) - starts[value_id]
    if pos.max() >= _MAX_VARINT:
        raise RegionFileError(f"corrupt index data (varint longer than {_MAX_VARINT} bytes)")
    gaps = np.zeros(end_pos.size, dtype=np.int64)
    payload = (data & 0x7F).astype(np.int64)
    for k in range(int(pos.max()) + 1):
        sel = pos == k
        gaps[value_id[sel]] |= payload[sel] << (7 * k)
    return gaps


def decode_indices(data: np.ndarray, block: int = _DECODE_BLOCK) -> torch.Tensor:
    """Inverse of `encode_indices`, `block` bytes at a time (working memory stays bounded)."""
    data = np.asarray(data, dtype=np.uint8)
    if data.size == 0:
        return torch.empty(0, dtype=torch.int64)
    if data[-1] & 0x80:
        raise RegionFileError("truncated index data (last varint unterminated)")
    parts, start = [], 0
    while start < data.size:
        stop = min(data.size, start + block)
        ends = np.flatnonzero((data[start:stop] & 0x80) == 0)
        if not ends.size:
            raise RegionFileError(f"corrupt index data (varint longer than {_MAX_VARINT} bytes)")
        stop = start + int(ends[-1]) + 1
        parts.append(_decode_gaps(data[start:stop]) + 1)
        start = stop
    steps = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return torch.from_numpy(np.cumsum(steps) - 1)


# our safetensors format ------------------------------------------------------------------


def save_safetensors(region: Region, path: str | os.PathLike, overwrite: bool = False) -> Path:
    from safetensors.numpy import save_file

    tensors = {n: encode_indices(region.indices[n]) for n in region.shapes if n in region.indices}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoding": ENCODING,
        "shapes": json.dumps({n: list(s) for n, s in region.shapes.items()}),
        "counts": json.dumps({n: int(i.numel()) for n, i in region.indices.items()}),
        "region": json.dumps(region.metadata, sort_keys=True, default=str),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        sort_safetensors_header(tmp)
    return Path(path)


def _json_field(header: dict, key: str, path: Path, kind: type, default: Any = None) -> Any:
    if key not in header:
        if default is not None:
            return default
        raise RegionFileError(f"{path}: header lacks {key!r}; not a complete region file")
    from lm_eval_lingreg.strict import loads_json

    if not isinstance(header[key], str):
        raise RegionFileError(f"{path}: header field {key!r} must be JSON text, got {type(header[key]).__name__}")
    value = loads_json(header[key], RegionFileError, f"{path}: header field {key!r}", finite=True)
    if not isinstance(value, kind):
        raise RegionFileError(f"{path}: header field {key!r} must be a JSON {'object' if kind is dict else kind.__name__}, got {type(value).__name__}")
    return value


def load_safetensors(path: str | os.PathLike) -> Region:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RegionFileError(f"{path} is not a regular file (a pipe or device?)")
    from lm_eval_lingreg.strict import read_safetensors_header

    header = read_safetensors_header(path).get("__metadata__", {})  # strictly, before safetensors reads it leniently
    try:
        with safe_open(str(path), framework="np") as f:
            if header.get("format") != FORMAT:
                raise RegionFileError(
                    f"{path}: not a region file (header format={header.get('format')!r}, expected {FORMAT!r}); convert other masks with `lingreg mask convert`"
                )
            if header.get("format_version") != FORMAT_VERSION or header.get("encoding") != ENCODING:
                raise RegionFileError(
                    f"{path}: unsupported region format version {header.get('format_version')!r} / encoding {header.get('encoding')!r}; upgrade lm-eval-lingreg"
                )
            shapes = _json_field(header, "shapes", path, dict)
            counts = _json_field(header, "counts", path, dict)
            metadata = _json_field(header, "region", path, dict, default={})
            names = list(f.keys())
            sizes = {n: f.get_slice(n).get_shape() for n in names}
            wrong = [n for n in names if str(f.get_slice(n).get_dtype()).upper() not in ("U8", "UINT8")]
            if wrong:
                raise RegionFileError(f"{path}: index data of {wrong[0]!r} is {f.get_slice(wrong[0]).get_dtype()}, expected uint8 varints; not a region file")
            for n in names:  # declared sizes against the data, before decoding anything
                if n not in shapes:
                    raise RegionFileError(f"{path}: {n!r} has index data but no shape in the header")
                if len(sizes[n]) != 1:
                    raise RegionFileError(f"{path}: {n!r}: index data must be 1-D bytes, got shape {sizes[n]}")
                count = counts.get(n)
                if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= sizes[n][0]:
                    raise RegionFileError(f"{path}: corrupt file: {n!r} declares {count!r} entries in {sizes[n][0]} bytes of index data")
            indices = {n: decode_indices(f.get_tensor(n)) for n in names}
    except (RegionFileError, RegionError):
        raise
    except Exception as e:  # safetensors raises several types for bad files
        raise RegionFileError(f"{path}: cannot read as a region .safetensors file ({e})") from e
    bad = [n for n, i in indices.items() if counts.get(n) != i.numel()]
    if bad:
        raise RegionFileError(f"{path}: corrupt file, entry counts disagree with the header for {bad[:5]}")
    try:
        return Region(indices, {n: _shape(s, n, path) for n, s in shapes.items()}, metadata)
    except RegionFileError:
        raise
    except RegionError as e:
        raise RegionFileError(f"{path}: {e}") from e


def _shape(shape: Any, name: str, path: Path) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise RegionFileError(f"{path}: shape of {name!r} must be a list of whole numbers, got {str(shape)[:60]}")
    return tuple(shape)


# torch formats -------------------------------------------------------------------------


def torch_load(path: Path, error: type[Exception] = RegionFileError, advice: str = "Save masks as a dict of tensors, or use the .safetensors format.") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never pickled code; one clear `error` otherwise."""
    if not path.is_file():
        raise error(f"{path} is not a regular file (a pipe or device?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise error(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain containers (loading it could run arbitrary code). {advice}"
        ) from exc
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        why = "the file is empty or cut short" if isinstance(e, EOFError) else f"{type(e).__name__}: {str(e)[:200]}"
        raise error(f"{path}: cannot read as a torch file ({why})") from e


def load_torch(path: str | os.PathLike) -> Region:
    path = Path(path)
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise RegionFileError(f"{path}: expected a dict of parameter name -> tensor, got {type(obj).__name__}")
    metadata = obj.pop("__metadata__", None) or {}
    shapes_hint = obj.pop("__shapes__", None) or {}
    if not isinstance(metadata, dict):
        raise RegionFileError(f"{path}: '__metadata__' must be a dict, got {type(metadata).__name__}")
    if not isinstance(shapes_hint, dict):
        raise RegionFileError(f"{path}: '__shapes__' must be a dict of parameter name -> shape, got {type(shapes_hint).__name__}")
    if not obj:
        raise RegionFileError(f"{path}: holds no masks (an empty dict); expected parameter name -> bool mask or index tensor")
    indices, shapes = {}, {}
    for name, t in obj.items():
        if not isinstance(name, str):
            raise RegionFileError(f"{path}: key {name!r} is not a parameter name")
        if not isinstance(t, torch.Tensor):
            raise RegionFileError(f"{path}: entry {name!r} is a {type(t).__name__}, expected a tensor")
        check_backed(t, name, path)
        if t.dtype == torch.bool:
            indices[name] = torch.nonzero(t.reshape(-1)).reshape(-1)
            shapes[name] = tuple(t.shape)
        elif t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) and t.dim() == 1:
            if name not in shapes_hint:
                raise RegionFileError(
                    f"{path}: {name!r} holds flat indices but the file has no '__shapes__' entry "
                    "giving the parameter's shape; save bool masks instead, or add __shapes__"
                )
            indices[name] = torch.unique(t.to(torch.int64))
            shapes[name] = _shape(list(shapes_hint[name]) if isinstance(shapes_hint[name], (list, tuple)) else shapes_hint[name], name, path)
        else:
            raise RegionFileError(f"{path}: {name!r} must be a bool mask or a 1-D integer index tensor, got {t.dtype} {tuple(t.shape)}")
    try:
        return Region(indices, shapes, dict(metadata))
    except RegionFileError:
        raise
    except RegionError as e:
        raise RegionFileError(f"{path}: {e}") from e


def _check_dense(region: Region, target: Path, max_dense_gb: float) -> None:
    """Dense formats hold one byte per entry of every covered tensor: refuse sizes the caller did not allow, or that cannot fit."""
    total = region.num_covered
    largest = max((numel(s) for s in region.shapes.values()), default=0)
    if total > max_dense_gb * 1e9:
        raise RegionFileError(
            f"writing {target} as dense bool masks needs {total / 1e9:.3g} GB ({len(region.shapes)} tensors declared, largest "
            f"{largest:,} entries), more than --max-dense-gb {max_dense_gb:g}; if the region really covers a model that large, raise "
            "--max-dense-gb, otherwise its declared shapes are wrong (check them with `lingreg mask info`); .safetensors keeps indices only"
        )
    free_disk = shutil.disk_usage(next(p for p in [target.absolute(), *target.absolute().parents] if p.exists())).free
    available = _available_memory()
    if total > free_disk or (available is not None and largest > available // 2):
        raise RegionFileError(
            f"writing {target} as dense bool masks needs {total / 1e9:.3g} GB on disk (largest tensor {largest / 1e9:.3g} GB in memory) "
            f"but {free_disk / 1e9:.3g} GB are free on disk"
            + (f" and {available / 1e9:.3g} GB in memory" if available is not None else "")
            + "; keep it as .safetensors (indices only)"
        )


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def save_torch(region: Region, path: str | os.PathLike, overwrite: bool = False, max_dense_gb: float = MAX_DENSE_GB) -> Path:
    """Bool masks, readable by plain `torch.load(..., weights_only=True)`."""
    _check_dense(region, Path(path), max_dense_gb)
    payload: dict[str, Any] = dict(region.masks())
    payload["__metadata__"] = json.loads(json.dumps(region.metadata, default=str))
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def check_backed(t: torch.Tensor, name: str, path: Path, error: type[Exception] = RegionFileError) -> None:
    """A tensor's declared size must be backed by its data: an expanded (stride-0) 1-byte tensor can claim billions of entries."""
    if t.numel() > MAX_TENSOR_NUMEL or t.untyped_storage().nbytes() < t.numel() * t.element_size():
        raise error(
            f"{path}: {name!r} declares {t.numel():,} entries but holds {t.untyped_storage().nbytes():,} bytes of data (an expanded view?); "
            "save a real mask (`.contiguous()`) or flat indices"
        )


def load_official_dir(path: str | os.PathLike) -> Region:
    path = Path(path)
    members = sorted(path.glob("*.pt"))
    odd = [f for f in members if not f.is_file()]  # a folder, FIFO, device or broken/looping link named like a member
    if odd:
        kind = "a folder" if odd[0].is_dir() else "a broken or looping link" if odd[0].is_symlink() and not odd[0].exists() else "not a regular file"
        raise RegionFileError(
            f"{odd[0]}: {kind}, in a folder of <parameter name>.pt masks; every member must be a mask file: remove or replace it ({len(odd)} such member(s))"
        )
    files = members
    if not files:
        raise RegionFileError(f"{path}: directory holds no <parameter name>.pt files (the official code's layout)")
    masks = {}
    for f in files:
        t = torch_load(f)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
            raise RegionFileError(f"{f}: expected a bool tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        check_backed(t, f.name, path)
        masks[f.name[: -len(".pt")]] = t
    meta_file = path / "region.json"
    metadata: Any = {}
    if meta_file.exists() or meta_file.is_symlink():
        from lm_eval_lingreg.strict import loads_json, read_text

        metadata = loads_json(read_text(meta_file, RegionFileError, "region metadata file", max_bytes=2**24), RegionFileError, str(meta_file))
        if not isinstance(metadata, dict):
            raise RegionFileError(f"{meta_file}: expected a JSON object, got {type(metadata).__name__}")
    try:
        return Region.from_masks(masks, metadata)
    except RegionError as e:
        raise RegionFileError(f"{path}: {e}") from e


def save_official_dir(region: Region, path: str | os.PathLike, overwrite: bool = False, max_dense_gb: float = MAX_DENSE_GB) -> Path:
    _check_dense(region, Path(path), max_dense_gb)
    with atomic_path(path, directory=True, overwrite=overwrite) as tmp:
        for name, mask in region.masks():
            dest = tmp / f"{check_name(name)}.pt"
            if dest.parent != tmp:  # a name is data: it never becomes a path outside the folder
                raise RegionError(f"parameter name {name!r} would be written outside {path}")
            torch.save(mask, dest)
        (tmp / "region.json").write_text(json.dumps(region.metadata, indent=1, sort_keys=True, default=str))
    return Path(path)


# dispatch ------------------------------------------------------------------------------


def shipped_masks() -> dict[str, dict]:
    """Masks shipped in masks/, by name, from masks/MANIFEST.json."""
    manifest = masks_dir() / "MANIFEST.json"
    if not manifest.is_file():
        return {}
    from lm_eval_lingreg.strict import loads_json, read_text

    data = loads_json(read_text(manifest, RegionFileError, "mask manifest"), RegionFileError, str(manifest), finite=True)
    masks = data.get("masks", {}) if isinstance(data, dict) else None
    if not isinstance(masks, dict):
        raise RegionFileError(f"{manifest}: not a mask manifest (an object with `masks`); reinstall lm-eval-lingreg")
    return masks


def resolve(spec: str | os.PathLike) -> Path:
    """A path to an existing region file or directory, from a path or a shipped mask name."""
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    if not text.strip():
        raise RegionFileError("empty mask name; give a region file or the name of a shipped mask (e.g. core)")
    path = Path(text).expanduser()
    shipped = shipped_masks()
    if path.exists():
        if text in shipped and os.sep not in text and not text.startswith("."):
            raise RegionFileError(
                f"{text!r} is both a file here ({path.resolve()}) and the name of a shipped mask; write ./{text} for the file, "
                f"or {masks_dir() / shipped[text]['file']} for the shipped mask"
            )
        if not (path.is_file() or path.is_dir()):
            raise RegionFileError(f"{path} is not a regular file or folder (a pipe or device?); give a region file")
        return path
    if text in shipped:
        return masks_dir() / shipped[text]["file"]
    names = ", ".join(sorted(shipped)) or "none shipped in this install"
    raise RegionFileError(
        f"mask {text!r} not found: no such file or directory, and not the name of a shipped mask "
        f"(shipped: {names}). Give a path to a .safetensors/.pt file or an official-layout directory."
    )


def load_region(spec: str | os.PathLike) -> Region:
    """Load a region from any supported format, or by shipped-mask name."""
    path = resolve(spec)
    if not (path.is_dir() or path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES):
        raise RegionFileError(f"{path}: unknown region format {path.suffix!r}; use .safetensors, .pt/.pth/.bin, or a directory of <name>.pt files")
    try:
        with warnings.catch_warnings():  # torch's notes on refused pickles: the error below says it in one line
            warnings.simplefilter("ignore")
            region = load_official_dir(path) if path.is_dir() else load_safetensors(path) if path.suffix == ".safetensors" else load_torch(path)
    except RegionError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e  # every error names the file it is about
    region.source = str(spec)  # not metadata: names the file in later errors (a region that does not fit a model)
    return region


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format named by `fmt`, or by the suffix (no known suffix = official directory)."""
    path = Path(path)
    if fmt is None and path.suffix[1:].isalpha() and path.suffix != ".safetensors" and path.suffix not in TORCH_SUFFIXES:
        raise RegionError(
            f"{path}: the suffix {path.suffix!r} names no region format; end the name in .safetensors or .pt, "
            "or give a folder name without a suffix (the official format)"
        )
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "pt" if path.suffix in TORCH_SUFFIXES else "official")
    if fmt not in FORMATS:
        raise RegionError(f"unknown region format {fmt!r}; expected safetensors, pt or official")
    return fmt


def save_region(region: Region, path: str | os.PathLike, fmt: str | None = None, overwrite: bool = False, max_dense_gb: float = MAX_DENSE_GB) -> Path:
    """Save in the format named by `fmt` ('safetensors', 'pt', 'official') or by the suffix.

    An existing file is replaced; an existing non-empty folder only with `overwrite`. The dense
    formats (pt, official) refuse regions covering more than `max_dense_gb` billion entries.
    """
    fmt = format_for(path, fmt)
    if fmt == "safetensors":
        return save_safetensors(region, path, overwrite=overwrite)
    save = save_torch if fmt == "pt" else save_official_dir
    return save(region, path, overwrite=overwrite, max_dense_gb=max_dense_gb)


def held_value(value: float | str, region: Region, model: torch.nn.Module) -> float | dict[str, float]:
    """`value` as the region's weights hold it after `regions.apply`, for the record: 0.1 in bfloat16 is
    0.10009765625. One number when every tensor holds the same; per dtype when they differ."""
    from lm_eval_lingreg.anatomy import named_parameters

    params = named_parameters(model)
    dtypes = sorted({params[n].dtype for n, i in region.indices.items() if i.numel() and n in params}, key=str)
    held = {str(d).removeprefix("torch."): float(torch.tensor(float(value), dtype=torch.float64).to(d)) for d in dtypes}
    if len(set(held.values())) > 1:
        return held
    return next(iter(held.values()), float(value))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a region file, or of a directory's files in name order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
