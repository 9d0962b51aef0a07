"""Models spread over processes and devices, on the CPU with gloo: tensor-parallel (`tp_plan=auto`, DTensor weights,
each process edits its own shards) and data-parallel (`accelerate launch`) evaluation give one process's results, and
`lingreg apply` on a model whose layers a device map offloads writes the checkpoint of the plain path."""

from __future__ import annotations

import json
import math

import pytest

from helpers import bin_path, random_region, run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory):
    from lm_eval_lingreg.region_io import save_region

    from helpers import make_tiny

    path = tmp_path_factory.mktemp("mask") / "random5.safetensors"
    save_region(random_region(make_tiny("llama"), 0.05), path)
    return path


def test_tensor_parallel_ablation_and_perturbations_equal_one_process_and_restore_exactly(tiny_model_dir, mask_file, tmp_path):
    import parallel_worker

    parallel_worker.main(tiny_model_dir, str(mask_file), tmp_path / "one.json", tp=False)
    one = json.loads((tmp_path / "one.json").read_text())
    cmd = [bin_path("torchrun"), "--standalone", "--nproc_per_node", "2", parallel_worker.__file__, tiny_model_dir, mask_file, tmp_path / "tp.json", "tp"]
    proc = run([str(c) for c in cmd], env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0
    ranks = [json.loads((tmp_path / name).read_text()) for name in ("tp.json", "tp.json.rank1")]
    assert one["dtensors"] == 0 and all(r["dtensors"] >= 14 for r in ranks)  # q/k/v/o/gate/up/down of both layers are sharded
    assert all(r["uneven_shards"] for r in ranks)
    assert ranks[0]["entries_changed"] == one["entries_changed"] > 0
    conditions = ["ablated", *parallel_worker.perturbations(str(mask_file))]
    for r in ranks:
        assert all(r["exact"].values()) and set(r["exact"]) == set(one["exact"])  # every restore is bit-exact on every shard
        for key in ["base", *conditions]:
            assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(r[key], one[key], strict=True)), key
    for key in conditions:  # each one changed the model
        assert max(abs(a - b) for a, b in zip(one[key], one["base"], strict=True)) > 1e-3, key


def test_accelerate_data_parallel_on_cpus_splits_the_documents_and_equals_one_process(tiny_model_dir, mask_file, tmp_path):
    import lm_eval

    from lm_eval_lingreg.evaluation import task_manager
    from lm_eval_lingreg.models import RegionAblatedLM

    from helpers import lm_eval_results

    tasks = ["lingreg_ppl_en", "lingreg_ppl_zh"]
    model_args = f"pretrained={tiny_model_dir},mask={mask_file}"
    cmd = [bin_path("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "-m", "lm_eval", "--model", "hf-region-ablated"]
    cmd += ["--model_args", model_args, "--tasks", ",".join(tasks), "--limit", "5", "--output_path", str(tmp_path / "dp")]
    proc = run(cmd, env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0
    assert "lingreg_ppl_en on rank 1" in proc.stderr  # the second process took its share of the documents
    dp = lm_eval_results(tmp_path / "dp")
    one = lm_eval.simple_evaluate(
        model=RegionAblatedLM(pretrained=str(tiny_model_dir), mask=str(mask_file), device="cpu"), tasks=tasks, limit=5, task_manager=task_manager()
    )
    assert dp["config"]["lingreg"]["data_parallel"] == 2 and "data_parallel" not in one["config"]["lingreg"]
    for task in tasks:
        for metric in ("token_perplexity,none", "bits_per_byte,none"):
            assert dp["results"][task][metric] == pytest.approx(one["results"][task][metric], rel=1e-6), (task, metric)


OFFLOAD_LAYER_1 = '{"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}'


def test_apply_on_a_model_with_layers_offloaded_to_disk_writes_the_plain_checkpoint(tiny_model_dir, mask_file, tmp_path):
    import hashlib

    import torch
    from safetensors.torch import load_file

    from helpers import lingreg

    source = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    written = {}
    for label, extra in (("plain", []), ("auto", ["--device-map", "auto"]), ("disk", ["--device-map", OFFLOAD_LAYER_1])):
        out = tmp_path / label
        assert lingreg("apply", "--pretrained", tiny_model_dir, "--mask", mask_file, "--out", out, "--device", "cpu", *extra).returncode == 0
        written[label] = (load_file(out / "model.safetensors"), json.loads((out / "lingreg_ablation.json").read_text()))
    plain, info = written["plain"]
    original = load_file(tiny_model_dir / "model.safetensors")
    assert info["entries_changed"] == sum(int((plain[k] != original[k]).sum()) for k in plain) > 0
    assert any((plain[k] != original[k]).any() for k in plain if k.startswith("model.layers.1."))  # the offloaded layer was edited too
    for label in ("auto", "disk"):
        tensors, record = written[label]
        assert set(tensors) == set(plain) and all(torch.equal(tensors[k], plain[k]) for k in plain), label
        assert record["entries_changed"] == info["entries_changed"]
    assert hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest() == source  # read from, never written


@pytest.mark.parametrize("bad", ["everywhere", '{"model.layers.1": "tape"}', "[1, 2]", '{"model.layers.1": true}'])
def test_a_bad_device_map_is_one_clear_error(tiny_model_dir, mask_file, tmp_path, bad):
    from helpers import lingreg

    res = lingreg("apply", "--pretrained", tiny_model_dir, "--mask", mask_file, "--out", tmp_path / "out", "--device-map", bad)
    assert res.returncode == 2 and "--device-map" in res.stderr and not (tmp_path / "out").exists()


def test_tp_plan_with_an_lm_eval_that_lacks_it_is_one_error(monkeypatch, tiny_model_dir):
    from lm_eval_lingreg import models
    from lm_eval_lingreg.errors import ModelLoadError

    monkeypatch.setitem(models._HFLM_TAKES, "tp_plan", False)
    with pytest.raises(ModelLoadError, match=r"tp_plan: tensor-parallel evaluation needs lm-eval >= 0\.4\.12"):
        models.RegionAblatedLM(pretrained=str(tiny_model_dir), tp_plan="auto")
