"""No command writes an output that is, holds, or lies inside one of its inputs, whatever --overwrite says: one rule,
checked before anything runs, for model folders and their files, masks by path or shipped name, corpora, score sets,
rules, baselines and results."""

from __future__ import annotations

import shutil

import pytest

from helpers import REPO, lingreg

RESULTS = REPO / "docs" / "results" / "regions"
SHIPPED = REPO / "masks" / "core-top-1.safetensors"
BASELINE = REPO / "baselines" / "rules-bundled.yaml"


@pytest.fixture
def work(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    mask = tmp_path / "m.safetensors"
    shutil.copyfile(REPO / "masks" / "mono-ar-1.safetensors", mask)
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "base", results / "base")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {condition: base, metric: bits_per_byte, max: 100}\n")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ko.txt").write_text("안녕하세요\n" * 4)
    repro = tmp_path / "repro"
    shutil.copytree(RESULTS.parent / "regions", repro / "regions")
    files = {"repro": repro, "repro_file": repro / "regions" / "base" / "results.json", "repro_record": repro / "regions" / "experiment.json"}
    return {"model": model, "mask": mask, "results": results, "rules": rules, "corpus": corpus, "tmp": tmp_path, **files}


CASES = [
    ("dims-json-is-the-mask", lambda w: ["dims", w["mask"], "--json", w["mask"]], "mask"),
    ("dims-plot-is-the-mask", lambda w: ["dims", w["mask"], "--plot", w["mask"]], "mask"),
    ("dims-shipped-name", lambda w: ["dims", "core", "--json", SHIPPED], None),
    (
        "scan-output-is-the-mask",
        lambda w: ["scan", "--pretrained", w["model"], "--mask", w["mask"], "--layer", "0", "--op", "zero", "--dims", "top:2", "-o", w["mask"]],
        "mask",
    ),
    ("generate-into-model-config", lambda w: ["generate", "--pretrained", w["model"], "--prompt", "x", "-o", w["model"] / "config.json"], "model"),
    ("generate-into-model-weights", lambda w: ["generate", "--pretrained", w["model"], "--prompt", "x", "-o", w["model"] / "model.safetensors"], "model"),
    ("apply-over-the-model", lambda w: ["apply", "--pretrained", w["model"], "--mask", w["mask"], "--out", w["model"]], "model"),
    ("apply-holding-the-mask", lambda w: ["apply", "--pretrained", w["model"], "--mask", w["mask"], "--out", w["tmp"]], "mask"),
    ("train-over-the-model", lambda w: ["train", "--pretrained", w["model"], "--lang", "ko", "--out", w["model"], "--steps", "1"], "model"),
    ("train-over-the-freeze-mask", lambda w: ["train", "--pretrained", w["model"], "--lang", "ko", "--freeze", w["mask"], "--out", w["mask"]], "mask"),
    ("train-into-the-corpus", lambda w: ["train", "--pretrained", w["model"], "--lang", "ko", "--data", w["corpus"], "--out", w["corpus"] / "ckpt"], "corpus"),
    ("experts-over-a-region", lambda w: ["experts", w["mask"], "--pretrained", w["model"], "--out", w["mask"]], "mask"),
    ("experts-into-the-corpus", lambda w: ["experts", "--pretrained", w["model"], "--data", w["corpus"], "--out", w["corpus"] / "ko.txt"], "corpus"),
    ("convert-onto-itself", lambda w: ["mask", "convert", w["mask"], w["mask"]], "mask"),
    ("plot-over-results", lambda w: ["plot", w["results"], "-o", w["results"] / "base" / "results.json"], "results"),
    ("table-over-results", lambda w: ["table", w["results"], "-o", w["results"] / "base" / "results.json"], "results"),
    ("baseline-over-rules", lambda w: ["check", w["results"], "--rules", w["rules"]], None),
    # forget's -o is a path object, not text: the same rule (its masks in --conditions, its corpus read whole)
    ("forget-holding-a-condition-mask", lambda w: ["forget", "--pretrained", w["model"], "--conditions", f"none,{w['mask']}", "-o", w["tmp"]], "mask"),
    ("forget-over-the-corpus", lambda w: ["forget", "--pretrained", w["model"], "--data", w["corpus"], "-o", w["corpus"], "--overwrite"], "corpus"),
    # reproduce writes its report and baseline from the experiment folders under --out: neither may land on them
    (
        "reproduce-baseline-over-results",
        lambda w: ["reproduce", "--from-results", "--only", "regions", "--out", w["repro"], "--baseline", w["repro_file"]],
        "results",
    ),
    ("reproduce-doc-over-a-record", lambda w: ["reproduce", "--from-results", "--only", "regions", "--out", w["repro"], "--doc", w["repro_record"]], "results"),
    # what the package ships and the bundled model's cache are read by defaults: never an output, named or not
    ("scan-default-mask-over-the-shipped-file", lambda w: ["scan", "--layer", "0", "--op", "zero", "--dims", "top:1", "-o", SHIPPED], None),
    ("dims-into-the-shipped-masks", lambda w: ["dims", w["mask"], "--json", SHIPPED.parent / "new.json"], None),
    ("demo-over-the-shipped-masks", lambda w: ["demo", "--output-path", SHIPPED.parent, "--overwrite"], None),
    ("reproduce-doc-over-a-shipped-baseline", lambda w: ["reproduce", "--from-results", "--only", "regions", "--out", w["repro"], "--doc", BASELINE], None),
]


@pytest.mark.parametrize("name,cmd,what", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_or_holds_or_lies_inside_an_input_is_refused(work, name, cmd, what, overwrite):
    args = cmd(work)
    if overwrite and args[0] in ("apply", "train", "mask", "forget", "reproduce") and "--overwrite" not in args:
        args = [*args, "--overwrite"]
    before = {p: p.read_bytes() for p in work["tmp"].rglob("*") if p.is_file()}
    shipped = {p: p.read_bytes() for p in (SHIPPED, BASELINE)}
    masks = sorted(p.name for p in SHIPPED.parent.iterdir())
    proc = lingreg(*args)
    if what is None and args[0] == "check":
        assert proc.returncode == 0  # reading only: nothing to refuse
        return
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "is one of the inputs" in proc.stderr or "holds one of the inputs" in proc.stderr or "lies inside" in proc.stderr, proc.stderr
    after = {p: p.read_bytes() for p in work["tmp"].rglob("*") if p.is_file()}
    assert after == before, "an input changed"
    assert {p: p.read_bytes() for p in (SHIPPED, BASELINE)} == shipped and sorted(p.name for p in SHIPPED.parent.iterdir()) == masks


def test_an_output_beside_the_inputs_is_fine(work):
    proc = lingreg("dims", work["mask"], "--json", work["tmp"] / "dims.json")
    assert proc.returncode == 0, proc.stderr
    proc = lingreg("table", work["results"], "-o", work["results"] / "table.md")  # a new file in a results folder destroys nothing
    assert proc.returncode == 0, proc.stderr
