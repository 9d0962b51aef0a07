"""Score files and scoring runs: atomic per-language files, resume only when everything matches, determinism, locks."""

from __future__ import annotations

import fcntl

import pytest
import torch

from lm_eval_lingreg import importance as imp
from lm_eval_lingreg.errors import OutputError, ScoreFileError
from lm_eval_lingreg.scores import ScoreSet, read_header, score_languages, score_path

from helpers import make_tiny


def _score(model, tok, out, langs=("ar", "zh", "ko"), **kw):
    kw.setdefault("samples", 6)
    return score_languages(model, tok, list(langs), out, seed=0, batch_size=3, model_label="tiny", progress=False, **kw)


def test_identical_runs_write_identical_files(tok, tmp_path):
    model = make_tiny("gemma3")
    _score(model, tok, tmp_path / "a", langs=("vi",))
    _score(model, tok, tmp_path / "b", langs=("vi",))
    assert (tmp_path / "a" / "vi.safetensors").read_bytes() == (tmp_path / "b" / "vi.safetensors").read_bytes()
    a, b = ScoreSet(tmp_path / "a"), ScoreSet(tmp_path / "b")
    assert all(torch.equal(a.get("vi", n), b.get("vi", n)) for n in a)


def test_interrupted_scoring_resumes_without_recomputing(tok, tmp_path, monkeypatch):
    model = make_tiny("llama")
    calls = []
    real = imp.sum_gradients

    def flaky(model, samples, **kw):
        calls.append(len(samples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, samples, **kw)

    monkeypatch.setattr(imp, "sum_gradients", flaky)
    with pytest.raises(KeyboardInterrupt):
        _score(model, tok, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar.safetensors"]  # nothing half-written, no lock left
    summary = _score(model, tok, tmp_path)
    assert summary["ar"] == {"skipped": True} and len(calls) == 4
    header = read_header(tmp_path / "zh.safetensors")
    assert header["info"]["samples"] == 6 and header["info"]["tokens"] > 0 and header["config"]["seed"] == 0
    assert "seconds" not in header["info"]  # timings are printed, never stored: reruns give identical files


def test_a_changed_option_is_refused_then_rescored_with_overwrite(tok, tmp_path):
    model = make_tiny("llama")
    _score(model, tok, tmp_path, langs=("ar",))
    with pytest.raises(ScoreFileError, match=r"samples: 6 -> 5.*--overwrite"):
        _score(model, tok, tmp_path, langs=("ar",), samples=5)
    assert _score(model, tok, tmp_path, langs=("ar",), samples=5, overwrite=True)["ar"]["samples"] == 5


def test_edited_calibration_text_is_not_silently_reused(tok, tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    (data / "sw.txt").write_text("\n".join(f"Habari ya asubuhi rafiki namba {i}." for i in range(20)), encoding="utf-8")
    model = make_tiny("llama")
    _score(model, tok, tmp_path / "s", langs=("sw",), data=str(data))
    (data / "sw.txt").write_text("\n".join(f"Ninapenda kusoma vitabu namba {i}." for i in range(20)), encoding="utf-8")
    with pytest.raises(ScoreFileError, match="corpus_sha256"):
        _score(model, tok, tmp_path / "s", langs=("sw",), data=str(data))


def test_another_model_under_the_same_name_is_not_silently_reused(tok, tmp_path):
    _score(make_tiny("llama", seed=0), tok, tmp_path, langs=("ar",))
    with pytest.raises(ScoreFileError, match="model_fingerprint"):
        _score(make_tiny("llama", seed=1), tok, tmp_path, langs=("ar",))


def test_the_same_model_and_text_under_other_names_are_reused(tok, tmp_path, monkeypatch):
    """Resume compares hashes, not paths: the model moved (another label) and the corpus folder renamed are the same."""
    from lm_eval_lingreg import importance

    data = tmp_path / "text"
    data.mkdir()
    (data / "sw.txt").write_text("\n".join(f"Habari ya asubuhi rafiki namba {i}." for i in range(20)), encoding="utf-8")
    opts = {"samples": 6, "seed": 0, "batch_size": 3, "progress": False}
    score_languages(make_tiny("llama"), tok, ["sw"], tmp_path / "s", data=str(data), model_label="/models/a", **opts)
    moved = data.rename(tmp_path / "moved")
    monkeypatch.setattr(importance, "sum_gradients", lambda *a, **k: pytest.fail("rescored"))
    score_languages(make_tiny("llama"), tok, ["sw"], tmp_path / "s", data=str(moved), model_label="/elsewhere/a", **opts)


def test_score_set_rejects_mixed_models(tok, tmp_path):
    _score(make_tiny("llama"), tok, tmp_path, langs=("ar",))
    score_languages(make_tiny("gemma3"), tok, ["zh"], tmp_path, samples=6, model_label="other", progress=False)
    with pytest.raises(ScoreFileError):
        ScoreSet(tmp_path, ["ar", "zh"])


def test_all_zero_gradients_are_refused(tok, tmp_path, monkeypatch):
    zeros = imp.GradientSum({"model.layers.0.mlp.up_proj.weight": torch.zeros(64, 32)}, 6, 0)
    monkeypatch.setattr(imp, "sum_gradients", lambda *a, **k: zeros)
    with pytest.raises(ScoreFileError, match="all zero"):
        _score(make_tiny("llama"), tok, tmp_path, langs=("ar",))
    assert not score_path(tmp_path, "ar").exists()


def test_an_unwritable_output_stops_before_any_work(tok, monkeypatch):
    monkeypatch.setattr(imp, "sum_gradients", lambda *a, **k: pytest.fail("scored before checking the output"))
    with pytest.raises(OutputError, match="not writable"):
        _score(make_tiny("llama"), tok, "/sys/lingreg-scores", langs=("ar",))


def test_a_second_concurrent_run_on_the_same_output_is_refused(tok, tmp_path):
    lock = tmp_path / ".scores.lingreg-lock"
    with open(lock, "w") as fh:  # another process holds the lock
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="being written by another lingreg process"):
            _score(make_tiny("llama"), tok, tmp_path / "scores", langs=("ar",))
    assert not (tmp_path / "scores" / "ar.safetensors").exists()


@pytest.mark.parametrize("options", [[], ["--loss-norm", "batch-token", "--checkpoints", "4", "--grad-dtype", "float32"]], ids=["sample", "batch-token"])
def test_distributed_scoring_matches_single_process(tiny_model_dir, tmp_path, options):
    """torchrun with 2 gloo ranks on the CPU sums the same gradients as one process: per-sample losses sharded by
    sample, or micro-batch losses sharded by whole micro-batch, with cumulative checkpoints reduced over the ranks."""
    import sys

    from helpers import lingreg, run

    args = ["score", "--pretrained", str(tiny_model_dir), "--langs", "zh,ar", "--samples", "7", "--batch-size", "2", "--device", "cpu", *options]
    assert lingreg(*args, "--out", tmp_path / "one").returncode == 0
    multi = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lm_eval_lingreg.cli",
            *args,
            "--backend",
            "gloo",
            "--out",
            str(tmp_path / "two"),
        ]
    )
    assert multi.returncode == 0, multi.stderr[-2000:]
    pairs = [(ScoreSet(tmp_path / "one"), ScoreSet(tmp_path / "two"))]
    if "--checkpoints" in options:
        pairs.append((ScoreSet(tmp_path / "one" / "checkpoints" / "4"), ScoreSet(tmp_path / "two" / "checkpoints" / "4")))
    for one, two in pairs:
        for lang in ("zh", "ar"):
            assert two.headers[lang]["info"]["world_size"] == 2
            assert two.headers[lang]["info"]["tokens"] == one.headers[lang]["info"]["tokens"]
            assert two.headers[lang]["config"] == one.headers[lang]["config"]
            for n in one:
                torch.testing.assert_close(two.get(lang, n), one.get(lang, n), rtol=1e-4, atol=1e-7)


