"""Neuron perturbations: the FFN's intermediate activation changed through hooks. Zeroing and multiplying a
neuron equal the weight edits of its down_proj column; mean and median are measured on one language's text;
every misuse is refused before anything changes; restore removes the hooks."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.errors import LingregError, PerturbationError
from lm_eval_lingreg.interventions import perturb
from lm_eval_lingreg.perturbation import Perturbation, parse_spec
from lm_eval_lingreg.regions import Region

from helpers import assert_unchanged, make_tiny, snapshot, tiny_tokenizer

ARCHS = ["llama", "gemma3"]
IDS = torch.tensor([[1, 40, 41, 42, 43, 44], [1, 50, 51, 52, 53, 54]])
NEURONS = {0: [3, 17, 40], 1: [0, 5, 63]}


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _columns(model: torch.nn.Module, neurons: dict[int, list[int]]) -> Region:
    """The region of the neurons' down_proj columns (the weight-edit form of a neuron)."""
    shapes = {f"model.layers.{la}.mlp.down_proj.weight": tuple(model.model.layers[la].mlp.down_proj.weight.shape) for la in neurons}
    indices = {}
    for la, cols in neurons.items():
        rows, width = shapes[f"model.layers.{la}.mlp.down_proj.weight"]
        indices[f"model.layers.{la}.mlp.down_proj.weight"] = torch.tensor(sorted(r * width + c for r in range(rows) for c in cols), dtype=torch.int64)
    return Region(indices, shapes, {"kind": "lape"})


def _spec(neurons: dict[int, list[int]], rest: str) -> list[Perturbation]:
    return parse_spec(";".join(f"neuron={'+'.join(map(str, n))}:layer={la}:{rest}" for la, n in neurons.items()))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", ["op=zero", "op=mul:value=3.5", "op=mul:value=-2"])
def test_zero_and_mul_on_neurons_equal_the_down_proj_column_edit(arch, op):
    model = make_tiny(arch)
    before = snapshot(model)
    with torch.no_grad():
        base = model(IDS).logits
        with perturb(model, _spec(NEURONS, op)) as applied:
            hooked = model(IDS).logits
            assert applied.entries_changed == 0  # no weight moved
            assert_unchanged(model, before)
        assert _no_hooks(model)
        with perturb(model, Perturbation(op=op.split(":")[0].removeprefix("op="), value=_value(op), mask=_columns(model, NEURONS))):
            edited = model(IDS).logits
    assert_unchanged(model, before)
    assert (hooked - base).abs().max() > 1e-3  # the neurons matter
    torch.testing.assert_close(hooked, edited, atol=1e-6, rtol=1e-6)


def _value(op: str) -> float | None:
    return float(op.split("value=")[1]) if "value=" in op else None


@pytest.mark.parametrize("arch", ARCHS)
def test_a_neuron_region_addresses_its_down_proj_columns(arch, tmp_path):
    from lm_eval_lingreg.region_io import save_region

    model = make_tiny(arch)
    path = save_region(_columns(model, NEURONS), tmp_path / "lape.safetensors")
    with torch.no_grad(), perturb(model, parse_spec(f"neurons={path}:op=mul:value=0.5")):
        from_file = model(IDS).logits
    with torch.no_grad(), perturb(model, _spec(NEURONS, "op=mul:value=0.5")):
        inline = model(IDS).logits
    torch.testing.assert_close(from_file, inline, atol=0, rtol=0)
    with torch.no_grad(), perturb(model, parse_spec(f"neurons={path}:layers=1:op=zero")) as applied:
        assert applied.summary[0]["activation_layers"] == [1] and applied.summary[0]["neurons"] == 3


