"""Hostile input the readers must refuse by name, never block on, skip or misreport: FIFOs, broken and looping
links and folders where files belong; numbers that are not what they look like (1.7 tokens, 1e400, 5,000-digit
integers); repeated keys in a .safetensors header; records that say something other than what was written; a full disk."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from lm_eval_lingreg.errors import ModelLoadError, OutputError, RegionError, RegionFileError, ReportError, ScoreFileError, UsageError

from helpers import lingreg, make_tiny

RESULTS = Path(__file__).resolve().parent / "data" / "results" / "regions" / "base" / "results.json"
BIG = "1" + "0" * 5000


def _special(path: Path, kind: str) -> None:
    """Make `path` a FIFO, a folder, a broken link or a looping link."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "broken":
        path.symlink_to(path.parent / "nowhere")
    else:
        path.symlink_to(path.name)


# 1. reads that would block on a FIFO ------------------------------------------------------------


def test_an_owner_record_that_is_a_fifo_or_a_link_claims_nothing(tmp_path):
    from lm_eval_lingreg.outputs import OWNER_FILE, check_target, owner

    fifo = tmp_path / "fifo"
    fifo.mkdir()
    (fifo / "x").write_text("x")
    os.mkfifo(fifo / OWNER_FILE)
    assert owner(fifo) is None  # returns at once: the type is checked before opening
    with pytest.raises(OutputError, match="exists and is not empty; pass --overwrite"):
        check_target(fifo, directory=True, owned_by="lingreg demo")

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / OWNER_FILE).write_text(json.dumps({"command": "lingreg demo"}))
    assert owner(ours) == "lingreg demo"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "x").write_text("x")
    (linked / OWNER_FILE).symlink_to(ours / OWNER_FILE)  # another folder's record does not make this one ours
    assert owner(linked) is None
    (ours / OWNER_FILE).write_text('{"command": "lingreg demo", "command": "lingreg demo"}')
    assert owner(ours) is None


def test_experiment_records_and_results_are_read_strictly(tmp_path):
    from lm_eval_lingreg.experiments import RECORD, read_json, read_record

    os.mkfifo(tmp_path / RECORD)
    with pytest.raises(UsageError, match=rf"{RECORD} is not a regular file .* give the experiment record as a regular file"):
        read_record(tmp_path)
    (tmp_path / RECORD).unlink()
    (tmp_path / RECORD).write_text('{"plan": {}, "seconds": {}, "command": "a", "command": "b"}')
    with pytest.raises(UsageError, match="the key 'command' appears twice"):
        read_record(tmp_path)
    (tmp_path / RECORD).unlink()
    with pytest.raises(UsageError, match=f"no {tmp_path / RECORD}: run the experiment first"):
        read_record(tmp_path)

    os.mkfifo(tmp_path / "results.json")
    with pytest.raises(UsageError, match="results.json is not a regular file"):
        read_json(tmp_path / "results.json")


def test_reproduce_from_results_refuses_a_fifo_results_file(tmp_path, monkeypatch):
    from lm_eval_lingreg.experiments import regions

    out = tmp_path / "regions"
    (out / "base").mkdir(parents=True)
    os.mkfifo(out / "base" / "results.json")
    plan = regions.Plan()
    with pytest.raises(UsageError, match="base/results.json is not a regular file"):
        regions._ratios(out, plan)


# 2. entries silently skipped -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "folder", "broken", "loop"])
def test_a_score_file_that_is_not_a_regular_file_is_named_not_skipped(tmp_path, kind):
    from lm_eval_lingreg.scores import ScoreSet

    _special(tmp_path / "ko.safetensors", kind)
    with pytest.raises(ScoreFileError, match=r"ko.safetensors is not a regular file .* replace or remove it"):
        ScoreSet(tmp_path)  # --all-scored
    with pytest.raises(ScoreFileError, match=r"ko.safetensors is not a regular file"):
        ScoreSet(tmp_path, ["ko"])  # named: not "no scores for ko; run lingreg score"


@pytest.mark.parametrize(
    ("entry", "kind", "message"),
    [
        ("config.json", "fifo", "config.json is not a regular file"),
        ("model.safetensors", "fifo", "model.safetensors is not a regular file"),
        ("tokenizer.json", "fifo", "tokenizer.json is not a regular file"),
        ("generation_config.json", "fifo", "generation_config.json is not a regular file"),
        ("tokenizer_config.json", "broken", "tokenizer_config.json is a broken or looping link"),
        ("tokenizer_config.json", "loop", "tokenizer_config.json is a broken or looping link"),
        ("tokenizer_config.json", "folder", "tokenizer_config.json is a folder where a file is expected"),
        ("extra.bin", "fifo", "extra.bin is not a regular file"),
    ],
)
def test_a_model_folder_with_an_entry_that_is_not_a_file_is_refused_by_name(tiny_model_dir, tmp_path, entry, kind, message):
    from lm_eval_lingreg.loading import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    if (folder / entry).exists():
        (folder / entry).unlink()
    _special(folder / entry, kind)
    with pytest.raises(ModelLoadError, match=rf"model folder {re.escape(str(folder))}: {message}.*; replace it with the file itself or remove it"):
        load_model(str(folder), device="cpu")
    proc = lingreg("params", "--pretrained", folder)
    assert proc.returncode == 2 and message in proc.stderr and "this is a bug" not in proc.stderr