def test_checkpoints_are_the_score_sets_of_the_first_n_samples(tok, tmp_path):
    from lm_eval_lingreg.scores import checkpoint_path

    model = make_tiny("llama")
    _score(model, tok, tmp_path / "run", langs=("ar", "zh"), samples=9, checkpoints=[3, 6])
    for n in (3, 6):
        _score(model, tok, tmp_path / f"alone-{n}", langs=("ar", "zh"), samples=n)
        cp, alone = ScoreSet(tmp_path / "run" / "checkpoints" / str(n)), ScoreSet(tmp_path / f"alone-{n}")
        for lang in ("ar", "zh"):
            assert read_header(checkpoint_path(tmp_path / "run", n, lang))["config"] == read_header(score_path(tmp_path / f"alone-{n}", lang))["config"]
            assert cp.headers[lang]["info"]["samples"] == n and cp.headers[lang]["info"]["checkpoint_of"] == 9
            for name in cp:
                torch.testing.assert_close(cp.get(lang, name), alone.get(lang, name), rtol=1e-4, atol=1e-7)
    final = ScoreSet(tmp_path / "run")
    assert final.headers["ar"]["info"]["samples"] == 9
    assert _score(model, tok, tmp_path / "run", langs=("ar", "zh"), samples=9, checkpoints=[3, 6])["ar"] == {"skipped": True}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"checkpoints": [6]}, "between 1 and --samples"),
        ({"checkpoints": [0, 2]}, "between 1 and --samples"),
        ({"checkpoints": [2, 2]}, "distinct"),
        ({"checkpoints": [4], "loss_norm": "batch-token"}, "multiples of --batch-size 3"),
        ({"loss_norm": "mean"}, "loss normalisation"),
        ({"grad_dtype": "float16"}, "gradient dtype"),
        ({"unit": "pages"}, "sampling unit"),
    ],
)
def test_bad_protocol_options_are_refused_before_any_work(tok, tmp_path, monkeypatch, kw, message):
    from lm_eval_lingreg.errors import UsageError

    monkeypatch.setattr(imp, "sum_gradients", lambda *a, **k: pytest.fail("scored with bad options"))
    with pytest.raises(UsageError, match=message):
        _score(make_tiny("llama"), tok, tmp_path, langs=("ar",), **kw)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_paper_protocol_writes_bf16_scores_recorded_in_the_header(tok, tmp_path):
    from lm_eval_lingreg.selection import select_core

    model = make_tiny("gemma3")
    _score(model, tok, tmp_path, langs=("ar", "zh"), unit="documents", loss_norm="batch-token", grad_dtype="bfloat16")
    scores = ScoreSet(tmp_path)
    config = scores.headers["ar"]["config"]
    assert (config["unit"], config["loss_norm"], config["grad_dtype"], config["batch_size"]) == ("documents", "batch-token", "bfloat16", 3)
    assert all(scores.get("ar", n).dtype == torch.bfloat16 for n in scores)
    assert select_core(scores.get, scores.names, scores.langs, 0.1).num_selected > 0
    with pytest.raises(ScoreFileError, match="grad_dtype: bfloat16 -> float32"):
        _score(model, tok, tmp_path, langs=("ar",), unit="documents", loss_norm="batch-token")


