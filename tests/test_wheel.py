"""A plain `pip install` of the built wheel (no extras) into a fresh virtual environment runs the bundled model,
the literal lm-eval command of the README, and every `lingreg` command. The environment is built in the background
(tests/plain_install.py, started by conftest.py) while the other tests run; it needs the package index."""

from __future__ import annotations

import json
import os
import time

import pytest

from helpers import run

pytestmark = [pytest.mark.slow, pytest.mark.install]


@pytest.fixture(scope="module")
def plain() -> dict:
    from conftest import plain_install_dir

    root = plain_install_dir()
    deadline = time.time() + 1500
    while not (root / "done").exists():
        assert time.time() < deadline, "the plain install did not finish"
        time.sleep(2)
    log = (root / "log.txt").read_text()
    assert (root / "done").read_text() == "0", log[-6000:]
    env = {"LINGREG_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    return {"root": root, "bin": root / "venv" / "bin", "env": env}


def _run(plain, *cmd, cwd="/"):
    return run([str(plain["bin"] / cmd[0]), *map(str, cmd[1:])], env=plain["env"], cwd=cwd)


def test_no_extras_were_installed_and_the_wheel_carries_its_data(plain):
    proc = _run(
        plain,
        "python",
        "-c",
        "import json, importlib.util as u, lm_eval_lingreg, pathlib\n"
        "p = pathlib.Path(lm_eval_lingreg.__file__).parent\n"
        "print(json.dumps({'pytest': u.find_spec('pytest') is not None, 'accelerate': u.find_spec('accelerate') is not None,"
        " 'peft': u.find_spec('peft') is not None, 'tasks': (p / 'tasks' / 'lingreg_ppl.yaml').is_file(),"
        " 'masks': (p / 'masks' / 'MANIFEST.json').is_file(), 'baselines': (p / 'baselines' / 'rules-bundled.yaml').is_file(),"
        " 'hook': (p.parent / 'lm_eval_lingreg.pth').is_file(), 'file': str(p)}))",
    )
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["pytest"] is False and facts["accelerate"] and facts["peft"]
    assert facts["tasks"] and facts["masks"] and facts["baselines"] and facts["hook"] and facts["file"].startswith(str(plain["root"]))


def test_the_bundled_model_was_prepared_from_scratch(plain):
    assert (plain["root"] / "cache" / "models" / "gemma-3-270m" / "lingreg-bundled.json").is_file()


def test_the_literal_readme_lm_eval_command_runs(plain, tmp_path):
    proc = _run(
        plain, "lm_eval", "--model", "hf-region-ablated", "--model_args", "mask=core", "--tasks", "lingreg_ppl_en", "--output_path", tmp_path, cwd=tmp_path
    )
    assert proc.returncode == 0
    res = json.loads(sorted(tmp_path.rglob("results*.json"))[-1].read_text())
    assert res["results"]["lingreg_ppl_en"]["token_perplexity,none"] > 1e6  # the core region zeroed: broken, as expected


def test_the_literal_generation_command_runs_and_the_core_region_changes_the_language_written(plain, tmp_path):
    """The guide's `lm_eval --model hf-region-ablated --model_args mask=core --tasks lingreg_gen_zh`, on the bundled model."""
    argv = ["lm_eval", "--model", "hf-region-ablated", "--model_args", "mask=core", "--tasks", "lingreg_gen_zh", "--limit", "2"]
    proc = _run(plain, *argv, "--output_path", tmp_path, "--log_samples", cwd=tmp_path)
    assert proc.returncode == 0
    res = json.loads(sorted(tmp_path.rglob("results*.json"))[-1].read_text())
    (samples,) = tmp_path.rglob("samples_lingreg_gen_zh_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and all(r["detected_lang"] != "zh" for r in rows), rows  # the core region removed: no Chinese comes out
    assert res["results"]["lingreg_gen_zh"]["lang_fidelity,none"] == 0.0


def test_every_lingreg_command_runs(plain, tiny_model_dir, tmp_path):
    tiny = str(tiny_model_dir)
    steps = [
        ("mask", "info", "core"),
        ("params", "--pretrained", tiny, "--filter", "layers.0.mlp"),
        ("score", "--pretrained", tiny, "--langs", "ar,es", "--samples", "2", "--out", tmp_path / "scores"),
        ("extract", "core", "--scores", tmp_path / "scores", "--langs", "ar,es", "--out", tmp_path / "core.safetensors"),
        ("extract", "monolingual", "--scores", tmp_path / "scores", "--langs", "ar,es", "--lang", "ar", "--out", tmp_path / "mono.pt"),
        ("mask", "compare", tmp_path / "core.safetensors", tmp_path / "mono.pt"),
        ("mask", "convert", tmp_path / "mono.pt", tmp_path / "mono-official"),
        ("apply", "--pretrained", tiny, "--mask", tmp_path / "core.safetensors", "--out", tmp_path / "ablated"),
        ("dims", tmp_path / "core.safetensors", "--top", "3", "--plot", tmp_path / "dims.png"),
        ("scan", "--pretrained", tiny, "--mask", tmp_path / "core.safetensors", "--dims", "top:1,random:1", "--langs", "en", "--docs", "1", "--tokens", "16"),
        ("generate", "--pretrained", tiny, "--prompt", "All human", "--max-new-tokens", "2", "--compare", "base,layer=0:dim=1:op=zero"),
        (
            "train",
            "--pretrained",
            tiny,
            "--lang",
            "en",
            "--steps",
            "1",
            "--seq-len",
            "32",
            "--watch-langs",
            "en",
            "--eval-blocks",
            "1",
            "--out",
            tmp_path / "ckpt",
        ),
        ("demo", "--pretrained", tiny, "--langs", "en", "--limit", "1", "--output-path", tmp_path / "demo"),
        ("table", tmp_path / "demo", "--ratio-to", "base"),
        ("check", tmp_path / "demo", "--rules", tmp_path / "rules.yaml"),
        ("plot", tmp_path / "demo", "-o", tmp_path / "h.png"),
        ("baseline", tmp_path / "demo", "-o", tmp_path / "b.json", "--source", "test"),
        ("compare", tmp_path / "demo", "--baseline", tmp_path / "b.json"),
        (
            "forget",
            "--pretrained",
            tiny,
            "--lang",
            "en",
            "--steps",
            "1",
            "--conditions",
            "none,random:0.05",
            "--eval-langs",
            "en",
            "--eval-limit",
            "1",
            "--seq-len",
            "32",
            "--watch-langs",
            "en",
            "--eval-blocks",
            "1",
            "-o",
            tmp_path / "forget",
        ),
    ]
    (tmp_path / "rules.yaml").write_text("rules:\n  - {condition: random-0.01, ratio_to: base, max: 100}\n")
    # The console script itself for the first command; the rest through the same `main` in one interpreter of the plain
    # environment, so that torch and transformers are imported once rather than twenty times.
    proc = _run(plain, "lingreg", *steps[0], cwd=tmp_path)
    assert proc.returncode == 0, (steps[0], proc.stderr[-3000:])
    driver = (
        "import json, sys\n"
        "from lm_eval_lingreg.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    rc = main(argv)\n"
        "    print('RC', json.dumps([argv[:2], rc]), flush=True)\n"
        "    if rc:\n"
        "        sys.exit(rc)\n"
    )
    proc = _run(plain, "python", "-c", driver, json.dumps([[str(a) for a in cmd] for cmd in steps[1:]]), cwd=tmp_path)
    done = [json.loads(line[3:]) for line in proc.stdout.splitlines() if line.startswith("RC ")]
    assert proc.returncode == 0 and len(done) == len(steps) - 1, (done[-1:], proc.stderr[-3000:])
    assert all(rc == 0 for _, rc in done)
    assert (tmp_path / "ablated" / "model.safetensors").is_file() and (tmp_path / "forget" / "summary.json").is_file()
    assert os.path.getsize(tmp_path / "dims.png") > 1000
