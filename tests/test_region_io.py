"""Region file formats: exact round-trips, compactness, safety and clear errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from lm_eval_lingreg.anatomy import scope_shapes
from lm_eval_lingreg.errors import OutputError, RegionError, RegionFileError
from lm_eval_lingreg.region_io import (
    decode_indices,
    encode_indices,
    file_sha256,
    load_region,
    save_region,
)
from lm_eval_lingreg.regions import Region
from lm_eval_lingreg.selection import select_random


@pytest.fixture
def region(tiny_model) -> Region:
    return select_random(scope_shapes(tiny_model), 0.05, seed=3, metadata={"model": "tiny", "languages": ["ar", "zh"]})


@pytest.mark.parametrize("name", ["r.safetensors", "r.pt", "official_dir"])
def test_every_format_round_trips_exactly(region, tmp_path, name):
    path = save_region(region, tmp_path / name)
    assert load_region(path) == region


def test_conversion_chain_preserves_region(region, tmp_path):
    a = load_region(save_region(region, tmp_path / "a", fmt="official"))
    b = load_region(save_region(a, tmp_path / "b.pt"))
    c = load_region(save_region(b, tmp_path / "c.safetensors"))
    assert c == region


def test_safetensors_is_compact_at_one_percent():
    shapes = {f"model.layers.{i}.mlp.down_proj.weight": (640, 2048) for i in range(4)}
    region = select_random(shapes, 0.01, seed=0)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = save_region(region, os.path.join(d, "r.safetensors"))
        per_entry = os.path.getsize(path) / region.num_selected
    assert per_entry <= 4.5, f"{per_entry:.2f} bytes per selected entry"


@pytest.mark.parametrize(
    "values",
    [[], [0], [0, 1, 2, 3], [127, 128, 16383, 16384], [5, 2**35 + 7, 2**40], list(range(0, 10**6, 997))],
)
def test_varint_codec_round_trips(values):
    idx = torch.tensor(values, dtype=torch.int64)
    assert torch.equal(decode_indices(encode_indices(idx)), idx)


def test_truncated_varint_is_rejected():
    data = encode_indices(torch.tensor([300], dtype=torch.int64))[:-1]
    with pytest.raises(RegionFileError, match="truncated"):
        decode_indices(data)


def test_metadata_survives_in_header(region, tmp_path):
    path = save_region(region.with_metadata(note="x", ratio=0.05), tmp_path / "r.safetensors")
    meta = load_region(path).metadata
    assert meta["note"] == "x" and meta["languages"] == ["ar", "zh"] and meta["kind"] == "random"


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model.layers.0.mlp.up_proj.weight": _Payload()}, f)
    with pytest.raises(RegionFileError, match="refused to load"):
        load_region(path)
    assert not (tmp_path / "PWNED").exists()


def test_pt_with_flat_indices_needs_shapes(tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    torch.save({name: torch.tensor([3, 1, 3])}, tmp_path / "idx.pt")
    with pytest.raises(RegionFileError, match="__shapes__"):
        load_region(tmp_path / "idx.pt")
    torch.save({name: torch.tensor([3, 1, 3]), "__shapes__": {name: [4, 4]}}, tmp_path / "idx2.pt")
    region = load_region(tmp_path / "idx2.pt")
    assert region.indices[name].tolist() == [1, 3] and region.shapes[name] == (4, 4)


def test_index_beyond_declared_shape_is_rejected(tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    torch.save({name: torch.tensor([1, 16]), "__shapes__": {name: [4, 4]}}, tmp_path / "bad.pt")
    with pytest.raises(RegionError, match="out of range"):
        load_region(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "payload, match",
    [
        ([1, 2, 3], "expected a dict"),
        ({"a": torch.zeros(3)}, "bool mask or a 1-D integer"),
        ({"a": "text"}, "expected a tensor"),
    ],
)
def test_malformed_pt_files_name_the_problem(tmp_path, payload, match):
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(RegionFileError, match=match):
        load_region(tmp_path / "m.pt")


def test_non_region_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(RegionFileError, match="not a region file"):
        load_region(tmp_path / "weights.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(RegionFileError, match="cannot read"):
        load_region(tmp_path / "garbage.safetensors")


def test_missing_mask_says_what_to_give(tmp_path):
    with pytest.raises(RegionFileError, match="not found.*shipped"):
        load_region(tmp_path / "nope.safetensors")


def test_unknown_suffix_is_rejected(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"x")
    with pytest.raises(RegionFileError, match="unknown region format"):
        load_region(tmp_path / "m.npz")


def test_failed_save_leaves_nothing_behind(region, tmp_path, monkeypatch):
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError):
        save_region(region, tmp_path / "r.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_official_directory_never_replaces_a_folder_without_overwrite(region, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        save_region(region, victim, fmt="official")
    assert (victim / "notes.txt").read_text() == "mine"
    save_region(region, victim, fmt="official", overwrite=True)
    assert load_region(victim) == region and not (victim / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temporaries left


def test_declared_sizes_are_checked_before_allocating(tmp_path):
    """A tiny file that declares a huge tensor, or more entries than its bytes can hold, is refused up front."""
    import json

    from safetensors.numpy import save_file

    header = {"format": "lm-eval-lingreg/region", "format_version": "1", "encoding": "delta-leb128", "region": "{}"}
    name = "model.layers.0.mlp.up_proj.weight"
    save_file(
        {name: np.zeros(2, dtype=np.uint8)},
        str(tmp_path / "count.safetensors"),
        metadata={**header, "shapes": json.dumps({name: [4, 4]}), "counts": json.dumps({name: 10**9})},
    )
    with pytest.raises(RegionFileError, match="declares 1000000000 entries in 2 bytes"):
        load_region(tmp_path / "count.safetensors")
    save_file(
        {name: np.zeros(1, dtype=np.uint8)},
        str(tmp_path / "huge.safetensors"),
        metadata={**header, "shapes": json.dumps({name: [10**12, 10**3]}), "counts": json.dumps({name: 1})},
    )
    with pytest.raises(RegionFileError, match="more than any real parameter"):
        load_region(tmp_path / "huge.safetensors")


def test_dense_output_is_refused_when_it_cannot_fit(tmp_path, monkeypatch):
    from lm_eval_lingreg import region_io

    name = "model.layers.0.mlp.up_proj.weight"
    region = Region.from_indices({name: [0]}, {name: (50000, 60000)})  # 3e9 entries, one selected
    with pytest.raises(RegionFileError, match="dense bool masks needs 3 GB.*--max-dense-gb 2"):
        save_region(region, tmp_path / "big.pt")
    monkeypatch.setattr(region_io, "_available_memory", lambda: 2 * 10**9)
    with pytest.raises(RegionFileError, match="2 GB in memory"):
        save_region(region, tmp_path / "big.pt", max_dense_gb=4)
    assert list(tmp_path.iterdir()) == []
    assert load_region(save_region(region, tmp_path / "big.safetensors")) == region  # indices only: fine


def test_decoding_works_in_bounded_blocks():
    idx = torch.tensor(list(range(0, 3 * 10**5, 3)), dtype=torch.int64)
    data = encode_indices(idx)
    assert torch.equal(decode_indices(data, block=1000), idx)


def test_sha256_of_file_and_directory_is_stable(region, tmp_path):
    f = save_region(region, tmp_path / "r.safetensors")
    d = save_region(region, tmp_path / "d", fmt="official")
    assert file_sha256(f) == file_sha256(f) and len(file_sha256(d)) == 64


def test_saved_files_get_normal_permissions(region, tmp_path):
    import stat

    f = save_region(region, tmp_path / "r.safetensors")
    d = save_region(region, tmp_path / "d", fmt="official")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask


def test_shipped_mask_names_resolve_through_the_manifest():
    from lm_eval_lingreg.region_io import resolve, shipped_masks
    from lm_eval_lingreg.resources import masks_dir

    masks = shipped_masks()
    assert resolve("core") == masks_dir() / "core-top-1.safetensors" == resolve("core-top-1")
    for name, entry in masks.items():
        path = masks_dir() / entry["file"]
        assert path.is_file() and file_sha256(path) == entry["sha256"], name


def test_saving_the_same_region_twice_gives_the_same_bytes(region, tmp_path):
    a, b = save_region(region, tmp_path / "a.safetensors"), save_region(region, tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({}, "holds no masks"),
        ({"model.layers.0.w.weight": torch.tensor([1.0, 2.0])}, "bool mask or a 1-D integer"),
        ({"model.layers.0.w.weight": torch.tensor([1, 2]), "__shapes__": "12"}, "'__shapes__' must be a dict"),
        ({"model.layers.0.w.weight": torch.tensor([1, 2]), "__shapes__": [[4, 4]]}, "'__shapes__' must be a dict"),
        ({"model.layers.0.w.weight": torch.tensor([1, 2]), "__shapes__": {"model.layers.0.w.weight": "4x4"}}, "shape"),
        ({"model.layers.0.w.weight": torch.zeros(2, dtype=torch.bool), "__metadata__": [1]}, "'__metadata__' must be a dict"),
        ({"../ESCAPED": torch.zeros(2, dtype=torch.bool)}, "invalid parameter name"),
    ],
)
def test_hostile_pt_files_are_refused_with_the_reason(tmp_path, payload, match):
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(RegionFileError, match=match):
        load_region(tmp_path / "m.pt")


def test_official_dir_with_bad_metadata(tmp_path, region):
    d = save_region(region, tmp_path / "d", fmt="official")
    (d / "region.json").write_text("[1, 2]")
    with pytest.raises(RegionFileError, match="expected a JSON object"):
        load_region(d)
