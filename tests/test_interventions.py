"""Perturbations applied to tiny random models: exact entries changed, exact restore, clear errors."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, residual_slots
from lm_eval_lingreg.errors import LingregError, PerturbationError
from lm_eval_lingreg.interventions import perturb
from lm_eval_lingreg.perturbation import Perturbation, parse_spec
from lm_eval_lingreg.region_io import save_region

from helpers import make_tiny

HIDDEN = 32


def _snapshot(model):
    return {n: p.detach().clone() for n, p in named_parameters(model).items()}


def _changed(model, before) -> dict[str, torch.Tensor]:
    return {n: (p != before[n]) for n, p in named_parameters(model).items() if not torch.equal(p, before[n])}


def _assert_exact(model, before):
    for n, p in named_parameters(model).items():
        assert torch.equal(p, before[n]), f"{n} not restored exactly"


def _expected_dim_mask(name: str, shape: tuple[int, ...], d: int) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    short = name.rsplit(".", 2)[-2]
    if len(shape) == 1:
        m[d] = True
    elif short in ("o_proj", "down_proj"):
        m[d, :] = True
    else:
        m[:, d] = True
    return m


# exact entries -------------------------------------------------------------------------------


def test_scalar_1d_and_2d_change_exactly_one_entry(tiny_model):
    before = _snapshot(tiny_model)
    name2d = "model.layers.0.mlp.down_proj.weight"
    with perturb(tiny_model, parse_spec(f"param={name2d}:row=3:col=9:op=mul:value=4;param=model.layers.1.input_layernorm.weight:index=5:op=set:value=2")) as a:
        changed = _changed(tiny_model, before)
        assert set(changed) == {name2d, "model.layers.1.input_layernorm.weight"}
        assert changed[name2d].sum() == 1 and changed[name2d][3, 9]
        assert named_parameters(tiny_model)[name2d][3, 9] == before[name2d][3, 9] * 4
        assert named_parameters(tiny_model)["model.layers.1.input_layernorm.weight"][5] == 2.0
        assert a.entries_changed == 2
    _assert_exact(tiny_model, before)


@pytest.mark.parametrize("modules", ["all", "norms", "readers", "writers", "o_proj+input_layernorm"])
def test_dimension_touches_exactly_its_rows_columns_and_norm_entries(tiny_model, modules):
    before = _snapshot(tiny_model)
    d = 7
    slots, hidden = residual_slots({n: tuple(p.shape) for n, p in named_parameters(tiny_model).items()})
    assert hidden == HIDDEN
    want_roles = {"all": {"norm", "read", "write"}, "norms": {"norm"}, "readers": {"read"}, "writers": {"write"}}.get(modules)
    expected = {
        n: _expected_dim_mask(n, s.shape, d)
        for n, s in slots.items()
        if s.layer == 1 and (s.role in want_roles if want_roles else s.module in modules.split("+"))
    }
    with perturb(tiny_model, Perturbation.parse(f"layer=1:dim={d}:modules={modules}:op=mul:value=4")) as a:
        changed = _changed(tiny_model, before)
        assert set(changed) == set(expected)
        for n, m in expected.items():
            assert torch.equal(changed[n], m), n
        assert a.entries_changed == sum(int(m.sum()) for m in expected.values())
    _assert_exact(tiny_model, before)
    if "gemma" in type(tiny_model).__name__.lower() and modules == "norms":
        assert len(expected) == 4  # input, post_attention, pre_feedforward, post_feedforward
        assert not any("q_norm" in n or "k_norm" in n for n in expected)  # head norms are not the residual stream


def test_region_kind_changes_the_region_entries(tiny_model, tmp_path):
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.selection import select_random

    region = select_random(scope_shapes(tiny_model), 0.05, seed=1)
    path = save_region(region, tmp_path / "r.safetensors")
    before = _snapshot(tiny_model)
    with perturb(tiny_model, Perturbation.parse(f"mask={path}:op=add:value=1")) as a:
        changed = _changed(tiny_model, before)
        assert a.entries_changed == region.num_selected
        for n in region.indices:
            assert torch.equal(changed.get(n, torch.zeros(region.shapes[n], dtype=torch.bool)), region.mask(n))
    _assert_exact(tiny_model, before)


def test_gain_mode_follows_how_the_norm_uses_its_weight():
    """Gemma norms compute x*(1+w): on=gain scales the norm's output at d by exactly 4."""
    for arch, offset in (("gemma3", 1.0), ("llama", 0.0)):
        model = make_tiny(arch)
        name = "model.layers.1.post_attention_layernorm.weight"
        norm = model.get_submodule(name.removesuffix(".weight"))
        x = torch.randn(3, HIDDEN)
        y0 = norm(x)
        w0 = named_parameters(model)[name][5].item()
        with perturb(model, Perturbation.parse(f"param={name}:index=5:op=mul:value=4:on=gain")) as a:
            assert a.summary[0]["gain_offsets"] == [offset]
            torch.testing.assert_close(norm(x)[:, 5], 4 * y0[:, 5], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(norm(x)[:, :5], y0[:, :5])
            assert named_parameters(model)[name][5].item() == pytest.approx(4 * (w0 + offset) - offset, rel=1e-6)
        with perturb(model, Perturbation.parse(f"param={name}:index=5:op=mul:value=4")):  # on=param: the stored weight
            assert named_parameters(model)[name][5].item() == pytest.approx(4 * w0, rel=1e-6)


def test_noise_is_seeded(tiny_model):
    spec = "layer=0:dim=3:modules=readers:op=noise:value=0.5"
    before = _snapshot(tiny_model)

    def run(seed, scale="relative"):
        with perturb(tiny_model, Perturbation.parse(f"{spec}:seed={seed}:scale={scale}")):
            return _snapshot(tiny_model)

    a, b, c, d = run(0), run(0), run(1), run(0, "absolute")
    _assert_exact(tiny_model, before)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name]) and not torch.equal(a[name], d[name])
    assert not torch.equal(a[name], before[name])


