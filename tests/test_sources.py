"""Other definitions of a region: magnitude, Wanda, LAPE neurons, super weights (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.errors import RegionError, RegionFileError
from lm_eval_lingreg.region_io import load_region
from lm_eval_lingreg.regions import apply, jaccard, restore
from lm_eval_lingreg.sources import (
    activation_probabilities,
    coordinates_region,
    detect_super_weights,
    input_norms,
    lape_neurons,
    lape_region,
    load_coordinates,
    load_lape,
    select_magnitude,
    select_wanda,
)

from helpers import lingreg, make_tiny

SAMPLES = [[1, 5, 9, 13, 17, 21], [1, 30, 31], [1, 7, 8, 9, 10, 40, 41, 42, 3]]


def test_magnitude_keeps_the_largest_entries_of_each_tensor(tiny_model):
    top = select_magnitude(tiny_model, 0.05)
    bottom = select_magnitude(tiny_model, 0.05, "bottom")
    for name, p in named_parameters(tiny_model).items():
        if name not in top.shapes:
            continue
        a = p.detach().abs().reshape(-1)
        k = int(0.05 * a.numel())
        assert top.indices[name].numel() == k == bottom.indices[name].numel()
        if k:
            rest = torch.ones_like(a, dtype=torch.bool)
            rest[top.indices[name]] = False
            assert a[top.indices[name]].min() >= a[rest].max()
            rest = torch.ones_like(a, dtype=torch.bool)
            rest[bottom.indices[name]] = False
            assert a[bottom.indices[name]].max() <= a[rest].min()
    assert top.metadata["kind"] == "magnitude-top" and set(top.shapes) == set(scope_shapes(tiny_model))


def _same_entries(a, b) -> bool:
    return a.shapes == b.shapes and a.num_selected == b.num_selected and jaccard(a, b)[0] == 1.0


def _inputs_of(model, module_name: str, samples) -> torch.Tensor:
    """Every input row of one module, each sample run alone (no padding anywhere)."""
    rows = []
    module = dict(model.named_modules())[module_name]
    h = module.register_forward_pre_hook(lambda _m, a: rows.append(a[0].reshape(-1, a[0].shape[-1]).detach().clone()))
    with torch.no_grad():
        for s in samples:
            model(input_ids=torch.tensor([s]))
    h.remove()
    return torch.cat(rows)


def test_wanda_norms_cover_real_tokens_only_and_select_by_weight_times_norm(tiny_model):
    norms, tokens = input_norms(tiny_model, SAMPLES, batch_size=2)  # padded batches
    assert tokens == sum(len(s) for s in SAMPLES)
    for module in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"):
        direct = _inputs_of(tiny_model, module, SAMPLES).float().pow(2).sum(0).sqrt()
        torch.testing.assert_close(norms[f"{module}.weight"], direct, rtol=1e-5, atol=1e-6)
    region = select_wanda(tiny_model, norms, 0.05)
    params = named_parameters(tiny_model)
    name = "model.layers.0.mlp.down_proj.weight"
    score = (params[name].detach().abs() * norms[name][None, :]).reshape(-1)
    chosen = region.indices[name]
    rest = torch.ones_like(score, dtype=torch.bool)
    rest[chosen] = False
    assert chosen.numel() == int(0.05 * score.numel()) and score[chosen].min() >= score[rest].max()
    assert all(region.indices[n].numel() == 0 for n, s in region.shapes.items() if len(s) == 1)  # norm gains: no input features
    rows = select_wanda(tiny_model, norms, 0.25, per_row=True)
    out, inp = params[name].shape
    per_row = torch.bincount(rows.indices[name] // inp, minlength=out)
    assert per_row.tolist() == [int(0.25 * inp)] * out
    assert rows.metadata["per_row"] is True and jaccard(region, region)[0] == 1.0


def test_zeroing_a_neurons_activation_is_zeroing_its_down_proj_column(tiny_model):
    """LAPE's intervention as a weight edit: exact for the down_proj column (and for gate/up rows: act(0) = 0, no biases)."""
    ids = torch.tensor([SAMPLES[2]])
    neurons = [[torch.tensor([3, 17, 40]), torch.tensor([0, 63])], [torch.tensor([5]), torch.tensor([], dtype=torch.long)]]
    chosen = {0: [3, 5, 17, 40], 1: [0, 63]}
    hooks = []
    for layer, cols in chosen.items():
        down = tiny_model.model.layers[layer].mlp.down_proj

        def zero(_m, args, cols=cols):
            x = args[0].clone()
            x[..., cols] = 0
            return (x,)

        hooks.append(down.register_forward_pre_hook(zero))
    with torch.no_grad():
        hooked = tiny_model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    for gate_up in (False, True):
        region = lape_region(neurons, scope_shapes(tiny_model), gate_up=gate_up)
        saved = apply(region, tiny_model)
        with torch.no_grad():
            edited = tiny_model(input_ids=ids).logits
        restore(region, tiny_model, saved)
        torch.testing.assert_close(edited, hooked, rtol=0, atol=1e-6)
    hidden = tiny_model.config.hidden_size
    assert region.indices["model.layers.0.mlp.down_proj.weight"].numel() == 4 * hidden
    assert region.indices["model.layers.0.mlp.gate_proj.weight"].numel() == 4 * hidden


