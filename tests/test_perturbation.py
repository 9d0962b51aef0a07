"""The perturbation spec: value object, compact grammar, spec files, hashes and clear errors (no model needed)."""

from __future__ import annotations

import pytest

from lm_eval_lingreg.errors import PerturbationError
from lm_eval_lingreg.perturbation import Perturbation, parse_spec, spec_sha256


@pytest.mark.parametrize(
    "text",
    [
        "layer=1:dim=7:op=mul:value=4",
        "layers=0+1:dims=3+7:modules=norms+o_proj:op=add:value=-0.5:on=gain",
        "layers=all:dim=5:op=zero",
        "param=model.layers.0.mlp.down_proj.weight:row=3:col=9:op=set:value=2.5",
        "param=model.layers.1.input_layernorm.weight:index=4:op=noise:value=0.1:scale=absolute:seed=7",
        "mask=core:op=mul:value=0.5",
    ],
)
def test_compact_form_round_trips(text):
    p = Perturbation.parse(text)
    assert Perturbation.parse(str(p)) == p
    assert Perturbation.from_dict(p.to_dict()) == p


def test_ranges_and_defaults():
    p = Perturbation.parse("layers=0-3:dim=1:op=zero")
    assert p.layers == (0, 1, 2, 3) and p.modules == ("all",) and p.on == "param"
    assert Perturbation.parse("mask=core").op == "zero"  # a bare mask is an ablation
    assert Perturbation.parse("layers=all:dim=1:op=zero").layers is None


def test_model_args_survive_lm_eval_parsing():
    """lm-eval splits --model_args on ',' and the first '=' and casts numbers: both forms survive."""
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string("pretrained=x,layer=1,dim=2100,op=mul,value=4,modules=norms+o_proj")
    args.pop("pretrained")
    assert parse_spec(args) == [Perturbation(op="mul", value=4.0, dims=(2100,), layers=(1,), modules=("norms", "o_proj"))]
    args = simple_parse_args_string("perturb=layer=1:dim=7:op=mul:value=4;param=a.layers.0.b.weight:row=1:col=2:op=zero,dtype=float32")
    perts = parse_spec(args["perturb"])
    assert [p.kind for p in perts] == ["dimension", "scalar"] and perts[1].row == 1 and perts[1].col == 2


def test_spec_file_yaml_and_hash(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text("perturbations:\n  - {layer: 1, dim: 7, op: mul, value: 4}\n  - param=model.layers.0.input_layernorm.weight:index=3:op=zero\n")
    perts = parse_spec(str(f))
    assert len(perts) == 2 and perts[0].dims == (7,)
    assert spec_sha256(perts) == spec_sha256(parse_spec("layer=1:dim=7:op=mul:value=4.0;param=model.layers.0.input_layernorm.weight:index=3:op=zero"))
    assert spec_sha256(perts) != spec_sha256(perts[::-1])


def test_the_on_key_of_a_yaml_spec_is_a_key_not_a_boolean(tmp_path):
    """YAML 1.1 reads a bare `on` as True; the README's own spec files write `on: gain` and `on: activation`."""
    f = tmp_path / "spec.yaml"
    f.write_text("perturbations:\n  - {layer: 1, dim: 3, op: mean, on: activation}\n  - {layer: 0, dim: 2, op: mul, value: 4, on: gain}\n")
    perts = parse_spec(str(f))
    assert [p.on for p in perts] == ["activation", "gain"] and perts[0].op == "mean"
    f.write_text("perturbations:\n  - {layer: 1, dim: 3, op: zero, on: yes}\n")
    with pytest.raises(PerturbationError, match="on='yes'"):
        parse_spec(str(f))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer=1:dim=1:op=mull:value=3", "unknown op 'mull'"),
        ("layer=1:dim=1:op=mul", "needs `value=`"),
        ("layer=1:dim=1:op=mul:vaule=2", "did you mean 'value'"),
        ("layer=1 dim=1:op=zero", "join key=value pairs with ':'"),
        ("layer=1:op=zero", "exactly one target"),
        ("dim=1:param=x.weight:index=0:op=zero", "exactly one target"),
        ("dim=1:op=mul:value=nan", "finite"),
        ("dim=1:op=noise:value=-1", ">= 0"),
        ("param=x.weight:op=zero", "give `index=`"),
        ("param=x.weight:row=1:op=zero", "both `row=` and `col=`"),
        ("mask=core:index=3", "go with `param=`"),
        ("param=x.weight:index=0:layer=1:op=zero", "go with `dim=`"),
        ("layer=1:dim=1:op=zero:on=effective", "on=gain"),
        ("missing-spec.yaml", "not found"),
        ("layer=x:dim=1:op=zero", "not a whole number"),
    ],
)
def test_malformed_specs_give_one_clear_error(text, message):
    with pytest.raises(PerturbationError, match=message.replace("(", r"\(").replace("`", "`")):
        parse_spec(text)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply|expected a list"),
        ("perturbations: 3", "expected a list"),
        ("- [1, 2]", "mapping or a compact string"),
        ("- {layer: 1, dim: 1, op: mul, value: [4]}", "not a number"),
        ("", "is empty"),
        ("{op: [", "not valid"),
        (":::", "unknown perturbation key"),
    ],
)
def test_hostile_spec_files_are_one_clear_error(tmp_path, content, message):
    f = tmp_path / "spec.yaml"
    f.write_text(content)
    with pytest.raises(PerturbationError, match=message):
        parse_spec(str(f))