def test_a_model_folder_with_a_real_subfolder_still_loads(tiny_model_dir, tmp_path):
    from lm_eval_lingreg.loading import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "runs").mkdir()
    model, _ = load_model(str(folder), device="cpu")
    assert model is not None


# 4. unbounded integers ---------------------------------------------------------------------------


def test_parse_whole_bounds_digits_and_names_the_option():
    from lm_eval_lingreg.strict import parse_whole

    assert parse_whole(" 42 ", UsageError, "--x") == 42
    with pytest.raises(UsageError, match=r"--x: a number of 5,001 digits is beyond any value it can have"):
        parse_whole(BIG, UsageError, "--x")
    for bad in ("²", "1_000", "+3", "1e3", "-1", ""):
        with pytest.raises(UsageError, match="--x: .* is not a whole number"):
            parse_whole(bad, UsageError, "--x")
    with pytest.raises(UsageError, match="--x: must be at least 1, got 0"):
        parse_whole("0", UsageError, "--x", minimum=1)


@pytest.mark.parametrize("spec", [BIG, f"top:{BIG}", f"random:{BIG}", "²", "top:²", f"x{BIG}"])
def test_scan_dims_with_huge_or_odd_numbers_is_a_short_usage_error(spec):
    from lm_eval_lingreg.scan import pick_dimensions

    with pytest.raises(UsageError, match="--dims") as e:
        pick_dimensions(spec, list(range(32)), 32)
    assert len(str(e.value)) < 200


def test_a_region_shape_of_thousands_of_digits_is_a_region_error():
    from lm_eval_lingreg.regions import check_shape

    with pytest.raises(RegionError, match=r"declared shape has a size of a number of 4,000 digits, more than any real parameter tensor") as e:
        check_shape("w", [int("9" * 4000), 1])
    assert len(str(e.value)) < 300
    with pytest.raises(RegionError, match="more than any real parameter tensor"):
        check_shape("w", [2**30, 2**30])
    assert check_shape("w", [3, 4]) == (3, 4)


# 3. results read exactly as written ---------------------------------------------------------------


def _results(tmp_path: Path, documents: dict | None = None, limit: object = 3, raw: tuple[str, str] | None = None) -> Path:
    data = json.loads(RESULTS.read_text())
    data["config"]["limit"] = limit
    docs = {"doc_id": [0, 1], "loglikelihood": [-10.5, -12.0], "tokens": [7, 9], "bytes": [30, 41], "words": [5, 6]}
    data["lingreg_documents"] = {"lingreg_ppl_en": {**docs, **(documents or {})}}
    text = json.dumps(data)
    if raw:
        text = text.replace(*raw, 1)
    (tmp_path / "results.json").write_text(text)
    return tmp_path / "results.json"


def test_well_formed_documents_and_limits_read(tmp_path):
    from lm_eval_lingreg.results import read_run

    assert read_run(_results(tmp_path)).documents["en"].sizes["tokens"] == [7, 9]
    for limit in (None, 2, 2.0, 0.5):  # lm-eval writes --limit as a float, and below 1 as a fraction
        assert read_run(_results(tmp_path, limit=limit)).limit == limit


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ({"tokens": [7.7, 9]}, "lingreg_ppl_en: tokens 7.7 is not a whole number of 0 or more"),
        ({"tokens": [-1, 9]}, "lingreg_ppl_en: tokens -1 is not a whole number of 0 or more"),
        ({"bytes": [True, 41]}, "lingreg_ppl_en: bytes True is not a whole number"),
        ({"doc_id": ["0", "1"]}, "lingreg_ppl_en: doc_id '0' is not a whole number"),
        ({"loglikelihood": ["-10.5", -12.0]}, "lingreg_ppl_en: loglikelihood '-10.5' is not a number"),
        ({"tokens": [7]}, "have different lengths"),
    ],
)
def test_per_document_counts_must_be_whole_numbers_as_written(tmp_path, documents, message):
    from lm_eval_lingreg.results import read_run

    with pytest.raises(ReportError, match=f"malformed per-document scores .*{message}"):
        read_run(_results(tmp_path, documents))