def test_activation_probabilities_count_positive_activations_per_language(tiny_model):
    probs, tokens = activation_probabilities(tiny_model, {"ar": SAMPLES[:2], "zh": SAMPLES[2:]}, batch_size=2)
    assert probs.shape == (2, 64, 2) and tokens == {"ar": 9, "zh": 9}
    for li, samples in enumerate((SAMPLES[:2], SAMPLES[2:])):
        rows = []
        act = tiny_model.model.layers[1].mlp.act_fn
        h = act.register_forward_hook(lambda _m, _a, out, rows=rows: rows.append(out.reshape(-1, out.shape[-1]).detach().clone()))
        with torch.no_grad():
            for s in samples:
                tiny_model(input_ids=torch.tensor([s]))
        h.remove()
        direct = (torch.cat(rows) > 0).double().mean(0)
        torch.testing.assert_close(probs[1, :, li], direct)


def test_lape_selection_follows_the_published_procedure():
    torch.manual_seed(0)
    probs = torch.full((2, 100, 3), 0.30, dtype=torch.float64) + torch.rand(2, 100, 3, dtype=torch.float64) * 0.02  # shared neurons: high entropy
    probs[0, 7] = torch.tensor([0.9, 0.01, 0.01])  # fires for language 0 only
    probs[1, 42] = torch.tensor([0.01, 0.95, 0.02])  # language 1 only
    probs[1, 43] = torch.tensor([0.9, 0.9, 0.0])  # languages 0 and 1, not 2
    neurons = lape_neurons(probs, top_rate=0.015, filter_rate=0.95, bar_rate=0.95)  # 3 of 200 neurons: the three above
    assert [t.tolist() for t in neurons[0]] == [[7], [43]]
    assert [t.tolist() for t in neurons[1]] == [[], [42, 43]]
    assert [t.tolist() for t in neurons[2]] == [[], []]
    with pytest.raises(RegionError, match="at least two"):
        lape_neurons(probs[:, :, :1])
    with pytest.raises(RegionError, match="top_rate"):
        lape_neurons(probs, top_rate=0)


