"""Evaluation across processes, on the CPU with gloo: tensor-parallel (`tp_plan=auto`, DTensor weights, each
process edits its own shards) and data-parallel (`accelerate launch`) runs give one process's results."""

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
