"""Steering vectors: DiffMean against a hand computation, the hook against a hand-written one, exact restore,
refusals that change nothing, the export to lm-eval's `steered` model, and `lingreg steer-vector`."""

from __future__ import annotations

import pickle

import pytest
import torch

from lm_eval_lingreg.errors import CorpusError, PerturbationError, UnknownLanguageError
from lm_eval_lingreg.interventions import perturb
from lm_eval_lingreg.perturbation import Perturbation, parse_spec
from lm_eval_lingreg.steering import diffmean, export_steered, load_vectors, save_vectors

from helpers import assert_unchanged, lingreg, make_tiny, snapshot, tiny_tokenizer

ARCHS = ["llama", "gemma3"]
IDS = torch.tensor([[1, 40, 41, 42, 43, 44], [1, 50, 51, 52, 53, 54]])


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _vectors(model: torch.nn.Module, seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {la: torch.randn(model.config.hidden_size, generator=gen) for la in range(model.config.num_hidden_layers)}


def _hand_means(model, tokenizer, lang, samples):
    """The mean output of each decoder layer over every token but BOS, one sentence at a time, by a plain hook."""
    from lm_eval_lingreg.corpora import make_samples

    sums, count, handles = {}, 0, []

    def hook_for(la):
        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            sums[la] = sums.get(la, 0) + h[0, 1:].double().sum(0)

        return hook

    for la, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_hook(hook_for(la)))
    try:
        with torch.no_grad():
            for ids in make_samples(tokenizer, lang, samples).input_ids:
                model(torch.tensor([ids]))
                count += len(ids) - 1
    finally:
        for h in handles:
            h.remove()
    return {la: s / count for la, s in sums.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_diffmean_is_the_difference_of_mean_layer_outputs(arch):
    model, tok = make_tiny(arch), tiny_tokenizer()
    info = {}
    got = diffmean(model, tok, "en", "fr", samples=6, info=info)
    en, fr = _hand_means(model, tok, "en", 6), _hand_means(model, tok, "fr", 6)
    assert sorted(got) == [0, 1]
    for la in got:
        torch.testing.assert_close(got[la].double(), fr[la] - en[la], atol=1e-5, rtol=1e-4)
    assert info["tokens"]["en"] > 0 and info["tokens"]["fr"] > 0
    assert _no_hooks(model)
    assert sorted(diffmean(model, tok, "en", "fr", layers=[1], samples=2)) == [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_hook_adds_alpha_times_the_vector_and_restore_is_exact(arch, tmp_path):
    model = make_tiny(arch)
    vectors = _vectors(model)
    path = save_vectors(vectors, tmp_path / "v.safetensors", {"source": "en", "target": "fr"})
    before, base = snapshot(model), model(IDS).logits.detach()

    handles = [
        layer.register_forward_hook(lambda _m, _a, out, v=vectors[la]: (out[0] + 2.5 * v, *out[1:]) if isinstance(out, tuple) else out + 2.5 * v)
        for la, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        expected = model(IDS).logits
    for h in handles:
        h.remove()

    applied = perturb(model, parse_spec(f"vector={path}:value=2.5"))
    with torch.no_grad():
        got = model(IDS).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, base)
    info = applied.info()["perturbed"][0]
    assert info["activation_layers"] == [0, 1] and len(info["vector_sha256"]) == 64 and info["vector_metadata"]["target"] == "fr"
    applied.restore()
    assert _no_hooks(model)
    assert_unchanged(model, before)
    assert torch.equal(model(IDS).logits.detach(), base)

    with perturb(model, parse_spec(f"vector={path}:layers=1:value=2.5")) as only_one:  # a subset of the file's layers
        assert only_one.info()["perturbed"][0]["activation_layers"] == [1]
    assert _no_hooks(model)


def test_a_vector_perturbation_parses_with_its_defaults():
    p = Perturbation.parse("vector=v.safetensors:value=4")
    assert (p.kind, p.op, p.on, p.layers) == ("steering", "add", "activation", None)
    assert Perturbation.parse(str(p)) == p
    for bad, says in [
        ("vector=v.safetensors:op=mul:value=4", "op=add"),
        ("vector=v.safetensors:on=param:value=4", "on=activation"),
        ("vector=v.safetensors", "value"),
        ("vector=v.safetensors:dim=3:value=4", "exactly one target"),
        ("vector=v.safetensors:modules=norms:value=4", "modules"),
    ]:
        with pytest.raises(PerturbationError, match=says):
            Perturbation.parse(bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_vector_files_are_refused_before_anything_changes(arch, tmp_path):
    model = make_tiny(arch)
    before = snapshot(model)
    good = save_vectors(_vectors(model), tmp_path / "good.safetensors")
    wide = save_vectors({0: torch.ones(48)}, tmp_path / "wide.safetensors")
    pickled = tmp_path / "v.pt"
    torch.save({"layers.0": torch.ones(32)}, pickled)
    from safetensors.torch import save_file

    save_file({"layers.0": torch.tensor([1.0, float("nan")] * 16)}, str(tmp_path / "nan.safetensors"))
    save_file({"layers.0": torch.ones(4, 8)}, str(tmp_path / "2d.safetensors"))
    save_file({"layers.0": torch.ones(32), "layers.1": torch.ones(16)}, str(tmp_path / "mixed.safetensors"))
    save_file({"blocks.0": torch.ones(32)}, str(tmp_path / "key.safetensors"))
    cases = [
        (f"vector={wide}:value=4", "hidden size is 32"),
        (f"vector={good}:layers=5:value=4", "layer 5 out of range"),
        (f"vector={save_vectors({0: torch.ones(32)}, tmp_path / 'l0.safetensors')}:layers=1:value=4", "no vector for layer 1"),
        (f"vector={tmp_path / 'nan.safetensors'}:value=4", "NaN"),
        (f"vector={tmp_path / '2d.safetensors'}:value=4", "1-D"),
        (f"vector={tmp_path / 'mixed.safetensors'}:value=4", "different sizes"),
        (f"vector={tmp_path / 'key.safetensors'}:value=4", "layers.<layer>"),
        (f"vector={pickled}:value=4", "never from a pickle"),
        (f"vector={tmp_path / 'missing.safetensors'}:value=4", "not found"),
        (f"vector={good}:value=1e38", "overflows"),
    ]
    for spec, says in cases:
        with pytest.raises(PerturbationError, match=says) as err:
            perturb(model, parse_spec(spec))
        assert "\n" not in str(err.value)
        assert _no_hooks(model)
        assert_unchanged(model, before)


def test_load_vectors_never_unpickles(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"layers.0": Boom()}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(PerturbationError, match="never from a pickle"):
        load_vectors(path)


def test_diffmean_refuses_bad_languages_layers_and_sample_counts():
    model, tok = make_tiny("llama"), tiny_tokenizer()
    before = snapshot(model)
    with pytest.raises(UnknownLanguageError):
        diffmean(model, tok, "en", "xx", samples=2)
    with pytest.raises(UnknownLanguageError):
        diffmean(model, tok, "en,de", "fr", samples=2)
    with pytest.raises(PerturbationError, match="both 'en'"):
        diffmean(model, tok, "en", "en", samples=2)
    with pytest.raises(PerturbationError, match="layer 7 out of range"):
        diffmean(model, tok, "en", "fr", layers=[7], samples=2)
    with pytest.raises(CorpusError):
        diffmean(model, tok, "en", "fr", samples=0)
    assert _no_hooks(model)
    assert_unchanged(model, before)


def test_save_and_load_round_trip(tmp_path):
    vectors = {0: torch.randn(32), 3: torch.randn(32)}
    path = save_vectors(vectors, tmp_path / "v.safetensors", {"source": "en", "tokens": {"en": 5}})
    got, meta = load_vectors(path)
    assert sorted(got) == [0, 3] and all(torch.equal(got[la], vectors[la]) for la in got)
    assert meta["source"] == "en" and meta["tokens"] == '{"en": 5}' and meta["hidden_size"] == "32" and meta["lingreg_version"]
    with pytest.raises(PerturbationError, match="NaN"):
        save_vectors({0: torch.tensor([float("inf")] * 32)}, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_export_steered_matches_the_perturbed_model_through_lm_eval(tiny_model_dir, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    from lm_eval_lingreg.models import PerturbedLM

    vectors = _vectors(make_tiny("llama"), seed=1)
    vec = save_vectors(vectors, tmp_path / "v.safetensors")
    lm = PerturbedLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=1, vector=str(vec), value=3.0)
    pt = export_steered(vectors, tmp_path / "v.pt", 3.0, lm.model)
    config = torch.load(pt, weights_only=True)
    assert sorted(config) == ["layers.0", "layers.1"]
    assert config["layers.1"]["steering_coefficient"] == 3.0 and config["layers.1"]["action"] == "add" and config["layers.1"]["bias"] is None
    steered = SteeredModel(pretrained=str(tiny_model_dir), steer_path=str(pt), device="cpu", dtype="float32", batch_size=1)
    ids = IDS
    with torch.no_grad():
        ours = lm._model_call(ids)
        theirs = steered._model_call(ids)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    with torch.no_grad():
        plain = steered.model(ids).logits  # outside lm-eval's call, their hooks are off: the unsteered model
    assert not torch.allclose(theirs, plain, atol=1e-3)
    out_ours = lm._model_generate(ids[:1], max_length=ids.shape[1] + 6, stop=[], do_sample=False)
    out_theirs = steered._model_generate(ids[:1], max_length=ids.shape[1] + 6, stop=[], do_sample=False)
    assert torch.equal(out_ours, out_theirs)
    assert lm.get_model_info()["lingreg"]["perturbed"][0]["vector_sha256"]
    with pytest.raises(PerturbationError, match=".pt"):
        export_steered(vectors, tmp_path / "v.bin", 3.0, lm.model)


def test_steer_vector_command_end_to_end(tiny_model_dir, tmp_path):
    out, pt = tmp_path / "en-fr.safetensors", tmp_path / "en-fr.pt"
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--layers", "0-1", "--samples", "4", "--pretrained", tiny_model_dir, "--device", "cpu",
                "--out", out, "--steered", pt, "--alpha", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    vectors, meta = load_vectors(out)
    assert sorted(vectors) == [0, 1] and meta["source"] == "en" and meta["target"] == "fr" and meta["samples"] == "4"
    assert "lingreg steer-vector --from en --to fr" in meta["command"] and '"fr"' in meta["tokens"]
    assert torch.load(pt, weights_only=True)["layers.0"]["steering_coefficient"] == 2.0
    r = lingreg("generate", "--prompt", "Hello", "--max-new-tokens", "3", "--pretrained", tiny_model_dir, "--device", "cpu",
                "--compare", f"base,vector={out}:value=4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"vector={out}:value=4" in r.stdout


def test_steer_vector_refuses_an_output_that_is_an_input(tiny_model_dir, tmp_path):
    weights = next(tiny_model_dir.glob("*.safetensors"))
    data = weights.read_bytes()
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--pretrained", tiny_model_dir, "--device", "cpu", "--out", weights)
    assert r.returncode == 2 and "one of the inputs" in r.stderr
    assert weights.read_bytes() == data
    r = lingreg("steer-vector", "--from", "en", "--to", "xx", "--pretrained", tiny_model_dir, "--out", tmp_path / "v.safetensors")
    assert r.returncode == 2 and "unknown language" in r.stderr and not (tmp_path / "v.safetensors").exists()
    r = lingreg(
        "steer-vector",
        "--from",
        "en",
        "--to",
        "fr",
        "--pretrained",
        tiny_model_dir,
        "--out",
        tmp_path / "v.safetensors",
        "--steered",
        tmp_path / "v.safetensors",
    )
    assert r.returncode == 2 and "same file" in r.stderr


def _guide_commands() -> list[str]:
    """The commands of the guide's "Steering the output language" block, continuation lines joined."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "guide" / "perturbations.md").read_text()
    section = text[text.index("## Steering the output language") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]


def _metric(stdout: str, metric: str) -> float:
    """A metric's value from lm-eval's printed results table."""
    import re

    return float(re.search(rf"\|\s*{metric}\s*\|[^|]*\|\s*([0-9.]+)\s*\|", stdout).group(1))


@pytest.mark.slow
def test_the_guides_steering_commands_run_on_the_bundled_model_and_steer_english_into_chinese(bundled_model_dir, tmp_path):
    """The vector-building command and the hf-perturbed evaluations of docs/guide/perturbations.md, run as written."""
    import shlex

    from helpers import bin_path, run

    commands = _guide_commands()
    wanted = [c for c in commands if c.startswith(("lingreg steer-vector", "lm_eval --model hf-perturbed", "lingreg extract lape"))]
    assert len(wanted) == 5, commands
    outputs = []
    for command in wanted:
        words = shlex.split(command)
        proc = run([bin_path(words[0]), *words[1:]], cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        outputs.append(proc.stdout)
    assert (tmp_path / "en-zh.safetensors").is_file() and (tmp_path / "en-zh.pt").is_file() and (tmp_path / "lape-zh.safetensors").is_file()
    gen_en, steer_vector, steer_neurons = outputs[1], outputs[2], outputs[4]
    assert _metric(gen_en, "lang_fidelity") == 0.0  # no continuation of the English prompts stays in English
    assert _metric(steer_vector, "steer_success") == 1.0 and _metric(steer_vector, "steer_score") > 0  # every one is in Chinese
    assert _metric(steer_neurons, "steer_success") >= 0.5


def test_steer_vector_calibrates_on_the_users_text_and_refuses_an_empty_one(tiny_model_dir, tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "en.txt").write_text("The cat sat on the mat.\nIt was a sunny day.\n")
    (data / "fr.txt").write_text("Le chat est assis sur le tapis.\nIl faisait beau.\n")
    out = tmp_path / "mine.safetensors"
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--data", data, "--pretrained", tiny_model_dir, "--device", "cpu",
                "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    mine, meta = load_vectors(out)
    assert str(data) in meta["calibration"] and f"--data {data}" in meta["command"]
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--pretrained", tiny_model_dir, "--device", "cpu",
                "--out", tmp_path / "eld.safetensors")  # fmt: skip
    eld, _ = load_vectors(tmp_path / "eld.safetensors")
    assert not torch.allclose(mine[0], eld[0])  # the text used is the one given
    (data / "fr.txt").write_text("\n\n")
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--data", data, "--pretrained", tiny_model_dir, "--device", "cpu",
                "--out", tmp_path / "empty.safetensors")  # fmt: skip
    assert r.returncode == 2 and "fr" in r.stderr and not (tmp_path / "empty.safetensors").exists()
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error:")


def test_one_text_for_both_languages_an_overflowing_value_and_bad_outputs_are_refused_first(tiny_model_dir, tmp_path):
    """Found by probing: each gave a silent zero vector, NaN outputs or a half-written pair of files."""
    one = tmp_path / "fr.txt"
    one.write_text("Le chat est assis sur le tapis.\nIl faisait beau.\n")
    out = tmp_path / "v.safetensors"
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--data", one, "--pretrained", tiny_model_dir, "--device", "cpu", "--out", out)
    assert r.returncode == 2 and "identical" in r.stderr and not out.exists()
    r = lingreg("steer-vector", "--from", "EN", "--to", "Fr", "--samples", "2", "--pretrained", tiny_model_dir, "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    (tmp_path / "dir.pt").mkdir()
    r = lingreg("steer-vector", "--from", "en", "--to", "fr", "--samples", "2", "--pretrained", tiny_model_dir, "--device", "cpu",
                "--out", tmp_path / "w.safetensors", "--steered", tmp_path / "dir.pt")  # fmt: skip
    assert r.returncode == 2 and not (tmp_path / "w.safetensors").exists()
    assert "Loading" not in r.stderr  # refused before the model is read
    r = lingreg("steer-vector", "--from", "en", "--to", "EN", "--pretrained", tiny_model_dir, "--out", tmp_path / "u.safetensors")
    assert r.returncode == 2 and "both en" in r.stderr
    _, meta = load_vectors(out)
    assert meta["source"] == "en" and meta["target"] == "fr"  # codes as the package writes them

    model = make_tiny("llama")
    path = save_vectors(_vectors(model), tmp_path / "small.safetensors")
    before = snapshot(model)
    for value in ("1e39", "-1e39"):
        with pytest.raises(PerturbationError, match="overflows"):
            perturb(model, parse_spec(f"vector={path}:value={value}"))
    assert_unchanged(model, before)
    assert _no_hooks(model)
    with pytest.raises(PerturbationError, match="perturb takes Perturbation values"):
        perturb(model, [parse_spec(f"vector={path}:value=1")[0], "neuron=2:op=zero"])
    assert _no_hooks(model)
