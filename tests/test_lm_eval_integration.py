"""Through the real `lm_eval` CLI and `lingreg` CLI, in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import bin_path, run

from lm_eval_lingreg.region_io import file_sha256, load_region, save_region
from lm_eval_lingreg.regions import named_parameters, scope_shapes
from lm_eval_lingreg.selection import select_random


def _results(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("results*.json"))
    assert files, f"no results JSON under {out_dir}"
    return json.loads(files[-1].read_text())


def _lm_eval(model: str, model_args: str, tasks: str, out: Path, limit: int = 2):
    return run(
        [bin_path("lm_eval"), "--model", model, "--model_args", model_args, "--tasks", tasks,
         "--limit", str(limit), "--batch_size", "1", "--device", "cpu", "--output_path", str(out)]
    )


@pytest.fixture(scope="module")
def tiny_mask(tiny_model_dir, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    region = select_random(scope_shapes(model), 0.05, seed=0, metadata={"model": "tiny-llama"})
    return save_region(region, tmp_path_factory.mktemp("masks") / "tiny.safetensors")


def test_registered_model_runs_and_records_the_mask(tiny_model_dir, tiny_mask, tmp_path):
    proc = _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tiny_mask},dtype=float32", "lingreg_ppl_zh,lingreg_ppl_ar", tmp_path)
    assert proc.returncode == 0
    res = _results(tmp_path)
    for iso in ("zh", "ar"):
        row = res["results"][f"lingreg_ppl_{iso}"]
        assert row["bits_per_byte,none"] > 0 and row["token_perplexity,none"] > 1
    info = res["config"]["lingreg"]
    assert info["mask_sha256"] == file_sha256(tiny_mask)
    assert info["entries_changed"] == load_region(tiny_mask).num_selected > 0
    assert info["mask_metadata"]["model"] == "tiny-llama"


def test_bad_mask_fails_before_loading_with_one_clear_error(tiny_model_dir, tmp_path):
    proc = _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tmp_path / 'missing.safetensors'}", "lingreg_ppl_en", tmp_path)
    assert proc.returncode != 0
    assert "not found" in proc.stderr and "missing.safetensors" in proc.stderr


def test_mask_for_another_model_is_rejected(tiny_model_dir, tmp_path):
    bad = {"model.layers.0.mlp.down_proj.weight": torch.zeros(640, 2048, dtype=torch.bool)}
    torch.save(bad, tmp_path / "other.pt")
    proc = _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tmp_path / 'other.pt'}", "lingreg_ppl_en", tmp_path)
    assert proc.returncode != 0 and "shape mismatch" in proc.stderr


def test_apply_writes_a_checkpoint_that_plain_hf_evaluates(tiny_model_dir, tiny_mask, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ablated"
    proc = run([bin_path("lingreg"), "apply", "--pretrained", str(tiny_model_dir), "--mask", str(tiny_mask), "--out", str(out)])
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".ablated.tmp-*"))
    region = load_region(tiny_mask)
    saved = named_parameters(AutoModelForCausalLM.from_pretrained(out))
    orig = named_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    for name, p in saved.items():
        changed = (p != orig[name]).reshape(-1)
        expect = region.mask(name).reshape(-1) if name in region.indices else torch.zeros_like(changed)
        assert torch.equal(changed & ~expect, torch.zeros_like(changed)), name
    # plain hf on the checkpoint == hf-region-ablated on the original + mask
    a, b = tmp_path / "hf", tmp_path / "ablated-run"
    assert _lm_eval("hf", f"pretrained={out},dtype=float32", "lingreg_ppl_en", a).returncode == 0
    assert _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tiny_mask},dtype=float32", "lingreg_ppl_en", b).returncode == 0
    ra, rb = _results(a)["results"]["lingreg_ppl_en"], _results(b)["results"]["lingreg_ppl_en"]
    assert ra["bits_per_byte,none"] == pytest.approx(rb["bits_per_byte,none"], rel=1e-5)


def test_apply_refuses_to_overwrite_and_leaves_no_partial_output(tiny_model_dir, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    bad = tmp_path / "bad.pt"
    torch.save({"nope.weight": torch.zeros(2, dtype=torch.bool)}, bad)
    proc = run([bin_path("lingreg"), "apply", "--pretrained", str(tiny_model_dir), "--mask", str(bad), "--out", str(tmp_path / "y")])
    assert proc.returncode == 2 and "not in the model" in proc.stderr and not (tmp_path / "y").exists()
    proc = run([bin_path("lingreg"), "apply", "--pretrained", str(tiny_model_dir), "--mask", str(bad), "--out", str(out)])
    assert proc.returncode != 0 and (out / "keep.txt").read_text() == "mine"


def test_peft_adapter_with_mask_through_the_harness_wrapper(tiny_model_dir, tiny_mask, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg.models import RegionAblatedLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    lm = RegionAblatedLM(pretrained=str(tiny_model_dir), peft=str(tmp_path / "adapter"), mask=str(tiny_mask), device="cpu", dtype="float32")
    region = load_region(tiny_mask)
    params = named_parameters(lm.model)
    for name, idx in region.indices.items():
        assert (params[name].detach().reshape(-1)[idx] == 0).all(), name
    assert any("lora_" in n for n, _ in lm.model.named_parameters())


def test_demo_prints_a_per_language_table(tiny_model_dir, tmp_path):
    proc = run([bin_path("lingreg"), "demo", "--pretrained", str(tiny_model_dir), "--langs", "en,zh",
                "--limit", "1", "--output-path", str(tmp_path)])
    assert proc.returncode == 0
    assert "English" in proc.stdout and "Chinese" in proc.stdout and "random-0.01" in proc.stdout
    assert (tmp_path / "base" / "results.json").is_file() and (tmp_path / "random-0.01" / "results.json").is_file()


def test_unknown_language_is_one_clear_error(tiny_model_dir):
    proc = run([bin_path("lingreg"), "demo", "--pretrained", str(tiny_model_dir), "--langs", "en,xx"])
    assert proc.returncode == 2 and "unknown language code(s) ['xx']" in proc.stderr


@pytest.mark.slow
def test_random_one_percent_raises_perplexity_of_the_bundled_model(bundled_model_dir, tmp_path):
    """Real model, real CLI: zeroing a random 1% of block weights makes text less likely."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir)
    mask = save_region(select_random(scope_shapes(model), 0.01, seed=0, metadata={"model": "gemma-3-270m"}), tmp_path / "r.safetensors")
    del model
    base, abl = tmp_path / "base", tmp_path / "abl"
    assert _lm_eval("hf-region-ablated", "dtype=float32", "lingreg_ppl_en,lingreg_ppl_zh", base, limit=2).returncode == 0
    assert _lm_eval("hf-region-ablated", f"mask={mask},dtype=float32", "lingreg_ppl_en,lingreg_ppl_zh", abl, limit=2).returncode == 0
    for iso in ("en", "zh"):
        b = _results(base)["results"][f"lingreg_ppl_{iso}"]["token_perplexity,none"]
        a = _results(abl)["results"][f"lingreg_ppl_{iso}"]["token_perplexity,none"]
        assert 1 < b < 1000 and a > 1.05 * b, (iso, b, a)


