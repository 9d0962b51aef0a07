"""Every causal-LM family a multilingual researcher brings runs the whole pipeline: score -> extract core ->
hf-region-ablated through the harness -> train --freeze, on tiny random models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm_eval_lingreg.anatomy import experts_of, model_slots, named_parameters
from lm_eval_lingreg.region_io import load_region

from helpers import FAMILIES, MOE_FAMILIES, SENTENCES, check_frozen_exact_and_rest_moved, lingreg, make_tiny, snapshot, tiny_tokenizer

#: Fused tensors as transformers 5 stores them: (name within a layer, what the shape is made of).
FUSED = {
    "phi3": {"self_attn.qkv_proj.weight": "(q + k + v heads) x hidden", "mlp.gate_up_proj.weight": "(2 x intermediate) x hidden"},
    **dict.fromkeys(
        MOE_FAMILIES, {"mlp.experts.gate_up_proj": "experts x (2 x intermediate) x hidden", "mlp.experts.down_proj": "experts x hidden x intermediate"}
    ),
}


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("text")
    lines = [f"{s} ({i})" for i in range(40) for s in SENTENCES]
    for iso in ("en", "fr"):
        (d / f"{iso}.txt").write_text("\n".join(lines), encoding="utf-8")
    return d


def _save(arch: str, out: Path) -> Path:
    make_tiny(arch).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def _ppl(lm) -> float:
    import lm_eval

    from lm_eval_lingreg.evaluation import task_manager
    from lm_eval_lingreg.results import per_language

    res = lm_eval.simple_evaluate(model=lm, tasks=["lingreg_ppl_en"], limit=1, task_manager=task_manager())
    return per_language(res, "token_perplexity")["en"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_score_extract_ablate_in_the_harness_and_train_frozen(arch, text_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg.models import LingregLM, RegionAblatedLM

    model_dir = _save(arch, tmp_path / arch)
    scores, core = tmp_path / "scores", tmp_path / "core.safetensors"
    assert (
        lingreg("score", "--pretrained", model_dir, "--langs", "en,fr", "--data", text_dir, "--samples", "2", "--out", scores, "--device", "cpu").returncode
        == 0
    )
    assert lingreg("extract", "core", "--scores", scores, "--langs", "en,fr", "--ratio", "0.05", "--out", core).returncode == 0
    region = load_region(core)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    before = snapshot(original)
    # every in-scope tensor, fused or 3-D, has its share selected
    assert all(idx.numel() == int(0.05 * torch.Size(region.shapes[n]).numel()) for n, idx in region.indices.items())
    for inner in FUSED.get(arch, {}):
        assert region.indices[f"model.layers.1.{inner}"].numel() > 0

    base = _ppl(LingregLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=1))
    ablated = RegionAblatedLM(pretrained=str(model_dir), mask=str(core), device="cpu", dtype="float32", batch_size=1)
    assert ablated._lingreg_info["entries_changed"] == region.num_selected
    assert _ppl(ablated) != pytest.approx(base, rel=1e-6)

    out = tmp_path / "trained"
    common = ["--pretrained", model_dir, "--lang", "en", "--data", text_dir, "--steps", "2", "--seq-len", "32", "--batch-size", "2", "--lr", "1e-3"]
    assert (
        lingreg(
            "train", *common, "--eval-every", "2", "--watch-langs", "fr", "--eval-blocks", "1", "--device", "cpu", "--freeze", core, "--out", out
        ).returncode
        == 0
    )
    trained = AutoModelForCausalLM.from_pretrained(out)
    check_frozen_exact_and_rest_moved(trained, before, region)
    assert set(named_parameters(trained)) == set(before)


@pytest.mark.parametrize("arch", ["phi3", *MOE_FAMILIES])
def test_fused_tensors_are_read_and_written_as_documented(arch):
    """A hidden dimension is a column of every reader (fused qkv/gate_up, each expert's gate_up, the router) and
    a row of every writer (each expert's down_proj); a fused 3-D expert tensor is experts x (an nn.Linear weight)."""
    model = make_tiny(arch)
    params = named_parameters(model)
    slots, hidden = model_slots(model)
    for inner in FUSED[arch]:
        name = f"model.layers.0.{inner}"
        shape = tuple(params[name].shape)
        assert experts_of(name, shape) == (shape[0] if arch in MOE_FAMILIES else 1)
        slot = slots[name]
        dense = torch.zeros(shape, dtype=torch.bool).reshape(-1)
        dense[slot.indices(5)] = True
        dense = dense.reshape(shape)
        if slot.role == "read":
            assert dense[..., 5].all() and dense.sum() == dense[..., 5].numel()
        else:
            assert dense[..., 5, :].all() and dense.sum() == dense[..., 5, :].numel()
        assert slot.entries_per_dim == int(dense.sum())
        assert slot.counts(slot.indices(5), hidden).tolist() == [slot.entries_per_dim if d == 5 else 0 for d in range(hidden)]