def test_composed_overlapping_perturbations_restore_bit_exact(tiny_model):
    before = _snapshot(tiny_model)
    spec = (
        "layers=0+1:dim=3:op=mul:value=3;"
        "param=model.layers.0.self_attn.q_proj.weight:row=0:col=3:op=set:value=9;"
        "layers=0-1:dims=3+4:op=noise:value=1:seed=2;"
        "layer=0:dim=3:op=zero"
    )
    applied = perturb(tiny_model, parse_spec(spec))
    assert named_parameters(tiny_model)["model.layers.0.self_attn.q_proj.weight"][0, 3] == 0.0
    applied.restore()
    _assert_exact(tiny_model, before)
    applied.restore()  # idempotent
    _assert_exact(tiny_model, before)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("layer=5:dim=1:op=mul:value=2", "layer 5 out of range"),
        ("layer=1:dim=99:op=mul:value=2", "hidden size is 32"),
        ("param=model.layers.0.input_layernorm.weigth:index=1:op=zero", "did you mean 'model.layers.0.input_layernorm.weight'"),
        ("param=model.layers.0.input_layernorm.weight:index=32:op=zero", "out of range for shape (32,)"),
        ("param=model.layers.0.input_layernorm.weight:row=0:col=1:op=zero", "need a 2-D tensor"),
        ("param=model.layers.0.mlp.down_proj.weight:row=32:col=1:op=zero", "out of range"),
        ("layer=1:dim=1:modules=bogus_proj:op=zero", "no such module"),
        ("mask=/nonexistent/region.safetensors", "not found"),
    ],
)
def test_bad_targets_are_rejected_before_anything_changes(tiny_model, spec, message):
    before = _snapshot(tiny_model)
    # a valid perturbation first: nothing may be applied when a later one is invalid
    with pytest.raises(LingregError, match=message.replace("(", r"\(").replace(")", r"\)")):
        perturb(tiny_model, parse_spec("layer=0:dim=2:op=mul:value=4;" + spec))
    _assert_exact(tiny_model, before)