@pytest.mark.parametrize("model", ["hf", "hf-region-ablated"])
def test_group_of_thirty_aggregates_with_and_without_token_counts(model, tiny_model_dir, tmp_path):
    assert _lm_eval(model, f"pretrained={tiny_model_dir}", "lingreg_ppl", tmp_path, limit=1).returncode == 0
    res = _results(tmp_path)["results"]
    assert sum(k.startswith("lingreg_ppl_") for k in res) == 30
    group = res["lingreg_ppl"]
    assert group["bits_per_byte,none"] > 0
    assert ("token_perplexity,none" in group) == (model == "hf-region-ablated")


def test_demo_evaluates_given_masks_and_rejects_ones_for_another_model(tiny_model_dir, tiny_mask, tmp_path):
    proc = run([bin_path("lingreg"), "demo", "--pretrained", str(tiny_model_dir), "--langs", "en", "--limit", "1",
                "--masks", str(tiny_mask), "--output-path", str(tmp_path)])
    assert proc.returncode == 0 and "x ppl tiny" in proc.stdout and (tmp_path / "tiny" / "results.json").is_file()
    proc = run([bin_path("lingreg"), "demo", "--pretrained", str(tiny_model_dir), "--langs", "en", "--masks", "core"])
    assert proc.returncode == 2 and "shape mismatch" in proc.stderr and "made for 'gemma-3-270m'" in proc.stderr
