"""One device story: --device auto/cpu/cuda, --dtype, and clear errors for models and devices that cannot be used."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.errors import ModelLoadError, UsageError
from lm_eval_lingreg.loading import init_distributed, load_model, resolve_device


def test_auto_picks_cuda_only_when_there_is_one():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="use auto, cpu"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="no CUDA GPU is visible.*--device cpu"):
        resolve_device("cuda:0")


def test_dtype_and_device_are_applied(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).device.type == "cpu" and tok is not None
    with pytest.raises(UsageError, match="--dtype"):
        load_model(str(tiny_model_dir), dtype="float8")


def test_a_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model .*nope.*local Hugging Face model directory"):
        load_model(str(tmp_path / "nope"), device="cpu")


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = init_distributed("auto", "cpu")
    assert (d.rank, d.world, d.device, d.active) == (0, 1, "cpu", False)
    with pytest.raises(UsageError, match="--backend"):
        init_distributed("mpi", "cpu")


def test_more_ranks_than_gpus_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelLoadError, match="3 processes were started on this machine but it has 1 GPU.*--nproc_per_node 1.*--backend gloo"):
        init_distributed("auto", "cuda")


def test_auto_dtype_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    from lm_eval_lingreg import loading
    from lm_eval_lingreg.loading import resolve_dtype

    monkeypatch.setattr(loading, "native_bf16", lambda device: False)
    assert resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(loading, "native_bf16", lambda device: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16" and resolve_dtype("float16", "cpu") == "float16"
