"""Every CUDA path on tiny models: regions, scoring (nccl too), freezing with (fused) AdamW and the Trainer, perturbations,
`lingreg train` and the real `lm_eval` CLI with --device cuda. Skipped without CUDA.

LINGREG_GPU_TESTS_ON_CPU=1 runs the same tests on the CPU (nccl and fused AdamW excepted), to check the tests themselves.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.regions import Region, apply, jaccard
from lm_eval_lingreg.selection import select_random

from helpers import SENTENCES, bin_path, lingreg, lm_eval_results, make_tiny, run, tiny_tokenizer, train_frozen

ON_CPU = os.environ.get("LINGREG_GPU_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs CUDA")]
DEVICE = "cpu" if ON_CPU else "cuda"
needs_real_gpu = pytest.mark.skipif(ON_CPU, reason="needs a real GPU")


@pytest.fixture
def model():
    return make_tiny("llama").to(DEVICE)


def test_regions_built_from_gpu_tensors_hold_cpu_indices_and_work_everywhere(model, tmp_path):
    from lm_eval_lingreg.region_io import load_region, save_region

    shapes = scope_shapes(model)
    name = "model.layers.0.mlp.up_proj.weight"
    masks = {name: torch.rand(shapes[name], device=DEVICE) < 0.1}
    a = Region.from_masks(masks)
    b = Region.from_indices({name: torch.tensor([3, 1, 3], device=DEVICE)}, shapes)
    assert a.indices[name].device.type == b.indices[name].device.type == "cpu"
    cpu = select_random(shapes, 0.1, seed=0)
    assert (a | cpu).num_selected >= a.num_selected and 0 <= jaccard(a, cpu)[0] <= 1
    assert torch.equal(a.mask(name), masks[name].cpu())
    assert load_region(save_region(a, tmp_path / "a.safetensors")) == a
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    saved = apply(a | cpu, model)
    assert (named_parameters(model)[name].detach().reshape(-1)[(a | cpu).indices[name].to(DEVICE)] == 0).all()
    saved.restore()
    assert all(torch.equal(p, before[n]) for n, p in named_parameters(model).items())


def test_scoring_on_the_gpu_matches_the_cpu_and_the_chunk_budget(model):
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import sum_gradients

    tok = tiny_tokenizer()
    samples = make_samples(tok, "ru", 8, seed=0).input_ids
    here = sum_gradients(model, samples, batch_size=4)
    small_chunks = sum_gradients(model, samples, batch_size=4, max_logits_mb=5 * 320 * 4 / 2**20)
    cpu = sum_gradients(make_tiny("llama"), samples, batch_size=4)
    assert here.tokens == cpu.tokens
    for n in cpu.grads:
        assert here.grads[n].device.type == DEVICE
        torch.testing.assert_close(here.grads[n].cpu(), cpu.grads[n], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(small_chunks.grads[n], here.grads[n], rtol=1e-4, atol=1e-6)


@needs_real_gpu
def test_torchrun_with_nccl_on_one_gpu_matches_one_process(tiny_model_dir, tmp_path):
    from lm_eval_lingreg.scores import ScoreSet

    args = ["score", "--pretrained", str(tiny_model_dir), "--langs", "zh", "--samples", "6", "--batch-size", "2"]
    assert lingreg(*args, "--out", tmp_path / "one", "--device", "cuda").returncode == 0
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "lm_eval_lingreg.cli",
            *args,
            "--out",
            str(tmp_path / "nccl"),
            "--backend",
            "nccl",
            "--device",
            "cuda",
        ]
    )
    assert proc.returncode == 0
    one, nccl = ScoreSet(tmp_path / "one"), ScoreSet(tmp_path / "nccl")
    for n in one:
        torch.testing.assert_close(nccl.get("zh", n), one.get("zh", n), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_real_gpu)])
def test_frozen_entries_survive_adamw_on_the_gpu(model, fused):
    region = select_random(scope_shapes(model), 0.05, seed=0)
    ids = torch.randint(3, 300, (4, 24), device=DEVICE)
    frozen, _ = train_frozen(model, region, ids, 4, lr=1e-2, weight_decay=0.5, fused=fused)
    assert frozen.verify()


def test_trainer_callback_on_the_gpu(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    from lm_eval_lingreg.freeze import FreezeCallback
    from lm_eval_lingreg.training import pack

    tok = tiny_tokenizer()
    data = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in pack(tok, SENTENCES * 10, 24)]
    region = select_random(scope_shapes(model), 0.05, seed=0)
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=ON_CPU,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[FreezeCallback(region)]).train()
    params = named_parameters(model)
    for n in region.indices:
        m = region.mask(n).to(params[n].device)
        assert torch.equal(params[n][m], before[n][m]), n


def test_perturbations_restore_exactly_on_the_gpu(model):
    from lm_eval_lingreg.interventions import perturb
    from lm_eval_lingreg.perturbation import parse_spec

    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    with perturb(
        model, parse_spec("layer=1:dim=3:op=mul:value=4;layers=0-1:dims=3+4:op=noise:value=1;param=model.layers.0.input_layernorm.weight:index=2:op=zero")
    ) as a:
        assert a.entries_changed > 0
    assert all(torch.equal(p, before[n]) for n, p in named_parameters(model).items())


def test_train_command_uses_the_gpu(tiny_model_dir, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "en.txt").write_text("\n".join(f"{s} ({i})" for i in range(40) for s in SENTENCES), encoding="utf-8")
    if not ON_CPU:
        torch.cuda.reset_peak_memory_stats()
    proc = lingreg(
        "train",
        "--pretrained",
        tiny_model_dir,
        "--lang",
        "en",
        "--data",
        text,
        "--steps",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--watch-langs",
        "en",
        "--eval-blocks",
        "1",
        "--freeze",
        "random:0.05",
        "--out",
        tmp_path / "ckpt",
        "--device",
        DEVICE,
    )
    assert proc.returncode == 0
    if not ON_CPU:
        assert torch.cuda.max_memory_allocated() > 0


def test_lm_eval_cli_with_device_cuda(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg.region_io import save_region

    mask = save_region(select_random(scope_shapes(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), 0.05, seed=0), tmp_path / "m.safetensors")
    proc = run(
        [
            bin_path("lm_eval"),
            "--model",
            "hf-region-ablated",
            "--model_args",
            f"pretrained={tiny_model_dir},mask={mask}",
            "--tasks",
            "lingreg_ppl_en",
            "--limit",
            "1",
            "--device",
            DEVICE,
            "--output_path",
            str(tmp_path / "out"),
        ]
    )
    assert proc.returncode == 0
    assert lm_eval_results(tmp_path / "out")["config"]["lingreg"]["entries_changed"] > 0
