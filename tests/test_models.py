"""The lm-eval wrappers: what each run changes and records, checked against the unchanged model; clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.errors import ModelLoadError, PerturbationError, RegionFileError, RegionMismatchError
from lm_eval_lingreg.perturbation import parse_spec, spec_sha256
from lm_eval_lingreg.region_io import file_sha256, load_region, save_region
from lm_eval_lingreg.results import per_language
from lm_eval_lingreg.selection import select_random

from helpers import assert_unchanged, bin_path, lm_eval_results, run, snapshot


@pytest.fixture(scope="module")
def tiny_mask(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    region = select_random(scope_shapes(model), 0.05, seed=0, metadata={"model": "tiny-llama"})
    return save_region(region, tmp_path_factory.mktemp("masks") / "tiny.safetensors")


def _evaluate(lm, langs=("en", "zh"), limit=2) -> dict:
    import lm_eval

    from lm_eval_lingreg.evaluation import task_manager

    return lm_eval.simple_evaluate(model=lm, tasks=[f"lingreg_ppl_{iso}" for iso in langs], limit=limit, task_manager=task_manager())


@pytest.fixture(scope="module")
def base_ppl(tiny_lm):
    return per_language(_evaluate(tiny_lm), "token_perplexity")


def test_ablated_run_records_the_mask_and_equals_the_zeroed_model(tiny_model_dir, tiny_mask, tiny_lm, base_ppl):
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.models import RegionAblatedLM

    lm = RegionAblatedLM(pretrained=str(tiny_model_dir), mask=str(tiny_mask), device="cpu", dtype="float32")
    res = _evaluate(lm)
    ppl = per_language(res, "token_perplexity")
    zeroed = per_language(evaluate_conditions(tiny_lm, {"r": load_region(tiny_mask)}, ["en", "zh"], limit=2)["r"], "token_perplexity")
    assert ppl == pytest.approx(zeroed, rel=1e-9) and all(ppl[iso] != pytest.approx(base_ppl[iso], rel=1e-9) for iso in ppl), (ppl, base_ppl)
    info = res["config"]["lingreg"]
    assert info["mask_sha256"] == file_sha256(tiny_mask)
    assert info["entries_changed"] == load_region(tiny_mask).num_selected > 0
    assert info["mask_metadata"]["model"] == "tiny-llama"


def test_perturbed_run_records_spec_and_hash_and_differs_from_the_unchanged_model(tiny_model_dir, base_ppl):
    from lm_eval_lingreg.models import PerturbedLM

    spec = "layer=1:dim=3:op=mul:value=40;param=model.layers.0.mlp.down_proj.weight:row=2:col=5:op=zero"
    lm = PerturbedLM(pretrained=str(tiny_model_dir), perturb=spec, device="cpu", dtype="float32")
    res = _evaluate(lm)
    info = res["config"]["lingreg"]
    assert info["perturbation_sha256"] == spec_sha256(parse_spec(spec))
    assert info["perturbations"][0]["dims"] == [3] and info["perturbations"][1]["row"] == 2 and info["entries_changed"] > 1
    ppl = per_language(res, "token_perplexity")
    assert all(abs(ppl[iso] / base_ppl[iso] - 1) > 0.01 for iso in ("en", "zh")), (ppl, base_ppl)
    lm.perturbation.restore()
    assert per_language(_evaluate(lm), "token_perplexity") == pytest.approx(base_ppl, rel=1e-6)


def test_plain_keys_reach_the_perturbation(tiny_model_dir):
    from lm_eval_lingreg.models import PerturbedLM

    lm = PerturbedLM(pretrained=str(tiny_model_dir), layer=0, dim=2, modules="norms+o_proj", op="mul", value=4, device="cpu")
    assert lm._lingreg_info["perturbations"] == [{"layers": [0], "dims": [2], "modules": ["norms", "o_proj"], "op": "mul", "value": 4.0, "on": "param"}]
    with pytest.raises(PerturbationError, match="dim=999 out of range: the hidden size is 32"):
        PerturbedLM(pretrained=str(tiny_model_dir), layer=0, dim=999, op="mul", value=4, device="cpu")
    with pytest.raises(PerturbationError, match="needs a perturbation"):
        PerturbedLM(pretrained=str(tiny_model_dir), device="cpu")


def test_bad_mask_fails_before_the_model_loads(tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_lingreg.models import RegionAblatedLM

    monkeypatch.setattr(HFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded before the mask was checked"))
    with pytest.raises(RegionFileError, match="missing.safetensors.*not found"):
        RegionAblatedLM(pretrained="x", mask=str(tmp_path / "missing.safetensors"))


def test_mask_for_another_model_is_rejected_and_nothing_changes(tiny_model_dir, tmp_path, monkeypatch):
    from lm_eval_lingreg import models

    bad = {"model.layers.0.mlp.down_proj.weight": torch.zeros(640, 2048, dtype=torch.bool)}
    torch.save(bad, tmp_path / "other.pt")
    seen = {}
    real = models.LingregLM.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        seen["before"] = snapshot(self._model)
        seen["lm"] = self

    monkeypatch.setattr(models.LingregLM, "__init__", spy)
    with pytest.raises(RegionMismatchError, match="shape mismatch"):
        models.RegionAblatedLM(pretrained=str(tiny_model_dir), mask=str(tmp_path / "other.pt"), device="cpu")
    assert_unchanged(seen["lm"]._model, seen["before"])


def test_misspelt_model_args_are_named(tiny_model_dir):
    from lm_eval_lingreg.models import RegionAblatedLM

    with pytest.raises(ModelLoadError, match="unknown model_args key 'mask_vale' for hf-region-ablated.*'mask_value'"):
        RegionAblatedLM(pretrained=str(tiny_model_dir), mask="core", mask_vale=1)


def test_recording_adds_provenance_only_inside_the_block(tiny_lm):
    with tiny_lm.recording(condition="x", entries_changed=3):
        assert tiny_lm.get_model_info()["lingreg"]["condition"] == "x"
    assert "condition" not in tiny_lm.get_model_info()["lingreg"]


def test_peft_adapter_with_mask(tiny_model_dir, tiny_mask, tmp_path):
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


@pytest.mark.parametrize("model", ["hf", "hf-region-ablated"])
def test_group_of_thirty_aggregates_with_and_without_token_counts(model, tiny_model_dir):
    import lm_eval

    from lm_eval_lingreg.evaluation import task_manager

    res = lm_eval.simple_evaluate(
        model=model, model_args=f"pretrained={tiny_model_dir},device=cpu", tasks=["lingreg_ppl"], limit=1, task_manager=task_manager()
    )["results"]
    assert sum(k.startswith("lingreg_ppl_") for k in res) == 30
    group = res["lingreg_ppl"]
    assert group["bits_per_byte,none"] > 0
    assert ("token_perplexity,none" in group) == (model == "hf-region-ablated")


# through the real lm_eval CLI, in a subprocess ----------------------------------------------------


def _lm_eval(model: str, model_args: str, tasks: str, out, limit: int = 1):
    return run(
        [
            bin_path("lm_eval"),
            "--model",
            model,
            "--model_args",
            model_args,
            "--tasks",
            tasks,
            "--limit",
            str(limit),
            "--batch_size",
            "1",
            "--device",
            "cpu",
            "--output_path",
            str(out),
        ]
    )


def test_lm_eval_cli_runs_the_registered_models(tiny_model_dir, tiny_mask, tmp_path):
    assert _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tiny_mask},dtype=float32", "lingreg_ppl_zh", tmp_path / "a").returncode == 0
    assert lm_eval_results(tmp_path / "a")["config"]["lingreg"]["mask_sha256"] == file_sha256(tiny_mask)
    proc = _lm_eval("hf-perturbed", f"pretrained={tiny_model_dir},layer=0,dim=2,op=mul,value=4", "lingreg_ppl_en", tmp_path / "b")
    assert proc.returncode == 0
    assert json.loads(json.dumps(lm_eval_results(tmp_path / "b")["config"]["lingreg"]["perturbations"]))[0]["dims"] == [2]


def test_lm_eval_cli_ends_with_our_message(tiny_model_dir, tmp_path):
    proc = _lm_eval("hf-region-ablated", f"pretrained={tiny_model_dir},mask={tmp_path / 'missing.safetensors'}", "lingreg_ppl_en", tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("lm_eval_lingreg.errors.RegionFileError:") and "missing.safetensors" in last and "not found" in last


# the BOS convention ------------------------------------------------------------------------------------------------

TEXT = "All human beings are born free and equal in dignity and rights."


def _rolling(lm, text: str):
    from lm_eval.api.instance import Instance

    (ll,) = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)], disable_tqdm=True)
    return ll


@pytest.mark.parametrize("arch", ["tiny_model_dir", "tiny_gemma_dir"])
def test_token_perplexity_is_the_hugging_face_loss_on_bos_plus_document(request, arch):
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.models import LingregLM

    path = str(request.getfixturevalue(arch))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    doc = tok(TEXT, add_special_tokens=False).input_ids
    ids = torch.tensor([[tok.bos_token_id, *doc]])
    with torch.no_grad():
        hf_loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the document's own tokens, BOS as context
    ll = _rolling(LingregLM(pretrained=path, device="cpu", dtype="float32"), TEXT)
    assert ll.n_tokens == len(doc)
    assert math.exp(-ll / ll.n_tokens) == pytest.approx(math.exp(hf_loss), rel=1e-5)
    # lm-eval's own convention also scores p(BOS | BOS): one more token, a higher perplexity
    scored = _rolling(LingregLM(pretrained=path, device="cpu", dtype="float32", rolling_bos="score"), TEXT)
    assert scored.n_tokens == len(doc) + 1 and scored < ll


def test_the_convention_dtype_device_and_costs_are_recorded(tiny_lm):
    res = _evaluate(tiny_lm, langs=("en",), limit=1)
    info = res["config"]["lingreg"]
    assert info["rolling_bos"] == "context" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["tokens_scored"] > 100 and info["scoring_seconds"] > 0 and info["tokens_per_second"] > 0


def test_half_precision_weights_get_an_fp32_log_softmax(tiny_model_dir):
    from lm_eval_lingreg.models import LingregLM

    lm = LingregLM(pretrained=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert lm.softmax_dtype == torch.float32 and lm._lingreg_info["dtype"] == "bfloat16"
    with pytest.raises(ModelLoadError, match="rolling_bos"):
        LingregLM(pretrained=str(tiny_model_dir), rolling_bos="maybe")
    # the older name of the argument, torch_dtype, is the same request: half-precision weights, fp32 log-softmax
    lm = LingregLM(pretrained=str(tiny_model_dir), device="cpu", torch_dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16 and lm.softmax_dtype == torch.float32


def test_perturbed_model_sets_an_activation_to_its_calibration_mean(tiny_model_dir):
    """hf-perturbed measures op=mean with its own tokenizer and records the means it set."""
    from lm_eval_lingreg.models import PerturbedLM

    lm = PerturbedLM(pretrained=str(tiny_model_dir), layer=1, dim=5, on="activation", op="mean", device="cpu", dtype="float32")
    (summary,) = lm._lingreg_info["perturbed"]
    assert lm._lingreg_info["perturbations"][0]["op"] == "mean" and "value" not in lm._lingreg_info["perturbations"][0]
    assert set(summary["means"]) == {"1"} and len(summary["means"]["1"]) == 1 and summary["means"]["1"][0] != 0
    lm.perturbation.restore()


def test_perturbed_run_with_an_activation_intervention_records_it(tiny_model_dir, base_ppl):
    from lm_eval_lingreg.models import PerturbedLM

    spec = "layer=0:dim=0-15:on=activation:op=mul:value=-20"
    lm = PerturbedLM(pretrained=str(tiny_model_dir), perturb=spec, device="cpu", dtype="float32")
    res = _evaluate(lm)
    info = res["config"]["lingreg"]
    assert info["perturbations"] == [{"layers": [0], "dims": list(range(16)), "modules": ["all"], "op": "mul", "value": -20.0, "on": "activation"}]
    assert info["perturbation_sha256"] == spec_sha256(parse_spec(spec)) and info["entries_changed"] == 0
    ppl = per_language(res, "token_perplexity")
    assert all(abs(ppl[iso] / base_ppl[iso] - 1) > 1e-3 for iso in ("en", "zh")), (ppl, base_ppl)  # a tiny random model's final norm damps it
    lm.perturbation.restore()
    assert per_language(_evaluate(lm), "token_perplexity") == pytest.approx(base_ppl, rel=1e-6)