def test_a_token_count_of_1e400_is_a_named_error_not_an_overflow(tmp_path):
    from lm_eval_lingreg.results import read_run

    path = _results(tmp_path, raw=('"tokens": [7', '"tokens": [1e400'))
    with pytest.raises(ReportError, match=f"{path}: malformed per-document scores .*tokens inf is not a whole number"):
        read_run(path)


@pytest.mark.parametrize("limit", ["1e400", "-1", "2.5", '"3"', "true", "NaN"])
def test_a_limit_that_is_no_number_of_documents_is_refused(tmp_path, limit):
    from lm_eval_lingreg.results import read_run

    path = _results(tmp_path, raw=('"limit": 3', f'"limit": {limit}'))
    with pytest.raises(ReportError, match=r"config.limit .* is not a number of documents"):
        read_run(path)
    proc = lingreg("baseline", path, "--source", "x", "-o", tmp_path / "b.json")
    assert proc.returncode == 2 and "config.limit" in proc.stderr and not (tmp_path / "b.json").exists()


# 5. .safetensors headers read strictly -------------------------------------------------------------


@pytest.fixture
def region_file(tmp_path) -> Path:
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.selection import select_random

    return save_region(select_random(scope_shapes(make_tiny("llama")), 0.05, seed=0, metadata={"kind": "random"}), tmp_path / "m.safetensors")