def test_module_missing_in_this_architecture():
    """Gemma-3 has pre_feedforward_layernorm; Llama does not, and says what it has."""
    spec = Perturbation.parse("layer=1:dim=1:modules=pre_feedforward_layernorm:op=zero")
    with perturb(make_tiny("gemma3"), spec) as a:
        assert a.entries_changed == 1
    with pytest.raises(PerturbationError, match="LlamaForCausalLM.*no such module.*available: .*post_attention_layernorm"):
        perturb(make_tiny("llama"), spec)


def test_overflow_is_refused_and_model_restored(tiny_model):
    before = _snapshot(tiny_model)
    with pytest.raises(PerturbationError, match="overflows"):
        perturb(tiny_model, parse_spec("layer=0:dim=1:op=mul:value=4;layer=1:dim=1:op=set:value=1e39"))
    _assert_exact(tiny_model, before)


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "qwen3"])
def test_other_families_name_their_modules_alike(arch):
    import transformers

    cfg_cls, model_cls = {
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }[arch]
    cfg = getattr(transformers, cfg_cls)(
        vocab_size=64,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    model = getattr(transformers, model_cls)(cfg).eval()
    before = _snapshot(model)
    with perturb(model, Perturbation.parse("layer=1:dim=5:op=mul:value=4")) as a:
        changed = _changed(model, before)
        modules = {n.split(".")[-2] for n in changed}
        assert modules == {"input_layernorm", "post_attention_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        # 2 norm entries; columns of q (32 rows), k, v (16), gate, up (48); rows of o (32 cols), down (48 cols)
        assert a.entries_changed == 2 + (32 + 16 + 16 + 48 + 48) + (32 + 48)
    _assert_exact(model, before)


def test_a_region_value_is_a_target_too(tiny_model):
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.selection import select_random

    region = select_random(scope_shapes(tiny_model), 0.05, seed=4).with_metadata(name="r4")
    before = _snapshot(tiny_model)
    p = Perturbation(op="mul", value=2.0, mask=region)
    assert p.to_dict()["mask"] == f"region:r4@{region.digest()[:16]}"
    with perturb(tiny_model, p) as a:
        assert a.entries_changed == region.num_selected and set(_changed(tiny_model, before)) <= set(region.indices)
    _assert_exact(tiny_model, before)


@pytest.mark.parametrize("op,value", [("zero", None), ("set", 2.5), ("mul", 10.0), ("add", -3.0)])
def test_activation_interventions_set_the_residual_stream_and_are_removed_on_restore(tiny_model, op, value):
    """on=activation: the hidden dimension's output of the chosen decoder layers, as a hand-written hook sets it."""
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    layers = tiny_model.model.layers
    with torch.no_grad():
        base = tiny_model(input_ids=ids).logits

    def by_hand(_m, _a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        x = h[..., [3, 7]]
        h[..., [3, 7]] = {"zero": lambda: 0 * x, "set": lambda: torch.full_like(x, 2.5), "mul": lambda: x * 10, "add": lambda: x - 3}[op]()
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = layers[0].register_forward_hook(by_hand)
    with torch.no_grad():
        expected = tiny_model(input_ids=ids).logits
    handle.remove()
    spec = f"layer=0:dim=3+7:on=activation:op={op}" + (f":value={value}" if value is not None else "")
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    with perturb(tiny_model, parse_spec(spec)) as applied, torch.no_grad():
        got = tiny_model(input_ids=ids).logits
        assert applied.entries_changed == 0 and applied.summary[0]["activation_layers"] == [0]
        assert all(torch.equal(p, before[n]) for n, p in named_parameters(tiny_model).items())  # no weight touched
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, base)
    with torch.no_grad():
        assert torch.equal(tiny_model(input_ids=ids).logits, base)  # hooks removed
    assert not any(m._forward_hooks for m in tiny_model.modules())


def test_activation_set_to_its_mean_is_the_mean_over_calibration_tokens(tiny_model, tok):
    """op=mean: each chosen layer's dimension is set to its signed mean over every token of the calibration
    sentences, measured by hand here one sentence at a time (no padding), and the means are recorded."""
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.interventions import MEAN_CALIBRATION

    layers, dims = tiny_model.model.layers, [3, 7]
    sums, n = {0: torch.zeros(2, dtype=torch.float64), 1: torch.zeros(2, dtype=torch.float64)}, 0

    def hidden(out):
        return out[0] if isinstance(out, tuple) else out

    def accumulate(_m, _a, out, la):
        sums[la] += hidden(out)[0][:, dims].double().sum(0)

    handles = [layers[la].register_forward_hook(lambda m, a, o, la=la: accumulate(m, a, o, la)) for la in sums]
    with torch.no_grad():
        for lang in MEAN_CALIBRATION["langs"]:
            for s in make_samples(tok, lang, MEAN_CALIBRATION["samples"]).input_ids:
                tiny_model.model(input_ids=torch.tensor([s]))
                n += len(s)
    for h in handles:
        h.remove()
    means = {la: (v / n).float() for la, v in sums.items()}
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])

    def by_hand(_m, _a, out, la):
        h = hidden(out).clone()
        h[..., dims] = means[la]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handles = [layers[la].register_forward_hook(lambda m, a, o, la=la: by_hand(m, a, o, la)) for la in sums]
    with torch.no_grad():
        expected = tiny_model(input_ids=ids).logits
    for h in handles:
        h.remove()
    assert not any(m._forward_hooks for m in tiny_model.modules())
    with perturb(tiny_model, parse_spec("layers=0+1:dim=3+7:on=activation:op=mean"), tokenizer=tok) as applied, torch.no_grad():
        got = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    recorded = applied.summary[0]["means"]
    assert set(recorded) == {"0", "1"} and torch.allclose(torch.tensor(recorded["1"]), means[1], atol=1e-6)
    assert not torch.allclose(means[0], torch.zeros(2)) and "eld sentences, 8 per language" in applied.summary[0]["mean_text"]
    assert not any(m._forward_hooks for m in tiny_model.modules())
    with pytest.raises(PerturbationError, match="op=mean takes no value"):
        parse_spec("layer=0:dim=1:on=activation:op=mean:value=2")
    with pytest.raises(PerturbationError, match="goes with on=activation"):
        parse_spec("layer=0:dim=1:op=mean")