def _write_official_dump(model, grads, folder):
    """A folder as the official scorer writes it: every parameter's torch.mul(grad, param).bfloat16(), names without `module.`."""
    folder.mkdir(parents=True)
    for name, p in model.named_parameters():
        g = grads.get(name, torch.zeros_like(p))
        torch.save(torch.mul(g, p.detach()).bfloat16(), folder / f"{name}.pt")


def test_official_score_dumps_round_trip(tok, tmp_path):
    from lm_eval_lingreg.official import import_official
    from lm_eval_lingreg.regions import jaccard
    from lm_eval_lingreg.selection import select_core

    model = make_tiny("llama")
    from lm_eval_lingreg.corpora import make_samples

    for lang in ("ar", "zh"):
        result = imp.sum_gradients(model, make_samples(tok, lang, 6).input_ids, batch_size=3, grad_dtype="bfloat16", loss_norm="batch-token")
        _write_official_dump(model, result.grads, tmp_path / "dump" / lang / "grad-mul-param_checkpoint_6")
        (tmp_path / "dump" / lang / "grad-mul-param_checkpoint_3").mkdir()
        import_official(tmp_path / "dump" / lang, lang, tmp_path / "imported", model_label="tiny-official")
        ours = imp.importance(model, result.grads)
        imported = ScoreSet(tmp_path / "imported", [lang])
        assert set(imported.names) == set(ours)  # embeddings, final norm and head left out, like the scope
        assert all(torch.equal(imported.get(lang, n), ours[n]) for n in ours)
        assert imported.headers[lang]["config"]["samples"] == 6
    scores = ScoreSet(tmp_path / "imported")
    region = select_core(scores.get, scores.names, scores.langs, 0.05)
    assert region.num_selected > 0 and jaccard(region, region)[0] == 1.0
    with pytest.raises(ScoreFileError, match=r"no grad-mul-param_checkpoint_9; found checkpoints \[3, 6\]"):
        import_official(tmp_path / "dump" / "ar", "ar", tmp_path / "other", samples=9)
    # imported scores have no weights to fingerprint: their model label is what tells two models apart
    import_official(tmp_path / "dump" / "ar", "ar", tmp_path / "mixed", model_label="model-a")
    import_official(tmp_path / "dump" / "zh", "zh", tmp_path / "mixed", model_label="model-b")
    with pytest.raises(ScoreFileError, match="was scored on model 'model-b' but ar on 'model-a'"):
        ScoreSet(tmp_path / "mixed")