def test_a_lape_file_written_as_its_repository_writes_it_imports(tmp_path, tiny_model_dir):
    # identify.py: final_indice = [[torch.tensor(h).long() for each layer] for each language]; torch.save(final_indice, path)
    final_indice = [[torch.tensor([1, 5]).long(), torch.tensor([]).long()], [torch.tensor([5, 60]).long(), torch.tensor([2]).long()]]
    path = tmp_path / "llama-2-7b.neuron.pth"
    torch.save(final_indice, path)
    neurons = load_lape(path)
    model = make_tiny("llama")
    region = lape_region(neurons, scope_shapes(model), [1])
    hidden = model.config.hidden_size
    assert region.indices["model.layers.0.mlp.down_proj.weight"].numel() == 2 * hidden
    cols = region.indices["model.layers.1.mlp.down_proj.weight"] % 64
    assert set(cols.tolist()) == {2}
    union = lape_region(neurons, scope_shapes(model))
    assert union.indices["model.layers.0.mlp.down_proj.weight"].numel() == 3 * hidden
    # the CLI: extract lape --neurons, and mask convert, both from the model's config only
    out = tmp_path / "lape-zh.safetensors"
    r = lingreg("extract", "lape", "--neurons", path, "--file-langs", "en,zh", "--lang", "zh", "--pretrained", tiny_model_dir, "--out", out)
    assert r.returncode == 0 and _same_entries(load_region(out), region)
    conv = tmp_path / "lape-all.safetensors"
    assert lingreg("mask", "convert", path, conv, "--pretrained", tiny_model_dir).returncode == 0
    assert _same_entries(load_region(conv), union)
    r = lingreg("extract", "lape", "--neurons", path, "--lang", "zh", "--pretrained", tiny_model_dir, "--out", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--file-langs" in r.stderr


def test_bad_lape_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = {
        "pickle.pth": [Payload()],
        "dict.pth": {"a": torch.zeros(2)},
        "float.pth": [[torch.tensor([1.5])]],
        "ragged.pth": [[torch.tensor([1])], [torch.tensor([1]), torch.tensor([2])]],
        "negative.pth": [[torch.tensor([-1])]],
    }
    for name, obj in bad.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(RegionFileError):
            load_lape(tmp_path / name)
    model = make_tiny("llama")
    with pytest.raises(RegionError, match="3 layers but the model has 2"):
        lape_region([[torch.tensor([1])] * 3], scope_shapes(model))
    with pytest.raises(RegionError, match="out of range"):
        lape_region([[torch.tensor([64]), torch.tensor([])]], scope_shapes(model))


def test_super_weight_coordinates_and_detection(tmp_path, tiny_model):
    shapes = scope_shapes(tiny_model)
    (tmp_path / "sw.json").write_text(json.dumps([[1, 3, 7], {"layer": 0, "row": 0, "col": 63}]))
    (tmp_path / "sw.yaml").write_text("super_weights:\n  - [1, 3, 7]\n  - {layer: 0, row: 0, col: 63}\n")
    a = coordinates_region(load_coordinates(tmp_path / "sw.json"), shapes)
    b = coordinates_region(load_coordinates(tmp_path / "sw.yaml"), shapes)
    assert a.indices == b.indices and a.num_selected == 2
    assert a.indices["model.layers.1.mlp.down_proj.weight"].tolist() == [3 * 64 + 7]
    for text, match in (("[[1, 3]]", "layer, row, col"), ("[[1, -3, 7]]", "layer, row, col"), ("{", "not valid JSON")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(RegionFileError, match=match):
            load_coordinates(tmp_path / "bad.json")
    with pytest.raises(RegionError, match="outside"):
        coordinates_region([(1, 32, 7)], shapes)
    with pytest.raises(RegionError, match="no layers.5.mlp.down_proj.weight"):
        coordinates_region([(5, 0, 0)], shapes)
    # plant a super weight: neuron 7 of layer 1 fires hard, and down_proj[3, 7] carries it to the residual stream
    mlp = tiny_model.model.layers[1].mlp
    prompt = [1, 5, 9, 13, 17]
    seen = _inputs_of(tiny_model, "model.layers.1.mlp.gate_proj", [prompt])
    direction = seen.mean(0) / seen.mean(0).norm()
    with torch.no_grad():
        mlp.gate_proj.weight[7] = 3.0 * direction
        mlp.up_proj.weight[7] = 3.0 * direction
        mlp.down_proj.weight[3, 7] = 200.0
    found = detect_super_weights(tiny_model, prompt, spike=5.0)
    assert found and (found[0]["layer"], found[0]["row"], found[0]["col"]) == (1, 3, 7)
    with pytest.raises(RegionError, match="spike"):
        detect_super_weights(tiny_model, [1, 5], spike=1.0)
    with pytest.raises(RegionError, match="2,049 tokens.*at most 2,048"):  # refused before any forward pass
        detect_super_weights(tiny_model, [1] * 2049)


def test_extract_magnitude_and_wanda_from_the_cli(tmp_path, tiny_model_dir):
    out = tmp_path / "mag.safetensors"
    assert lingreg("extract", "magnitude", "--pretrained", tiny_model_dir, "--device", "cpu", "--ratio", "0.02", "--out", out).returncode == 0
    mag = load_region(out)
    assert mag.metadata["kind"] == "magnitude-top" and mag.metadata["model_fingerprint"]
    out = tmp_path / "wanda.safetensors"
    r = lingreg(
        "extract",
        "wanda",
        "--pretrained",
        tiny_model_dir,
        "--device",
        "cpu",
        "--langs",
        "en,fr",
        "--samples",
        "6",
        "--per-row",
        "--ratio",
        "0.05",
        "--out",
        out,
    )
    assert r.returncode == 0
    wanda = load_region(out)
    assert wanda.metadata["kind"] == "wanda-top" and wanda.metadata["samples"] == {"en": 6, "fr": 6} and wanda.metadata["tokens"] > 12
    assert set(wanda.shapes) == set(mag.shapes) and 0 <= jaccard(wanda, mag)[0] < 1
    out = tmp_path / "lape.safetensors"
    r = lingreg(
        "extract", "lape", "--pretrained", tiny_model_dir, "--device", "cpu", "--langs", "en,fr,zh", "--samples", "6", "--top-rate", "0.2",
        "--save-neurons", tmp_path / "tiny.neuron.pth", "--out", out,
    )  # fmt: skip
    assert r.returncode == 0 and "LAPE zh:" in r.stdout
    assert _same_entries(load_region(out), lape_region(load_lape(tmp_path / "tiny.neuron.pth"), mag.shapes))
    r = lingreg("extract", "wanda", "--pretrained", tiny_model_dir, "--which", "random", "--out", tmp_path / "r.safetensors")
    assert r.returncode == 2 and "top or bottom" in r.stderr
    r = lingreg("extract", "core", "--out", tmp_path / "c.safetensors")
    assert r.returncode == 2 and "needs --scores" in r.stderr


def test_outputs_never_replace_the_inputs(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    weights = next(p for p in model.iterdir() if p.suffix == ".safetensors")
    cases = [
        ("extract", "magnitude", "--pretrained", model, "--device", "cpu", "--out", weights),
        ("extract", "magnitude", "--pretrained", model, "--device", "cpu", "--out", model, "--overwrite"),
        ("extract", "magnitude", "--pretrained", model, "--device", "cpu", "--out", tmp_path, "--overwrite"),
        (
            "extract",
            "lape",
            "--pretrained",
            model,
            "--device",
            "cpu",
            "--langs",
            "en,fr",
            "--samples",
            "2",
            "--save-neurons",
            weights,
            "--out",
            tmp_path / "l.pt",
        ),
        (
            "extract",
            "lape",
            "--pretrained",
            model,
            "--device",
            "cpu",
            "--langs",
            "en,fr",
            "--samples",
            "2",
            "--save-neurons",
            tmp_path / "l.pt",
            "--out",
            tmp_path / "l.pt",
        ),
    ]
    for args in cases:
        r = lingreg(*args)
        assert r.returncode == 2 and ("is one of the inputs" in r.stderr or "holds one of the inputs" in r.stderr), args
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    lape = tmp_path / "x.neuron.pth"
    torch.save([[torch.tensor([1]), torch.tensor([2])]], lape)
    r = lingreg("mask", "convert", lape, lape, "--pretrained", model)
    assert r.returncode == 2 and "one of the inputs" in r.stderr and isinstance(torch.load(lape, weights_only=True), list)


def test_hostile_source_files_fail_fast_and_clearly(tmp_path):
    import time

    big = tmp_path / "big.neuron.pth"
    torch.save([[torch.zeros(1, dtype=torch.long).expand(10**10)]], big)
    with pytest.raises(RegionFileError, match="declares 10,000,000,000 entries"):
        load_lape(big)
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefghijklmnopqrstuvwxy", "bcdefghijklmnopqrstuvwxyz", strict=True)
    )
    (tmp_path / "laughs.yaml").write_text(laughs + "super_weights: [*z]\n")
    t = time.perf_counter()
    with pytest.raises(RegionFileError, match="entry 0 is not"):
        load_coordinates(tmp_path / "laughs.yaml")
    assert time.perf_counter() - t < 5
    model = make_tiny("llama")
    with pytest.raises(RegionError, match="selects no entry"):
        select_wanda(model, input_norms(model, SAMPLES)[0], 0.01, per_row=True)  # 0.01 x 32 inputs < 1 per row
    with pytest.raises(RegionError, match="none"):
        lape_region([[torch.tensor([], dtype=torch.long)] * 2], scope_shapes(model))


def test_extract_refuses_careless_options_before_any_work(tmp_path, tiny_model_dir):
    r = lingreg("extract", "super-weight", "--pretrained", tiny_model_dir, "--prompt", "  ", "--out", tmp_path / "s.safetensors")
    assert r.returncode == 2 and "--prompt is empty" in r.stderr
    r = lingreg("extract", "lape", "--pretrained", tiny_model_dir, "--langs", "en,zh", "--lang", "fr", "--out", tmp_path / "l.safetensors")
    assert r.returncode == 2 and "not among --langs" in r.stderr
    r = lingreg("extract", "lape", "--pretrained", tiny_model_dir, "--langs", "en,zh", "--save-neurons", "/proc/x.pth", "--out", tmp_path / "l.safetensors")
    assert r.returncode == 2 and "cannot write /proc/x.pth" in r.stderr and not (tmp_path / "l.safetensors").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["magnitude", "--per-row"], "--per-row"),
        (["magnitude", "--samples", "5"], "--samples"),
        (["wanda", "--top-rate", "0.1"], "--top-rate"),
        (["super-weight", "--ratio", "0.05"], "--ratio"),
        (["super-weight", "--coordinates", "sw.json", "--prompt", "x"], "--prompt"),
        (["lape", "--neurons", "n.pth", "--samples", "9"], "--samples"),
        (["lape", "--neurons", "n.pth", "--save-neurons", "o.pth"], "--save-neurons"),
        (["core", "--scores", "s", "--prompt", "x"], "--prompt"),
        (["lape", "--coordinates", "sw.json"], "--coordinates"),
        (["super-weight", "--neurons", "n.pth"], "--neurons"),
        (["monolingual", "--scores", "s", "--lang", "ar", "--per-row"], "--per-row"),
    ],
)
def test_extract_refuses_options_its_variant_would_ignore(tmp_path, argv, flag):
    r = lingreg("extract", *argv, "--out", tmp_path / "r.safetensors")
    assert r.returncode == 2 and f"{flag} does not apply to `lingreg extract {argv[0]}" in r.stderr and "remove it" in r.stderr
    assert not (tmp_path / "r.safetensors").exists()
