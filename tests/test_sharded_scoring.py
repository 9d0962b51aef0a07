"""Sharded scoring (`lingreg score --shard fsdp`, FSDP2 over gloo ranks on the CPU): one process's scores, every misuse one clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lm_eval_lingreg.scores import ScoreSet

from helpers import lingreg, make_tiny, run

WORKER = Path(__file__).with_name("fsdp_worker.py")
#: One process's runs the worker's are compared with: (name, options), all on zh and ar.
REFERENCE = {"sample": ["--checkpoints", "4"], "batch-token": ["--loss-norm", "batch-token", "--checkpoints", "4"]}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over a whole tensor (entries whose sum nearly cancels differ more, in relative terms, at any order of summation)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def _one_process(model_dir: Path, out: Path) -> None:
    for name, options in REFERENCE.items():
        args = ["--pretrained", model_dir, "--langs", "zh,ar", "--samples", "7", "--batch-size", "2", "--device", "cpu"]
        assert lingreg("score", *args, *options, "--out", out / name).returncode == 0


def _assert_same_scores(sharded: Path, single: Path, world: int) -> None:
    one, many = ScoreSet(single), ScoreSet(sharded)
    assert set(many.names) == set(one.names)
    for lang in ("zh", "ar"):
        info = many.headers[lang]["info"]
        assert (info["world_size"], info["shard"], info["tokens"]) == (world, "fsdp", one.headers[lang]["info"]["tokens"])
        assert many.headers[lang]["config"] == one.headers[lang]["config"]  # the same identity: either resumes the other
        for n in one:
            assert many.get(lang, n).shape == one.get(lang, n).shape
            assert _relative(many.get(lang, n), one.get(lang, n)) <= 1e-6, (lang, n)


@pytest.mark.parametrize(("world", "model"), [(2, "tiny_model_dir"), (3, "tiny_gemma_dir")], ids=["2-ranks-llama", "3-ranks-gemma3"])
def test_sharded_scores_equal_one_process(world, model, request, tmp_path):
    """FSDP2 over 2 and 3 gloo ranks gives one process's scores to 1e-6, under both loss normalisations, at the
    checkpoints, after a resume by hash, and (2 ranks) with activation checkpointing. 3 ranks shard every tensor
    unevenly (32 rows: 11, 11, 10) and give the 4 micro-batches of 7 samples out unevenly (2, 1, 1), so ranks
    with fewer run zero-weight steps; Gemma-3 ties its head to its embeddings (both in the root group)."""
    model_dir = request.getfixturevalue(model)
    _one_process(model_dir, tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), str(WORKER), str(model_dir), str(tmp_path / "many")]
    proc = run([*cmd, *(["--activation-checkpointing"] if world == 2 else [])], timeout=900)  # a rank left out of a collective hangs
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in REFERENCE:
        _assert_same_scores(tmp_path / "many" / name, tmp_path / "one" / name, world)
        _assert_same_scores(tmp_path / "many" / name / "checkpoints" / "4", tmp_path / "one" / name / "checkpoints" / "4", world)
    assert json.loads((tmp_path / "many" / "worker.json").read_text()) == {"zh_resumed": True}
    if world == 2:
        _assert_same_scores(tmp_path / "many" / "checkpointed", tmp_path / "one" / "sample", world)


def test_sharding_without_several_processes_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    args = ["score", "--pretrained", tiny_model_dir, "--langs", "zh", "--samples", "2", "--device", "cpu", "--shard", "fsdp", "--out", tmp_path / "s"]
    result = lingreg(*args)
    assert result.returncode == 2 and "--shard fsdp needs several processes and none were started: launch `torchrun --nproc_per_node N" in result.stderr
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1
    result = lingreg(*args)
    assert result.returncode == 2 and "this run has one (WORLD_SIZE=1)" in result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("world", "backend", "device", "message"),
    [
        (1, "gloo", "cpu", "this process group has one"),
        (2, "gloo", "cuda", "on cuda with the gloo backend"),
        (2, "nccl", "cpu", "on cpu with the nccl backend"),
        (2, "gloo", "mps", "on mps with the gloo backend"),
    ],
)
def test_a_process_group_fsdp_cannot_run_on_is_refused(monkeypatch, world, backend, device, message):
    import torch.distributed as dist

    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.scores import check_shard

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    with pytest.raises(UsageError, match=message):
        check_shard("fsdp", device)
    check_shard("none", device)


def test_a_model_already_sharded_or_an_unknown_mode_is_refused(tok, tmp_path, monkeypatch):
    from lm_eval_lingreg import importance
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.scores import score_languages

    model = make_tiny("llama")
    with pytest.raises(UsageError, match="unknown --shard 'ddp'"):
        score_languages(model, tok, ["zh"], tmp_path / "s", 2, shard="ddp", progress=False)
    monkeypatch.setattr(importance, "is_sharded", lambda m: True)
    with pytest.raises(UsageError, match="already sharded"):
        score_languages(model, tok, ["zh"], tmp_path / "s", 2, progress=False)
    assert not (tmp_path / "s").exists()
