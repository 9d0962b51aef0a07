"""Every `lingreg` command in process (the same `main` as the console script): outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lm_eval_lingreg.region_io import load_region, save_region
from lm_eval_lingreg.regions import jaccard

from helpers import REPO, SENTENCES, lingreg

DATA = Path(__file__).resolve().parent / "data" / "results"
REGIONS = DATA / "regions"
RULES = REPO / "baselines" / "rules-bundled.yaml"
BASELINE = REPO / "baselines" / "gemma-3-270m-regions.json"


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    lines = [f"{s} ({i})" for i in range(40) for s in SENTENCES]
    for iso in ("en", "fr"):
        (d / f"{iso}.txt").write_text("\n".join(lines), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def scores(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "scores"
    proc = lingreg("score", "--pretrained", tiny_model_dir, "--langs", "ar,es,ru", "--samples", "4", "--out", out, "--device", "cpu")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert "tokens" in proc.stderr
    return out


def test_score_extract_info_compare(scores, tmp_path):
    for which in ("top", "bottom", "random"):
        assert (
            lingreg(
                "extract", "core", "--scores", scores, "--langs", "ar,es,ru", "--ratio", "0.05", "--which", which, "--out", tmp_path / f"{which}.safetensors"
            ).returncode
            == 0
        )
    assert lingreg("extract", "monolingual", "--scores", scores, "--langs", "ar,es,ru", "--lang", "ar", "--out", tmp_path / "mono.safetensors").returncode == 0
    top = load_region(tmp_path / "top.safetensors")
    assert top.metadata["kind"] == "core-top" and top.metadata["languages"] == ["ar", "es", "ru"]
    assert top.metadata["samples"] == {"ar": 4, "es": 4, "ru": 4} and len(top.metadata["scores_sha256"]) == 64
    assert abs(top.density - 0.05) < 0.01
    mono = load_region(tmp_path / "mono.safetensors")
    assert jaccard(mono, top)[0] < 1 and mono.num_selected <= top.num_selected
    proc = lingreg("mask", "info", tmp_path / "top.safetensors")
    assert proc.returncode == 0 and "down_proj" in proc.stdout and "layer" in proc.stdout
    proc = lingreg("mask", "compare", tmp_path / "top.safetensors", tmp_path / "top.safetensors", "--json")
    assert json.loads(proc.stdout)["jaccard"] == 1.0
    proc = lingreg("extract", "core", "--scores", scores, "--out", tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "no scores for ['zh', 'ko', 'vi']" in proc.stderr


def test_paper_protocol_scores_checkpoints_bottom_monolingual_and_official_import(tiny_model_dir, tmp_path):
    out = tmp_path / "paper"
    args = ("score", "--pretrained", tiny_model_dir, "--langs", "ar,es", "--samples", "16", "--out", out, "--device", "cpu", "--preset", "paper")
    proc = lingreg(*args, "--checkpoints", "8", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    header = json.loads(__import__("safetensors").safe_open(str(out / "ar.safetensors"), "pt").metadata()["config"])
    assert (header["unit"], header["loss_norm"], header["grad_dtype"], header["batch_size"], header["seq_len"]) == (
        "documents",
        "batch-token",
        "bfloat16",
        8,
        512,
    )
    assert (out / "checkpoints" / "8" / "es.safetensors").is_file()
    proc = lingreg(*args, "--checkpoints", "4")  # 4 is not a multiple of the preset's batch of 8
    assert proc.returncode == 2 and "multiples of --batch-size 8" in proc.stderr
    bottom = tmp_path / "mono-bottom.safetensors"
    proc = lingreg("extract", "monolingual", "--scores", out, "--langs", "ar,es", "--lang", "ar", "--which", "bottom", "--out", bottom)
    assert proc.returncode == 0 and load_region(bottom).metadata["kind"] == "monolingual-bottom"
    dump = tmp_path / "dump" / "grad-mul-param_checkpoint_16"
    dump.mkdir(parents=True)
    from safetensors.torch import load_file

    for name, t in load_file(out / "ar.safetensors").items():
        torch.save(t, dump / f"{name}.pt")
    proc = lingreg("import-scores", tmp_path / "dump", "--lang", "ar", "--out", tmp_path / "imported")
    assert proc.returncode == 0 and (tmp_path / "imported" / "ar.safetensors").is_file()
    proc = lingreg("import-scores", tmp_path / "nowhere", "--lang", "ar", "--out", tmp_path / "imported")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr


def test_score_rerun_reuses_and_a_changed_option_needs_overwrite(scores, tiny_model_dir):
    again = lingreg("score", "--pretrained", tiny_model_dir, "--langs", "ar", "--samples", "4", "--out", scores, "--device", "cpu")
    assert again.returncode == 0 and "reusing it" in again.stderr
    changed = lingreg("score", "--pretrained", tiny_model_dir, "--langs", "ar", "--samples", "3", "--out", scores, "--device", "cpu")
    assert changed.returncode == 2 and "samples: 4 -> 3" in changed.stderr and "--overwrite" in changed.stderr


def test_convert_to_an_existing_folder_needs_overwrite(scores, tmp_path):
    assert lingreg("extract", "core", "--scores", scores, "--langs", "ar,es,ru", "--out", tmp_path / "r.safetensors").returncode == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("x")
    for args in (("mask", "convert", tmp_path / "r.safetensors", victim), ("extract", "core", "--scores", scores, "--langs", "ar,es,ru", "--out", victim)):
        proc = lingreg(*args)
        assert proc.returncode == 2 and "--overwrite" in proc.stderr and (victim / "notes.txt").read_text() == "x"
    assert lingreg("mask", "convert", tmp_path / "r.safetensors", victim, "--overwrite").returncode == 0
    assert load_region(victim) == load_region(tmp_path / "r.safetensors")


def test_params_scan_and_generate(tiny_model_dir, tmp_path):
    proc = lingreg("params", "--pretrained", tiny_model_dir, "--filter", r"layers\.0\.")
    assert proc.returncode == 0 and "embed_tokens" not in proc.stdout
    assert "column d (reads)" in proc.stdout and "row d (writes)" in proc.stdout and "norm entry d" in proc.stdout
    out = tmp_path / "scan.json"
    proc = lingreg(
        "scan",
        "--pretrained",
        tiny_model_dir,
        "--dims",
        "3,5,random:2",
        "--langs",
        "en,zh",
        "--docs",
        "1",
        "--tokens",
        "32",
        "--modules",
        "norms",
        "-o",
        out,
        "--device",
        "cpu",
    )
    assert proc.returncode == 0 and "x ppl zh" in proc.stdout
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 4 and {r["label"].split(":")[0] for r in data["rows"]} == {"given", "random"}
    assert data["what"] == "layers=1:dims=<d>:modules=norms:op=mul:value=4.0"
    proc = lingreg(
        "generate",
        "--pretrained",
        tiny_model_dir,
        "--prompt",
        "All human",
        "--max-new-tokens",
        "3",
        "--compare",
        "base,layer=0:dim=3:op=mul:value=100",
        "--compare",
        "param=model.layers.0.input_layernorm.weight:index=2:op=zero",
        "-o",
        tmp_path / "gen.json",
    )
    assert proc.returncode == 0
    gens = json.loads((tmp_path / "gen.json").read_text())["generations"]
    assert [g["condition"] for g in gens] == ["base", "layer=0:dim=3:op=mul:value=100", "param=model.layers.0.input_layernorm.weight:index=2:op=zero"]


def test_dims_json_and_plot(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from helpers import region_on_dims

    mask = save_region(region_on_dims(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), tmp_path / "r.safetensors")
    proc = lingreg(
        "dims",
        mask,
        "--top",
        "3",
        "--json",
        tmp_path / "d.json",
        "--plot",
        tmp_path / "d.png",
        "--activations",
        "--pretrained",
        tiny_model_dir,
        "--langs",
        "en,fr",
        "--samples",
        "2",
    )
    assert proc.returncode == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert [r["dim"] for r in data["dims"]][:2] == [7, 3] and data["hidden_size"] == 32
    assert data["activations"]["tokens"] > 0 and all(1 <= r["activation_rank"] <= 32 for r in data["dims"])
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_train_writes_a_checkpoint_and_refuses_to_replace_one(tiny_model_dir, text_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
    from lm_eval_lingreg.selection import select_random

    out = tmp_path / "ckpt"
    common = [
        "--pretrained",
        tiny_model_dir,
        "--lang",
        "en",
        "--data",
        text_dir,
        "--steps",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
        "--watch-langs",
        "fr",
        "--eval-blocks",
        "1",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    ]
    proc = lingreg("train", *common, "--freeze", "random:0.05", "--out", out)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    rec = json.loads((out / "lingreg_train.json").read_text())
    assert rec["frozen"]["exact"] and rec["freeze"] == "random:0.05" and len(rec["curves"]) == 3
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".ckpt.*"))
    proc = lingreg("train", *common, "--out", out)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = lingreg("train", *common, "--freeze", "random:0.05", "--lora", "r=4,alpha=8", "--out", tmp_path / "lora")
    assert proc.returncode == 0
    rec = json.loads((tmp_path / "lora" / "lingreg_train.json").read_text())
    assert rec["frozen"]["exact"] and rec["lora"]["r"] == 4
    merged = named_parameters(AutoModelForCausalLM.from_pretrained(tmp_path / "lora"))
    orig_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    orig = named_parameters(orig_model)
    region = select_random(scope_shapes(orig_model), 0.05, seed=0)
    for n in region.indices:
        m = region.mask(n)
        assert torch.equal(merged[n][m], orig[n][m]), n


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--steps", "0"], "must be at least 1"), (["--freeze", "core:0.07"], "no shipped mask"), (["--lora", "rank=4"], "--lora"), (["--lang", "xx"], "xx")],
)
def test_train_bad_input_leaves_nothing(tiny_model_dir, tmp_path, args, message):
    base = {"--lang": "en", "--steps": "1", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    proc = lingreg("train", "--pretrained", tiny_model_dir, *[x for kv in base.items() for x in kv])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_demo_prints_a_per_language_table(tiny_model_dir, tmp_path):
    proc = lingreg("demo", "--pretrained", tiny_model_dir, "--langs", "en,zh", "--limit", "1", "--output-path", tmp_path, "--device", "cpu")
    assert proc.returncode == 0
    assert "English" in proc.stdout and "Chinese" in proc.stdout and "random-0.01" in proc.stdout
    assert (tmp_path / "base" / "results.json").is_file() and (tmp_path / "random-0.01" / "results.json").is_file()


@pytest.mark.parametrize("verbose", [False, True])
def test_one_progress_bar_over_the_whole_job_and_lm_evals_own_only_with_v(tiny_model_dir, tmp_path, verbose):
    args = ["demo", "--pretrained", tiny_model_dir, "--langs", "en,zh", "--limit", "1", "--output-path", tmp_path, "--device", "cpu"]
    proc = lingreg(*(["-v"] if verbose else []), *args)
    assert proc.returncode == 0
    bar = re.findall(r"2 conditions x 2 tasks: +100%\|[^|]*\| 4/4", proc.stderr)  # base and the random region, 2 documents each
    assert bar, proc.stderr[-2000:]
    assert ("Running loglikelihood requests" in proc.stderr) is verbose


def test_demo_rejects_unknown_languages_and_masks_for_another_model(tiny_model_dir, tmp_path):
    proc = lingreg("demo", "--pretrained", tiny_model_dir, "--langs", "en,xx")
    assert proc.returncode == 2 and "unknown language code(s) ['xx']" in proc.stderr
    proc = lingreg("demo", "--pretrained", tiny_model_dir, "--langs", "en", "--masks", "core", "--output-path", tmp_path / "o")
    assert proc.returncode == 2 and "shape mismatch" in proc.stderr and "made for 'gemma-3-270m'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_apply_writes_a_checkpoint_or_nothing(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
    from lm_eval_lingreg.selection import select_random

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    region = select_random(scope_shapes(model), 0.05, seed=0)
    mask = save_region(region, tmp_path / "m.safetensors")
    out = tmp_path / "ablated"
    proc = lingreg("apply", "--pretrained", tiny_model_dir, "--mask", mask, "--out", out, "--device", "cpu")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    saved, orig = named_parameters(AutoModelForCausalLM.from_pretrained(out)), named_parameters(model)
    for name, p in saved.items():
        changed = (p != orig[name]).reshape(-1)
        expect = region.mask(name).reshape(-1) if name in region.indices else torch.zeros_like(changed)
        assert torch.equal(changed | expect, expect), name
    assert json.loads((out / "lingreg_ablation.json").read_text())["entries_changed"] == region.num_selected
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    bad = tmp_path / "bad.pt"
    torch.save({"nope.weight": torch.zeros(2, dtype=torch.bool)}, bad)
    proc = lingreg("apply", "--pretrained", tiny_model_dir, "--mask", bad, "--out", tmp_path / "y")
    assert proc.returncode == 2 and "not in the model" in proc.stderr and not (tmp_path / "y").exists()
    proc = lingreg("apply", "--pretrained", tiny_model_dir, "--mask", mask, "--out", keep)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and (keep / "notes.txt").read_text() == "mine"


def test_check_exit_codes(tmp_path):
    import shutil

    shipped = REPO / "docs" / "results" / "regions"  # the runs the shipped baseline was made from
    proc = lingreg("check", shipped, "--rules", RULES, "--baseline", BASELINE)
    assert proc.returncode == 0 and proc.stdout.startswith("PASS")
    for c in ("base", "core-top-1"):
        shutil.copytree(shipped / c, tmp_path / "part" / c)
    proc = lingreg("check", tmp_path / "part", "--baseline", BASELINE, "--strict")
    assert proc.returncode == 1 and "missing" in proc.stdout
    proc = lingreg("check", REGIONS, "--baseline", BASELINE)  # older runs, lm-eval's token convention
    assert proc.returncode == 2 and "--allow-mixed-bos" in proc.stderr
    proc = lingreg("check", REGIONS)
    assert proc.returncode == 2 and "--baseline and/or --rules" in proc.stderr


def test_check_fails_a_broken_run(tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(REGIONS, broken)
    data = json.loads((REGIONS / "base" / "results.json").read_text())
    data["config"]["lingreg"]["condition"] = "core-top-1"
    (broken / "core-top-1" / "results.json").write_text(json.dumps(data))
    proc = lingreg("check", broken, "--rules", RULES)
    assert proc.returncode == 1 and "FAIL: 30 of" in proc.stdout and "core-top-1 ar = 1 (below min 100)" in proc.stdout


def test_check_fails_a_nan_result_even_without_strict(tmp_path):
    """A NaN perplexity the run holds is a broken model, not a missing value to skip."""
    import shutil

    shipped = REPO / "docs" / "results" / "regions"
    shutil.copytree(shipped / "base", tmp_path / "runs" / "base")
    path = tmp_path / "runs" / "base" / "results.json"
    data = json.loads(path.read_text())
    data["results"]["lingreg_ppl_en"]["token_perplexity,none"] = "nan"
    path.write_text(json.dumps(data))
    proc = lingreg("check", tmp_path / "runs", "--baseline", BASELINE)
    assert proc.returncode == 1 and "base en token_perplexity: NaN vs baseline" in proc.stdout, proc.stdout


def test_table_plot_baseline_compare(tmp_path):
    proc = lingreg("table", REGIONS, "--metric", "token_perplexity", "--ratio-to", "base", "--format", "latex", "-o", tmp_path / "t.tex")
    assert proc.returncode == 0 and "\\toprule" in (tmp_path / "t.tex").read_text()
    proc = lingreg("table", REGIONS, "--ratio-to", "nope")
    assert proc.returncode == 2 and "no run with that label" in proc.stderr
    for name in ("h.png", "h.svg"):
        assert lingreg("plot", REGIONS, "-o", tmp_path / name).returncode == 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG" and "<svg" in (tmp_path / "h.svg").read_text()[:400]
    assert lingreg("plot", "--mask", "core", "-o", tmp_path / "d.png").returncode == 0 and (tmp_path / "d.png").stat().st_size > 5000
    assert lingreg("baseline", REGIONS, "-o", tmp_path / "b.json", "--source", "test").returncode == 0
    from lm_eval_lingreg.report import load_baseline

    assert len(load_baseline(tmp_path / "b.json")) == 4 * 30
    proc = lingreg("compare", DATA / "lm_eval_cli", "--baseline", REPO / "baselines" / "paper-figures.json", "--label", f"{DATA / 'lm_eval_cli'}=mul4:L1-N2100")
    assert proc.returncode == 0 and "perplexity vs token_perplexity" in proc.stdout and "figure" in proc.stdout


def test_broken_pipe_is_not_a_traceback(monkeypatch):
    import lm_eval_lingreg.cli.regions as regions_cli

    def broken(args):
        raise BrokenPipeError

    monkeypatch.setattr(regions_cli, "cmd_mask_info", broken)  # as when `lingreg mask info core | head -1` closes the pipe
    proc = lingreg("mask", "info", "core")
    assert proc.returncode == 141 and proc.stderr == ""


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch):
    import lm_eval_lingreg.region_io as region_io

    def bug(spec):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(region_io, "load_region", bug)
    proc = lingreg("mask", "info", "core")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unexpected ZeroDivisionError: boom") and "LINGREG_DEBUG" in proc.stderr
    monkeypatch.setenv("LINGREG_DEBUG", "1")  # the traceback as well, and still the same exit status
    proc = lingreg("mask", "info", "core")
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr and 'raise ZeroDivisionError("boom")' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unexpected ZeroDivisionError: boom")


@pytest.mark.parametrize(
    "argv",
    [
        ["apply", "--mask", "core", "--out", "x"],
        ["params"],
        ["demo"],
        ["score", "--out", "x"],
        ["dims", "core", "--activations"],
        ["experts"],
        ["scan"],
        ["generate", "--prompt", "x"],
        ["train", "--lang", "en", "--out", "x"],
        ["forget"],
        ["reproduce"],
    ],
)
def test_every_command_that_loads_a_model_takes_device_and_dtype(argv):
    from lm_eval_lingreg.cli import build_parser

    args = build_parser().parse_args([*argv, "--device", "cpu", "--dtype", "float32", "--pretrained", "some/model"])
    assert (args.device, args.dtype, args.pretrained) == ("cpu", "float32", "some/model")


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8, 1.5])
def test_ctrl_c_while_the_command_starts_is_no_traceback(delay):
    """Building the parser imports torch (seconds on a laptop): Ctrl-C then ends with one line, exit 130."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "lm_eval_lingreg.cli", "params", "--pretrained", "/nonexistent"], stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if proc.returncode != 2:  # the command may have finished (a clear error) before the signal
        # 130, or death by SIGINT where the interrupt landed in code that a C extension ran through PyRun_String
        # (Python then re-raises the signal at exit whatever status was returned): a shell reads both as 130.
        assert proc.returncode in (130, -signal.SIGINT) and "interrupted" in err, (proc.returncode, err)


def test_a_dollar_label_is_text_in_a_plot_and_non_ascii_output_survives_an_ascii_terminal(tmp_path):
    import shutil
    import subprocess
    import sys

    from helpers import REPO

    for c in ("base", "core-top-1"):
        shutil.copytree(REPO / "docs" / "results" / "regions" / c, tmp_path / "r" / c)
    proc = lingreg("plot", tmp_path / "r", "-o", tmp_path / "p.png", "--label", f"{tmp_path / 'r' / 'core-top-1'}=$x^$")
    assert proc.returncode == 0 and (tmp_path / "p.png").stat().st_size > 0, proc.stderr
    env = {**__import__("os").environ, "PYTHONIOENCODING": "ascii"}
    cmd = [sys.executable, "-m", "lm_eval_lingreg.cli", "table", str(tmp_path / "r"), "--label", f"{tmp_path / 'r' / 'core-top-1'}=dé"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "d\\xe9" in out.stdout, out.stderr