def test_activation_intervention_errors(tiny_model):
    for spec, match in (
        ("param=model.layers.0.mlp.down_proj.weight:index=0:on=activation:op=zero", "give `dim=`"),
        ("layer=0:dim=1:modules=norms:on=activation:op=zero", "modules="),
        ("layer=0:dim=1:on=activation:op=noise:value=1", "op=zero, set, mul, add or mean"),
        ("layer=0:dim=1:on=activation:op=mean", "need the model's tokenizer"),
        ("layer=9:dim=1:on=activation:op=zero", "layer 9 out of range"),
        ("layer=0:dim=99:on=activation:op=zero", "dim=99 out of range"),
        ("layer=0:dim=1:on=activations:op=zero", "on=activation"),
    ):
        with pytest.raises(PerturbationError, match=match):
            perturb(tiny_model, parse_spec(spec))
    assert not any(m._forward_hooks for m in tiny_model.modules())


def test_activation_interventions_hook_the_text_decoder_of_a_multimodal_model_and_refuse_overflow():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    from lm_eval_lingreg.interventions import decoder_layers

    text = make_tiny("gemma3").config.to_dict()
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=8)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4)).eval()
    layers = decoder_layers(model)
    assert len(layers) == text["num_hidden_layers"] and all("vision" not in type(m).__name__.lower() for m in layers.values())
    ids = torch.tensor([[2, 5, 9, 13, 17]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with perturb(model, parse_spec("layers=all:dim=0-15:on=activation:op=zero")):
            changed = model(input_ids=ids).logits
    assert not torch.allclose(base, changed)
    tiny = make_tiny("llama")
    with pytest.raises(PerturbationError, match="overflows the model's torch.float32"):
        perturb(tiny, parse_spec("layer=0:dim=3:on=activation:op=set:value=1e39"))
    with (
        pytest.raises(PerturbationError, match="overflows torch.float32 at layer 0"),
        perturb(tiny, parse_spec("layer=0:dim=3:on=activation:op=add:value=3e38;layer=0:dim=3:on=activation:op=add:value=3e38")),
    ):
        tiny(input_ids=ids)
    assert not any(m._forward_hooks for m in tiny.modules())