def _rewrite(path: Path, edit) -> Path:
    """The file with its JSON header text replaced by `edit(header_dict) -> text` (the data kept as is)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = edit(json.loads(raw[8 : 8 + n]))
    out = path.with_name("edited.safetensors")
    out.write_bytes(len(text.encode()).to_bytes(8, "little") + text.encode() + raw[8 + n :])
    return out


def _with_extra(first: str, extra: str, rest: dict) -> str:
    return "{" + first + ", " + extra + ", " + json.dumps(rest)[1:]


def test_a_repeated_metadata_key_in_the_header_is_refused(region_file):
    from lm_eval_lingreg.region_io import load_region

    def edit(h):
        meta = h.pop("__metadata__")
        return _with_extra('"__metadata__": ' + json.dumps(meta), '"__metadata__": ' + json.dumps({**meta, "region": '{"kind": "other"}'}), h)

    with pytest.raises(RegionFileError, match=r"edited.safetensors: .safetensors header: the key '__metadata__' appears twice"):
        load_region(_rewrite(region_file, edit))

    def inner(h):
        meta = h.pop("__metadata__")
        body = json.dumps(meta)[:-1] + ', "region": "{}"}'
        return '{"__metadata__": ' + body + ", " + json.dumps(h)[1:]

    with pytest.raises(RegionFileError, match="the key 'region' appears twice"):
        load_region(_rewrite(region_file, inner))


def test_a_repeated_tensor_entry_in_the_header_is_refused(region_file):
    from lm_eval_lingreg.region_io import load_region

    def edit(h):
        name = next(k for k in h if k != "__metadata__")
        return _with_extra(f'"{name}": ' + json.dumps(h[name]), f'"{name}": ' + json.dumps({**h[name], "data_offsets": [0, 0], "shape": [0]}), h)

    with pytest.raises(RegionFileError, match="appears twice in one object"):
        load_region(_rewrite(region_file, edit))


def test_a_metadata_value_of_1e400_is_refused_not_shown_as_infinity(region_file):
    from lm_eval_lingreg.region_io import load_region

    def edit(h):
        h["__metadata__"]["region"] = '{"kind": "random", "ratio": 1e400}'
        return json.dumps(h)

    path = _rewrite(region_file, edit)
    with pytest.raises(RegionFileError, match="header field 'region': 1e400 is beyond the range of a float"):
        load_region(path)
    proc = lingreg("mask", "info", path, "--json")
    assert proc.returncode == 2 and "Infinity" not in proc.stdout


def test_a_header_length_past_the_file_is_refused(region_file, tmp_path):
    from lm_eval_lingreg.region_io import load_region

    raw = region_file.read_bytes()
    for n in (len(raw), 2**40):
        bad = tmp_path / f"long{n}.safetensors"
        bad.write_bytes(n.to_bytes(8, "little") + raw[8:])
        with pytest.raises(RegionFileError, match="cannot read as a .safetensors file: its header declares"):
            load_region(bad)
    assert load_region(region_file).num_selected > 0


# 6. the record says what the weights hold ------------------------------------------------------------


def test_apply_records_the_mask_value_as_the_weights_hold_it(tiny_model_dir, region_file, tmp_path):
    out = tmp_path / "abl"
    proc = lingreg(
        "apply", "--pretrained", tiny_model_dir, "--device", "cpu", "--dtype", "bfloat16", "--mask", region_file, "--mask-value", "0.1", "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    held = float(torch.tensor(0.1, dtype=torch.bfloat16))
    assert held == 0.10009765625
    assert json.loads((out / "lingreg_ablation.json").read_text())["mask_value"] == held
    assert "entries set to 0.10009765625" in proc.stdout


def test_held_value_per_dtype():
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import held_value
    from lm_eval_lingreg.selection import select_random

    model = make_tiny("llama")
    region = select_random(scope_shapes(model), 0.05, seed=0)
    assert held_value(0.1, region, model) == float(torch.tensor(0.1)) == 0.10000000149011612  # float32 holds that
    assert held_value(0.0, region, model) == 0.0
    assert held_value("0.5", region, model.to(torch.bfloat16)) == 0.5
    assert held_value(0.1, region, model) == 0.10009765625
    first = next(n for n, i in region.indices.items() if i.numel())
    dict(model.named_parameters())[first].data = dict(model.named_parameters())[first].data.float()
    assert held_value(0.1, region, model) == {"bfloat16": 0.10009765625, "float32": float(torch.tensor(0.1))}


def test_the_ablated_model_wrapper_records_the_held_value(tiny_model_dir, region_file):
    from lm_eval_lingreg.models import RegionAblatedLM

    lm = RegionAblatedLM(pretrained=str(tiny_model_dir), mask=str(region_file), mask_value="0.1", device="cpu", dtype="bfloat16")
    assert lm._lingreg_info["mask_value"] == 0.10009765625


# 7. a full disk leaves nothing ---------------------------------------------------------------------------


@pytest.fixture
def full_fs(tmp_path):
    """A real tmpfs of 8 KB, too small for any score or task set."""
    from helpers import small_tmpfs

    with small_tmpfs(tmp_path / "full", "8k") as mnt:
        yield mnt


def test_tasks_on_a_full_disk_leave_no_task_file(full_fs):
    proc = lingreg("tasks", "--pairs", "all<>all", "-o", full_fs / "tk")
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write the task files to {full_fs / 'tk'}: No space left on device; free some space" in proc.stderr
    assert list(full_fs.iterdir()) == []


def test_tasks_failing_midway_leave_the_folder_as_it_was(tmp_path, monkeypatch):
    from lm_eval_lingreg.language_tasks import write_pair_tasks

    folder = tmp_path / "tk"
    write_pair_tasks([("fr", "de")], folder)
    before = {p.name: p.read_text() for p in folder.iterdir()}
    real, calls = Path.write_text, []

    def failing(self, *a, **k):
        calls.append(self)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OutputError, match="No space left on device; free some space"):
        write_pair_tasks([("fr", "de"), ("de", "fr"), ("zh", "ja"), ("ja", "zh"), ("ko", "vi"), ("vi", "ko")], folder, overwrite=True)
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    calls.clear()
    with pytest.raises(OutputError):
        write_pair_tasks([("zh", "ja"), ("ja", "zh"), ("ko", "vi"), ("vi", "ko"), ("ar", "es")], tmp_path / "new" / "tk")
    assert not (tmp_path / "new").exists()


def test_score_on_a_full_disk_leaves_no_empty_folder(full_fs, tok):
    from lm_eval_lingreg.scores import score_languages

    with pytest.raises(OutputError, match="No space left on device"):
        score_languages(make_tiny("llama"), tok, ["ar"], full_fs / "sc", samples=2, seed=0, batch_size=2, model_label="tiny", progress=False)
    assert list(full_fs.iterdir()) == []


# 8. messages that say what is wrong ---------------------------------------------------------------------


def test_a_fifo_corpus_is_not_reported_missing(tmp_path):
    from lm_eval_lingreg.corpora import read_texts
    from lm_eval_lingreg.errors import CorpusError

    os.mkfifo(tmp_path / "ko.txt")
    for data in (tmp_path / "ko.txt", tmp_path):
        with pytest.raises(CorpusError, match="ko.txt is not a regular file"):
            read_texts("ko", str(data))
    (tmp_path / "ko.txt").unlink()
    (tmp_path / "ko.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="ko.txt is a broken link"):
        read_texts("ko", str(tmp_path / "ko.txt"))


def test_a_fifo_results_file_is_not_reported_missing(tmp_path):
    from lm_eval_lingreg.results import find_results

    os.mkfifo(tmp_path / "results.json")
    with pytest.raises(ReportError, match="results.json: not a regular file"):
        find_results([tmp_path / "results.json"])
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="link.json: a broken or looping link"):
        find_results([tmp_path / "link.json"])
    with pytest.raises(ReportError, match="missing.json: no such file or directory"):
        find_results([tmp_path / "missing.json"])


def test_freeze_echoes_at_most_a_short_value():
    from lm_eval_lingreg.training import resolve_freeze

    for spec in (f"random:{BIG}", f"core:0.{BIG}"):
        with pytest.raises(RegionError, match="--freeze 'random:1|--freeze 'core:0") as e:
            resolve_freeze(spec, make_tiny("llama"))
        assert len(str(e.value)) < 500