def test_official_dumps_with_pickled_code_or_non_finite_scores_are_refused(tok, tmp_path):
    from lm_eval_lingreg.official import import_official

    dump = tmp_path / "grad-mul-param_checkpoint_10"
    dump.mkdir()
    torch.save(torch.tensor([1.0, float("nan")]), dump / "model.layers.0.mlp.up_proj.weight.pt")
    with pytest.raises(ScoreFileError, match="not all finite"):
        import_official(dump, "ar", tmp_path / "out")
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (dump / "model.layers.0.mlp.up_proj.weight.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ScoreFileError, match="refused to load"):
        import_official(dump, "ar", tmp_path / "out")
    assert not (tmp_path / "out" / "ar.safetensors").exists()


def test_a_folder_where_a_score_file_goes_is_refused_before_any_work(tok, tmp_path, monkeypatch):
    from lm_eval_lingreg import importance
    from lm_eval_lingreg.errors import OutputError

    (tmp_path / "s" / "zh.safetensors").mkdir(parents=True)
    monkeypatch.setattr(importance, "sum_gradients", lambda *a, **k: pytest.fail("scored before checking the outputs"))
    with pytest.raises(OutputError, match=r"zh.safetensors is a folder, where the scores of zh go"):
        _score(make_tiny("llama"), tok, tmp_path / "s", langs=("ar", "zh"))


def test_import_refuses_a_special_file_where_the_scores_go(tmp_path):
    import os

    from lm_eval_lingreg.errors import OutputError
    from lm_eval_lingreg.official import import_official

    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "en.safetensors")
    with pytest.raises(OutputError, match="en.safetensors is not a regular file, where the scores of en go"):
        import_official(tmp_path / "nowhere", "en", tmp_path / "out")
