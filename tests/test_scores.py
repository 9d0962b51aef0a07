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
    lock = tmp_path / ".scores.lock"
    with open(lock, "w") as fh:  # another process holds the lock
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="being written by another lingreg process"):
            _score(make_tiny("llama"), tok, tmp_path / "scores", langs=("ar",))
    assert not (tmp_path / "scores" / "ar.safetensors").exists()


def test_distributed_scoring_matches_single_process(tiny_model_dir, tmp_path):
    """torchrun with 2 gloo ranks on the CPU sums the same per-sample gradients as one process."""
    import sys

    from helpers import lingreg, run

    args = ["score", "--pretrained", str(tiny_model_dir), "--langs", "zh,ar", "--samples", "7", "--batch-size", "2", "--device", "cpu"]
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
    assert multi.returncode == 0
    one, two = ScoreSet(tmp_path / "one"), ScoreSet(tmp_path / "two")
    for lang in ("zh", "ar"):
        assert two.headers[lang]["info"]["world_size"] == 2
        assert two.headers[lang]["info"]["tokens"] == one.headers[lang]["info"]["tokens"]
        for n in one:
            torch.testing.assert_close(two.get(lang, n), one.get(lang, n), rtol=1e-4, atol=1e-7)
