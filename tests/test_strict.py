"""Every YAML, JSON and CSV file is read exactly as written or refused by name: repeated keys, YAML 1.1 booleans,
huge numbers, special files and malformed CSV never pass for something else."""

from __future__ import annotations

import json
import os
import threading

import pytest

from lm_eval_lingreg.errors import LingregError, ReportError
from lm_eval_lingreg.strict import MAX_CSV_FIELD, loads_json, loads_yaml, read_csv, read_text

from helpers import REPO, lingreg

RESULTS = REPO / "docs" / "results" / "regions"


def test_a_repeated_key_is_refused_in_json_and_yaml():
    with pytest.raises(ReportError, match=r"x: the key 'max' appears twice"):
        loads_json('{"max": 1, "max": 1000}', ReportError, "x")
    with pytest.raises(ReportError, match=r"x: line 1: the key 'max' appears twice"):
        loads_yaml("{condition: base, max: 1, max: 1000}", ReportError, "x")
    with pytest.raises(ReportError, match="appears twice"):
        loads_yaml("rules:\n  - condition: base\n    max: 1\n    max: 1000\n", ReportError, "x")
    assert loads_yaml("a: 1\nb: {a: 2}\n", ReportError, "x") == {"a": 1, "b": {"a": 2}}  # the same key in two mappings is fine


def test_yaml_booleans_are_yaml_1_2():
    assert loads_yaml("on: gain\nyes: no\nflag: true\n", ReportError, "x") == {"on": "gain", "yes": "no", "flag": True}


@pytest.mark.parametrize("text", ["1" * 401, "-" + "9" * 200, "1" + "0" * 200 + ".5"])
def test_huge_numbers_are_refused_not_converted(text):
    with pytest.raises(ReportError, match="not a number a value here can have"):
        loads_json(f'{{"v": {text}}}', ReportError, "x")
    with pytest.raises(ReportError, match="not a number a value here can have"):
        loads_yaml(f"v: {text}\n", ReportError, "x")


def test_non_finite_numbers_only_where_allowed():
    assert loads_json('{"v": Infinity, "w": 1e400}', ReportError, "x") == {"v": float("inf"), "w": float("inf")}
    with pytest.raises(ReportError, match="beyond the range of a float"):
        loads_json('{"w": 1e400}', ReportError, "x", finite=True)
    with pytest.raises(ReportError, match="NaN is not a number this file may hold"):
        loads_json('{"w": NaN}', ReportError, "x", finite=True)


def test_csv_is_parsed_strictly():
    assert read_csv("a,b\n1,2\n\n3,4\n", ReportError, "x") == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    for text, msg in (
        ("a,b\n1,2,3\n", "row 2 has 3 fields but the header has 2"),
        ("a,b\n1\n", "row 2 has 1 fields"),
        ("a,a\n1,2\n", "the column 'a' twice"),
        ("a,\n1,2\n", "an empty column name"),
        ("a,b\n" + "x" * (MAX_CSV_FIELD + 1) + ",2\n", "not valid CSV"),
        ('a,b\n"1,2\n', "not valid CSV"),
        ("", "needs a header line"),
    ):
        with pytest.raises(ReportError, match=msg):
            read_csv(text, ReportError, "x")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    result: list = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(ReportError, read_text, fifo, ReportError, "rules file")), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in str(result[0].value)