def _hand_statistic(model, tok, lang, layer, neurons, stat):
    """The neurons' activation (down_proj's input) over every token but BOS, one sentence at a time, by a plain hook."""
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.steering import NEURON_SAMPLES

    rows = []
    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(lambda _m, args: rows.append(args[0][0, 1:, neurons].float()))
    try:
        with torch.no_grad():
            for ids in make_samples(tok, lang, NEURON_SAMPLES).input_ids:
                model(torch.tensor([ids]))
    finally:
        handle.remove()
    x = torch.cat(rows)
    return x.mean(0) if stat == "mean" else torch.quantile(x, 0.5, dim=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stat", ["mean", "median"])
def test_mean_and_median_fix_neurons_to_their_value_on_the_language(arch, stat):
    model, tok = make_tiny(arch), tiny_tokenizer()
    want = _hand_statistic(model, tok, "fr", 1, [5, 9], stat)
    seen = []
    with torch.no_grad(), perturb(model, parse_spec(f"neuron=5+9:layer=1:op={stat}:lang=fr"), tokenizer=tok) as applied:
        handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
        model(IDS)
        handle.remove()
        recorded = torch.tensor(applied.summary[0][stat]["1"])
    torch.testing.assert_close(recorded, want, atol=1e-5, rtol=1e-4)
    # a later pre-hook sees the input as the perturbation's hook left it: the measured values at every position
    torch.testing.assert_close(seen[0][..., [5, 9]], recorded.to(seen[0].dtype).expand(*seen[0].shape[:-1], 2))
    assert _no_hooks(model)
    other = _hand_statistic(model, tok, "zh", 1, [5, 9], stat)
    assert not torch.allclose(want, other)  # the language chosen matters


@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_neurons_reach_the_down_projection(arch):
    model = make_tiny(arch)
    with torch.no_grad():
        with perturb(model, parse_spec("neuron=5+9:layer=1:op=set:value=0.25")):
            a = model(IDS).logits
        down = model.model.layers[1].mlp.down_proj
        handle = down.register_forward_pre_hook(
            lambda _m, args: (
                torch.cat(
                    [
                        args[0][..., :5],
                        torch.full_like(args[0][..., 5:6], 0.25),
                        args[0][..., 6:9],
                        torch.full_like(args[0][..., 9:10], 0.25),
                        args[0][..., 10:],
                    ],
                    -1,
                ),
            )
        )
        b = model(IDS).logits
        handle.remove()
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("neuron=64:layer=0:op=zero", "neuron=64 out of range in layer 0"),
        ("neuron=1:layer=2:op=zero", "layer 2 out of range"),
        ("neuron=1:op=mean", "add lang="),
        ("neuron=1:op=median:lang=xx", "not one of the 30 languages"),
        ("neuron=1:op=mul:value=1e300", "overflows"),
        ("neurons=missing.safetensors:op=zero", "missing.safetensors"),
        ("neuron=1:op=noise:value=0.1", "not op=noise"),
        ("neuron=1:on=param:op=zero", "use mask= with the neurons' down_proj columns"),
        ("neuron=1:neurons=x.safetensors:op=zero", "exactly one target"),
        ("dim=1:op=median:on=activation", "op=median"),
        ("mask=core:lang=fr", "lang= names the calibration language"),
    ],
)
def test_misuse_is_refused_before_anything_changes(spec, message):
    model, tok = make_tiny("llama"), tiny_tokenizer()
    before = snapshot(model)
    with pytest.raises(LingregError) as info:
        perturb(model, parse_spec(spec), tokenizer=tok)
    assert message in str(info.value)
    assert_unchanged(model, before)
    assert _no_hooks(model)


def test_a_region_without_neurons_and_a_model_without_down_proj_are_refused():
    model = make_tiny("llama")
    shapes = {"model.layers.0.self_attn.q_proj.weight": tuple(model.model.layers[0].self_attn.q_proj.weight.shape)}
    attn_only = Region({"model.layers.0.self_attn.q_proj.weight": torch.tensor([0, 1])}, shapes, {"kind": "random"})
    with pytest.raises(PerturbationError, match="names no neuron"):
        perturb(model, Perturbation(op="zero", neurons=attn_only))
    assert _no_hooks(model)


def test_median_needs_the_tokenizer():
    model = make_tiny("llama")
    with pytest.raises(PerturbationError, match="tokenizer"):
        perturb(model, parse_spec("neuron=1:op=median:lang=fr"))
    assert _no_hooks(model)


def test_round_trip_of_the_compact_form():
    for text in ["neuron=3+5:layers=1:op=zero", "neurons=lape-zh.safetensors:lang=zh:op=median", "neuron=2:layers=0-1:op=add:value=0.5"]:
        p = Perturbation.parse(text)
        assert p.kind == "neuron" and p.on == "activation"
        assert Perturbation.parse(str(p)) == p
        assert Perturbation.from_dict(p.to_dict()) == p


def test_mixture_of_experts_neurons_are_refused_with_the_weight_route():
    model = make_tiny("qwen3_moe")
    before = snapshot(model)
    with pytest.raises(PerturbationError, match="mixtures of experts"):
        perturb(model, parse_spec("neuron=1:op=zero"))
    assert_unchanged(model, before)
    assert _no_hooks(model)
