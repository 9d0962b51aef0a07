"""Frozen regions through training: bit-exact preservation (AdamW + weight decay), Trainer, peft, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SENTENCES, bin_path, make_tiny, run, tiny_tokenizer

from lm_eval_lingreg.freeze import FreezeCallback, FrozenRegion, merge_and_reimpose
from lm_eval_lingreg.regions import RegionError, named_parameters, scope_shapes
from lm_eval_lingreg.selection import select_random
from lm_eval_lingreg.training import TrainConfig, pack, resolve_freeze, train


def _region(model, ratio=0.05, seed=0):
    return select_random(scope_shapes(model), ratio, seed=seed)


def _check_frozen_exact_and_rest_moved(model, before, region, min_moved=0.9):
    params = named_parameters(model)
    moved = total = 0
    for name, p in params.items():
        if name not in region.indices:
            continue
        m = region.mask(name)
        assert torch.equal(p[m], before[name][m]), f"{name}: frozen entries changed"
        moved += int((p[~m] != before[name][~m]).sum())
        total += int((~m).sum())
    assert moved / total >= min_moved, f"only {moved}/{total} trainable in-scope entries changed"


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    lines = [f"{s} ({i})" for i in range(40) for s in SENTENCES]
    for iso in ("en", "fr"):
        (d / f"{iso}.txt").write_text("\n".join(lines), encoding="utf-8")
    return d


def test_adamw_with_weight_decay_never_moves_frozen_entries(tiny_model):
    region = _region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99))
    frozen = FrozenRegion(tiny_model, region).attach(opt)
    ids = torch.randint(3, 300, (4, 24))
    tiny_model.train()
    for _ in range(6):
        tiny_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        assert frozen.verify()
    _check_frozen_exact_and_rest_moved(tiny_model, before, region)
    frozen.detach()  # after detaching, the region trains like the rest
    tiny_model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert not frozen.verify()


def test_memory_is_the_frozen_entries_only(tiny_model):
    region = _region(tiny_model, 0.01)
    frozen = FrozenRegion(tiny_model, region)
    assert frozen.num_frozen == region.num_selected
    assert frozen.nbytes == region.num_selected * (4 + 4)  # int32 index + fp32 value per entry
    model_bytes = sum(p.numel() * p.element_size() for p in tiny_model.parameters())
    assert frozen.nbytes < 0.02 * model_bytes


def test_train_loop_keeps_region_and_tracks_curves(tiny_model, text_dir):
    tok = tiny_tokenizer()
    region = _region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    cfg = TrainConfig(lang="en", data=str(text_dir), steps=4, lr=5e-3, batch_size=2, seq_len=32, grad_accum=2, warmup=1,
                      eval_every=2, eval_langs=["fr"], eval_blocks=2, weight_decay=0.1)
    rec = train(tiny_model, tok, cfg, freeze=region, progress=False, log=lambda _m: None)
    assert [c["step"] for c in rec["curves"]] == [0, 2, 4]
    assert set(rec["curves"][-1]["perplexity"]) == {"en", "fr"}
    assert rec["frozen"]["exact"] and rec["frozen"]["entries"] == region.num_selected
    assert rec["tokens"] == 4 * 2 * 2 * 32
    _check_frozen_exact_and_rest_moved(tiny_model, before, region, min_moved=0.5)
    assert all(p.requires_grad for p in tiny_model.parameters())  # flags put back


def test_training_is_reproducible(text_dir):
    tok = tiny_tokenizer()
    cfg = TrainConfig(lang="en", data=str(text_dir), steps=2, lr=1e-3, batch_size=2, seq_len=32, eval_every=2, eval_langs=[], eval_blocks=1)
    a, b = make_tiny("llama"), make_tiny("llama")
    train(a, tok, cfg, progress=False)
    train(b, tok, cfg, progress=False)
    for (n, p), (_, q) in zip(named_parameters(a).items(), named_parameters(b).items(), strict=True):
        assert torch.equal(p, q), n


def test_trainer_callback_keeps_region(tiny_model, tmp_path):
    from transformers import Trainer, TrainingArguments

    tok = tiny_tokenizer()
    blocks = pack(tok, SENTENCES * 10, 24)
    data = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    region = _region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, weight_decay=0.3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    Trainer(model=tiny_model, args=args, train_dataset=data, callbacks=[FreezeCallback(region)]).train()
    _check_frozen_exact_and_rest_moved(tiny_model, before, region, min_moved=0.5)


def test_lora_merge_then_reimpose(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = make_tiny("llama")
    region = _region(model, 0.1)
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    frozen = FrozenRegion(model, region)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 300, (2, 16))
    for _ in range(3):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = merge_and_reimpose(peft_model, frozen)
    assert not hasattr(merged, "peft_config")
    assert frozen.verify()
    params = named_parameters(merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    m = region.mask(q)
    assert torch.equal(params[q][m], before[q][m]) and bool((params[q][~m] != before[q][~m]).any())


def test_resolve_freeze_specs(tiny_model):
    assert resolve_freeze("none", tiny_model) is None
    r = resolve_freeze("random:0.1", tiny_model, seed=3)
    assert r.num_selected == select_random(scope_shapes(tiny_model), 0.1, seed=3).num_selected
    with pytest.raises(RegionError, match="between 0 and 1"):
        resolve_freeze("core:5", tiny_model)
    with pytest.raises(RegionError, match="no shipped mask 'core-top-7'.*lingreg extract core"):
        resolve_freeze("core:0.07", tiny_model)
    with pytest.raises(RegionError, match="does not fit model"):
        resolve_freeze("core:0.05", tiny_model)  # the shipped masks are for the bundled model


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="steps must be >= 1.*schedule must be"):
        TrainConfig(lang="en", steps=0, schedule="exp")


def test_train_cli_writes_a_checkpoint_lm_eval_reads(tiny_model_dir, text_dir, tmp_path):
    out = tmp_path / "ckpt"
    common = ["--pretrained", str(tiny_model_dir), "--lang", "en", "--data", str(text_dir), "--steps", "2", "--seq-len", "32",
              "--batch-size", "2", "--eval-every", "1", "--watch-langs", "fr", "--eval-blocks", "1", "--lr", "1e-3"]
    proc = run([bin_path("lingreg"), "train", *common, "--freeze", "random:0.05", "--out", str(out)])
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    rec = json.loads((out / "lingreg_train.json").read_text())
    assert rec["frozen"]["exact"] and rec["freeze"] == "random:0.05" and len(rec["curves"]) == 3
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".ckpt.tmp-*"))
    proc = run([bin_path("lm_eval"), "--model", "hf", "--model_args", f"pretrained={out}", "--tasks", "lingreg_ppl_en", "--limit", "1",
                "--device", "cpu", "--output_path", str(tmp_path / "eval")])
    assert proc.returncode == 0 and list((tmp_path / "eval").rglob("results*.json"))
    # again into the same directory: refused without --overwrite
    proc = run([bin_path("lingreg"), "train", *common, "--out", str(out)])
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    # LoRA with a frozen region: merged checkpoint, frozen entries re-imposed
    proc = run([bin_path("lingreg"), "train", *common, "--freeze", "random:0.05", "--lora", "r=4,alpha=8", "--out", str(tmp_path / "lora")])
    assert proc.returncode == 0
    rec = json.loads((tmp_path / "lora" / "lingreg_train.json").read_text())
    assert rec["frozen"]["exact"] and rec["lora"]["r"] == 4
    from transformers import AutoModelForCausalLM

    merged = named_parameters(AutoModelForCausalLM.from_pretrained(tmp_path / "lora"))
    orig = named_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    region = select_random(scope_shapes(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), 0.05, seed=0)
    for n in region.indices:
        m = region.mask(n)
        assert torch.equal(merged[n][m], orig[n][m]), n


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be >= 1"),
        (["--freeze", "core:0.07"], "no shipped mask"),
        (["--lora", "rank=4"], "--lora"),
        (["--lang", "xx"], "xx"),
    ],
)
def test_train_cli_bad_input(tiny_model_dir, tmp_path, args, message):
    base = {"--lang": "en", "--steps": "1", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    proc = run([bin_path("lingreg"), "train", "--pretrained", str(tiny_model_dir), *[x for kv in base.items() for x in kv]])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_forget_end_to_end_on_the_bundled_model(bundled_model_dir, tmp_path):
    out = tmp_path / "forget"
    proc = run([bin_path("lingreg"), "forget", "--lang", "ko", "--steps", "2", "--conditions", "none,core:0.05,random:0.05",
                "--eval-langs", "en,ko", "--eval-limit", "1", "--seq-len", "64", "--batch-size", "2", "--eval-every", "1",
                "--watch-langs", "en", "--eval-blocks", "1", "--lr", "1e-4", "-o", str(out)])
    assert proc.returncode == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["conditions"] == ["none", "core-0.05", "random-0.05"]
    assert s["frozen"]["none"] is None and s["frozen"]["core-0.05"]["exact"] and s["frozen"]["random-0.05"]["exact"]
    assert s["frozen"]["core-0.05"]["entries"] == s["frozen"]["random-0.05"]["entries"] > 0
    for c in s["conditions"]:
        assert set(s["after"][c]) == {"en", "ko"} and json.loads((out / c / "results.json").read_text())["config"]["lingreg"]["training"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG" and "x ppl ko (target)" in proc.stdout