def test_read_text_names_the_problem(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        read_text(tmp_path / "missing.yaml", ReportError, "rules file")
    with pytest.raises(ReportError, match="is a folder"):
        read_text(tmp_path, ReportError, "rules file")
    big = tmp_path / "big.json"
    big.write_text("1" * 101)
    with pytest.raises(ReportError, match="too large"):
        read_text(big, ReportError, "rules file", max_bytes=100)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xff\n")
    with pytest.raises(ReportError, match="not UTF-8"):
        read_text(bad, ReportError, "rules file")


# the files the commands read ----------------------------------------------------------------------------------


def test_the_gate_fails_on_a_rules_file_with_a_repeated_key(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {condition: base, metric: bits_per_byte, max: 1, max: 1000}\n")
    proc = lingreg("check", RESULTS / "base", "--rules", rules)
    assert proc.returncode == 2 and "the key 'max' appears twice" in proc.stderr and str(rules) in proc.stderr


def test_a_results_file_with_a_repeated_key_is_refused(tmp_path):
    text = (RESULTS / "base" / "results.json").read_text()
    data = json.loads(text)
    (tmp_path / "r").mkdir()
    # the same task twice: the second would silently win
    body = json.dumps(data)[:-1] + ', "results": {}}'
    (tmp_path / "r" / "results.json").write_text(body)
    proc = lingreg("table", tmp_path / "r")
    assert proc.returncode == 2 and "the key 'results' appears twice" in proc.stderr


def test_a_baseline_with_a_repeated_key_or_a_ragged_csv_is_refused(tmp_path):
    b = tmp_path / "b.json"
    b.write_text(
        '{"schema": "lm-eval-lingreg/baselines/v1", "values": [{"source": "s", "model": "m", "condition": "base", "language": "en", "metric": "bits_per_byte", "value": 1, "value": 2}]}'
    )
    proc = lingreg("check", RESULTS / "base", "--baseline", b)
    assert proc.returncode == 2 and "the key 'value' appears twice" in proc.stderr
    c = tmp_path / "b.csv"
    c.write_text("source,model,condition,language,metric,value\ns,m,base,en,bits_per_byte,1,2\n")
    proc = lingreg("check", RESULTS / "base", "--baseline", c)
    assert proc.returncode == 2 and "row 2 has 7 fields but the header has 6" in proc.stderr


def test_a_perturbation_spec_with_a_repeated_key_is_refused(tmp_path):
    from lm_eval_lingreg.perturbation import parse_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("- {layer: 1, dim: 3, op: mul, value: 4, value: 40}\n")
    with pytest.raises(LingregError, match="the key 'value' appears twice"):
        parse_spec(str(spec))
    spec.write_text("- {layer: 1, dim: 3, op: mul, value: 4, on: gain}\n")
    assert parse_spec(str(spec))[0].on == "gain"


@pytest.mark.parametrize("kind", ["fifo", "folder", "looping-link", "broken-link"])
def test_an_official_mask_folder_with_an_unreadable_member_is_refused_not_skipped(tmp_path, kind):
    import torch

    from lm_eval_lingreg.errors import RegionFileError
    from lm_eval_lingreg.region_io import load_region

    folder = tmp_path / "masks"
    folder.mkdir()
    torch.save(torch.ones(2, 2, dtype=torch.bool), folder / "model.layers.0.mlp.down_proj.weight.pt")
    odd = folder / "model.layers.0.mlp.up_proj.weight.pt"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    elif kind == "looping-link":
        odd.symlink_to(odd)
    else:
        odd.symlink_to(tmp_path / "gone.pt")
    with pytest.raises(RegionFileError, match=r"up_proj.weight.pt: .*every member must be a mask file"):
        load_region(folder)


def test_a_corpus_file_that_is_a_fifo_or_repeats_a_key_is_refused_not_skipped(tmp_path):
    from lm_eval_lingreg.corpora import read_texts
    from lm_eval_lingreg.errors import CorpusError

    (tmp_path / "ko.txt").write_text("안녕하세요\n")
    os.mkfifo(tmp_path / "ko.jsonl")  # read first: a FIFO there must not be skipped for ko.txt, nor block
    with pytest.raises(CorpusError, match="not a regular file"):
        read_texts("ko", str(tmp_path))
    os.remove(tmp_path / "ko.jsonl")
    (tmp_path / "ko.jsonl").write_text('{"text": "a", "text": "b"}\n')
    with pytest.raises(CorpusError, match="the key 'text' appears twice"):
        read_texts("ko", str(tmp_path))


def test_a_broken_bundled_cache_names_the_cache_and_the_fix(tmp_path, monkeypatch):
    from lm_eval_lingreg.bundled import is_prepared, model_dir
    from lm_eval_lingreg.errors import BundledModelError
    from lm_eval_lingreg.loading import load_model

    monkeypatch.setenv("LINGREG_CACHE", str(tmp_path))
    model_dir().mkdir(parents=True)
    (model_dir() / "lingreg-bundled.json").write_text("{}")  # marked as converted, but its files are broken
    (model_dir() / "config.json").write_text("{not json")
    assert is_prepared()
    with pytest.raises(BundledModelError, match=r"cached copy of the bundled model .*`lingreg prepare --force`"):
        load_model(None, device="cpu")


def test_a_local_file_named_like_a_shipped_mask_is_named_not_silently_preferred(tmp_path, monkeypatch):
    from lm_eval_lingreg.errors import RegionFileError
    from lm_eval_lingreg.region_io import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "core").write_bytes(b"x")
    with pytest.raises(RegionFileError, match=r"'core' is both a file here .* write ./core for the file"):
        resolve("core")
    assert resolve("./core") == tmp_path / "core" or resolve("./core").resolve() == (tmp_path / "core").resolve()


@pytest.fixture
def full_fs(tmp_path):
    """A real 96 KB tmpfs: too small for a tiny model's checkpoint."""
    from helpers import small_tmpfs

    with small_tmpfs(tmp_path / "full", "96k") as mnt:
        yield mnt


def test_a_full_disk_during_apply_is_a_named_error_and_leaves_nothing(full_fs, tiny_model_dir, tmp_path):
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.selection import select_random

    from helpers import make_tiny

    mask = save_region(select_random(scope_shapes(make_tiny("llama")), 0.01, seed=0), tmp_path / "m.safetensors")
    proc = lingreg("apply", "--pretrained", tiny_model_dir, "--mask", mask, "--out", full_fs / "abl")
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write {full_fs / 'abl'}: No space left on device; free some space" in proc.stderr
    assert "this is a bug" not in proc.stderr
    assert list(full_fs.iterdir()) == []  # no temporary, no lock, no half-written checkpoint
