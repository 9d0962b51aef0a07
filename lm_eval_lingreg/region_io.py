"""Region file formats.

- `.safetensors` (ours): one uint8 tensor per parameter holding its sorted flat indices as
  LEB128 varints of the gaps between them (about 1-1.5 bytes per selected entry at 1%),
  with shapes, counts and the region's metadata as JSON in the header.
- `.pt` / `.pth` / `.bin`: a dict of bool masks (parameter-shaped) or 1-D flat index
  tensors, optionally with a `"__metadata__"` dict; loaded only with `weights_only=True`.
- a directory of `<parameter name>.pt` bool tensors: the layout of the official code.

`load_region` also takes the name of a mask shipped in `masks/` (see `masks/MANIFEST.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lm_eval_lingreg._atomic import atomic_path
from lm_eval_lingreg.regions import Region, RegionError
from lm_eval_lingreg.resources import masks_dir

FORMAT = "lm-eval-lingreg/region"
FORMAT_VERSION = "1"
ENCODING = "delta-leb128"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class RegionFileError(RegionError):
    """A region file that is missing, unreadable, unsafe or malformed."""


# varint coding of sorted indices ----------------------------------------------------------


def encode_indices(indices: torch.Tensor) -> np.ndarray:
    """Sorted unique int64 indices -> LEB128 bytes of (gap - 1) between successive indices."""
    idx = indices.numpy().astype(np.int64, copy=False)
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


def decode_indices(data: np.ndarray) -> torch.Tensor:
    """Inverse of `encode_indices`."""
    data = np.asarray(data, dtype=np.uint8)
    if data.size == 0:
        return torch.empty(0, dtype=torch.int64)
    ends = (data & 0x80) == 0
    if not ends[-1]:
        raise RegionFileError("truncated index data (last varint unterminated)")
    end_pos = np.flatnonzero(ends)
    starts = np.concatenate([[0], end_pos[:-1] + 1])
    value_id = np.cumsum(ends) - ends
    pos = np.arange(data.size) - starts[value_id]
    if pos.max() > 9:
        raise RegionFileError("corrupt index data (varint longer than 10 bytes)")
    gaps = np.zeros(end_pos.size, dtype=np.int64)
    payload = (data & 0x7F).astype(np.int64)
    for k in range(int(pos.max()) + 1):
        sel = pos == k
        gaps[value_id[sel]] |= payload[sel] << (7 * k)
    return torch.from_numpy(np.cumsum(gaps + 1) - 1)


# our safetensors format ------------------------------------------------------------------


def save_safetensors(region: Region, path: str | os.PathLike) -> Path:
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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_safetensors(path: str | os.PathLike) -> Region:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise RegionFileError(
                    f"{path}: not a region file (header format={header.get('format')!r}, expected {FORMAT!r}); "
                    "convert other masks with `lingreg mask convert`"
                )
            if header.get("format_version") != FORMAT_VERSION or header.get("encoding") != ENCODING:
                raise RegionFileError(
                    f"{path}: unsupported region format version {header.get('format_version')!r} / "
                    f"encoding {header.get('encoding')!r}; upgrade lm-eval-lingreg"
                )
            shapes = json.loads(header["shapes"])
            counts = json.loads(header["counts"])
            metadata = json.loads(header.get("region", "{}"))
            indices = {n: decode_indices(f.get_tensor(n)) for n in f.keys()}
    except RegionFileError:
        raise
    except Exception as e:  # safetensors raises several types for bad files
        raise RegionFileError(f"{path}: cannot read as a region .safetensors file ({e})") from e
    bad = [n for n, i in indices.items() if counts.get(n) != i.numel()]
    if bad:
        raise RegionFileError(f"{path}: corrupt file, entry counts disagree with the header for {bad[:5]}")
    return Region(indices, {n: tuple(s) for n, s in shapes.items()}, metadata)


# torch formats -------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RegionFileError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain "
            "containers (loading it could run arbitrary code). Save masks as a dict of tensors, "
            "or use the .safetensors format."
        ) from e
    except Exception as e:
        raise RegionFileError(f"{path}: cannot read as a torch file ({e})") from e


def load_torch(path: str | os.PathLike) -> Region:
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise RegionFileError(f"{path}: expected a dict of parameter name -> tensor, got {type(obj).__name__}")
    metadata = obj.pop("__metadata__", {}) or {}
    shapes_hint = obj.pop("__shapes__", {}) or {}
    indices, shapes = {}, {}
    for name, t in obj.items():
        if not isinstance(t, torch.Tensor):
            raise RegionFileError(f"{path}: entry {name!r} is a {type(t).__name__}, expected a tensor")
        if t.dtype == torch.bool:
            indices[name] = torch.nonzero(t.reshape(-1)).reshape(-1)
            shapes[name] = tuple(t.shape)
        elif not t.is_floating_point() and not t.is_complex() and t.dim() == 1:
            if name not in shapes_hint:
                raise RegionFileError(
                    f"{path}: {name!r} holds flat indices but the file has no '__shapes__' entry "
                    "giving the parameter's shape; save bool masks instead, or add __shapes__"
                )
            indices[name] = torch.unique(t.to(torch.int64))
            shapes[name] = tuple(shapes_hint[name])
        else:
            raise RegionFileError(
                f"{path}: {name!r} must be a bool mask or a 1-D integer index tensor, got {t.dtype} {tuple(t.shape)}"
            )
    return Region(indices, shapes, dict(metadata))


def save_torch(region: Region, path: str | os.PathLike) -> Path:
    """Bool masks, readable by plain `torch.load(..., weights_only=True)`."""
    payload: dict[str, Any] = dict(region.masks())
    payload["__metadata__"] = json.loads(json.dumps(region.metadata, default=str))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_official_dir(path: str | os.PathLike) -> Region:
    path = Path(path)
    files = sorted(path.glob("*.pt"))
    if not files:
        raise RegionFileError(f"{path}: directory holds no <parameter name>.pt files (the official code's layout)")
    masks = {}
    for f in files:
        t = _torch_load(f)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
            raise RegionFileError(f"{f}: expected a bool tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        masks[f.name[: -len(".pt")]] = t
    meta_file = path / "region.json"
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return Region.from_masks(masks, metadata)


def save_official_dir(region: Region, path: str | os.PathLike) -> Path:
    with atomic_path(path, directory=True) as tmp:
        for name, mask in region.masks():
            torch.save(mask, tmp / f"{name}.pt")
        (tmp / "region.json").write_text(json.dumps(region.metadata, indent=1, sort_keys=True, default=str))
    return Path(path)


# dispatch ------------------------------------------------------------------------------


def shipped_masks() -> dict[str, dict]:
    """Masks shipped in masks/, by name, from masks/MANIFEST.json."""
    manifest = masks_dir() / "MANIFEST.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text()).get("masks", {})


def resolve(spec: str | os.PathLike) -> Path:
    """A path to an existing region file or directory, from a path or a shipped mask name."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    shipped = shipped_masks()
    if str(spec) in shipped:
        return masks_dir() / shipped[str(spec)]["file"]
    names = ", ".join(sorted(shipped)) or "none shipped in this install"
    raise RegionFileError(
        f"mask {str(spec)!r} not found: no such file or directory, and not the name of a shipped mask "
        f"(shipped: {names}). Give a path to a .safetensors/.pt file or an official-layout directory."
    )


def load_region(spec: str | os.PathLike) -> Region:
    """Load a region from any supported format, or by shipped-mask name."""
    path = resolve(spec)
    if path.is_dir():
        return load_official_dir(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return load_torch(path)
    raise RegionFileError(
        f"{path}: unknown region format {path.suffix!r}; use .safetensors, .pt/.pth/.bin, or a directory of <name>.pt files"
    )


def save_region(region: Region, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Save in the format named by `fmt` ('safetensors', 'pt', 'official') or by the suffix."""
    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "pt" if path.suffix in TORCH_SUFFIXES else "official")
    if fmt == "safetensors":
        return save_safetensors(region, path)
    if fmt == "pt":
        return save_torch(region, path)
    if fmt == "official":
        return save_official_dir(region, path)
    raise RegionError(f"unknown region format {fmt!r}; expected safetensors, pt or official")


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
