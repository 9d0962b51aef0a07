"""Further pre-training: the loop, its record, reproducibility, freeze specs, LoRA, checkpoints and clear errors."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.errors import RegionError, TrainingError, UsageError
from lm_eval_lingreg.selection import select_random
from lm_eval_lingreg.training import TrainConfig, further_pretrain, parse_lora, resolve_freeze, save_checkpoint, train

from helpers import SENTENCES, check_frozen_exact_and_rest_moved, make_tiny, random_region, tiny_tokenizer


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    lines = [f"{s} ({i})" for i in range(40) for s in SENTENCES]
    for iso in ("en", "fr"):
        (d / f"{iso}.txt").write_text("\n".join(lines), encoding="utf-8")
    return d


def _cfg(text_dir, **kw):
    base = dict(
        lang="en",
        data=str(text_dir),
        steps=4,
        lr=5e-3,
        batch_size=2,
        seq_len=32,
        grad_accum=2,
        warmup=1,
        eval_every=2,
        eval_langs=["fr"],
        eval_blocks=2,
        weight_decay=0.1,
    )
    return TrainConfig(**{**base, **kw})


def test_train_loop_keeps_region_and_tracks_curves(tiny_model, text_dir):
    tok = tiny_tokenizer()
    region = random_region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    rec = train(tiny_model, tok, _cfg(text_dir), freeze=region, progress=False)
    assert [c["step"] for c in rec["curves"]] == [0, 2, 4]
    assert set(rec["curves"][-1]["perplexity"]) == {"en", "fr"}
    assert rec["frozen"]["exact"] and rec["frozen"]["entries"] == region.num_selected
    assert rec["tokens"] == 4 * 2 * 2 * 32
    check_frozen_exact_and_rest_moved(tiny_model, before, region, min_moved=0.5)
    assert all(p.requires_grad for p in tiny_model.parameters())  # flags put back


def test_training_is_reproducible(text_dir):
    tok = tiny_tokenizer()
    cfg = TrainConfig(lang="en", data=str(text_dir), steps=2, lr=1e-3, batch_size=2, seq_len=32, eval_every=2, eval_langs=[], eval_blocks=1)
    a, b = make_tiny("llama"), make_tiny("llama")
    train(a, tok, cfg, progress=False)
    train(b, tok, cfg, progress=False)
    for (n, p), (_, q) in zip(named_parameters(a).items(), named_parameters(b).items(), strict=True):
        assert torch.equal(p, q), n


def test_resolve_freeze_specs(tiny_model):
    assert resolve_freeze("none", tiny_model) is None
    r = resolve_freeze("random:0.1", tiny_model, seed=3)
    assert r == select_random(scope_shapes(tiny_model), 0.1, seed=3, metadata={"kind": "random", "ratio": 0.1, "seed": 3})
    with pytest.raises(RegionError, match="between 0 and 1"):
        resolve_freeze("core:5", tiny_model)
    with pytest.raises(RegionError, match="no shipped mask 'core-top-7'.*lingreg extract core"):
        resolve_freeze("core:0.07", tiny_model)
    with pytest.raises(RegionError, match="does not fit model"):
        resolve_freeze("core:0.05", tiny_model)  # the shipped masks are for the bundled model


def test_bad_config_is_one_clear_error():
    with pytest.raises(TrainingError, match="steps must be >= 1.*schedule must be"):
        TrainConfig(lang="en", steps=0, schedule="exp")


def test_lora_route_merges_and_keeps_the_frozen_entries(tiny_model, text_dir):
    tok = tiny_tokenizer()
    region = random_region(tiny_model, 0.1)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    merged, rec = further_pretrain(tiny_model, tok, _cfg(text_dir, steps=2), freeze=region, lora=parse_lora("r=4,alpha=8"))
    assert not hasattr(merged, "peft_config") and rec["frozen"]["exact"] and rec["lora"]["r"] == 4
    check_frozen_exact_and_rest_moved(merged, before, region, min_moved=0.3)


@pytest.mark.parametrize(("text", "message"), [("rank=4", "expected comma-separated"), ("r=x", "not a number"), ("r=0", "r must be >= 1")])
def test_bad_lora_options(text, message):
    with pytest.raises(UsageError, match=message):
        parse_lora(text)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr": float("nan")}, "lr must be a finite"),
        ({"train_scope": "("}, "not a valid regular expression"),
        ({"max_grad_norm": -1}, ">= 0"),
        ({"seq_len": 1}, "seq_len must be >= 2"),
    ],
)
def test_nonsense_configurations_are_refused(kw, message):
    with pytest.raises((TrainingError, RegionError), match=message):
        TrainConfig(lang="en", **kw)


def test_divergence_is_a_clear_error(tiny_model, text_dir, monkeypatch):
    from lm_eval_lingreg import training

    with pytest.raises(TrainingError, match="lr must be a positive number up to 10"):
        _cfg(text_dir, lr=1e20)
    monkeypatch.setattr(training, "loss_backward", lambda *a, **k: float("nan"))
    with pytest.raises(TrainingError, match="training loss became nan.*lower --lr"):
        train(tiny_model, tiny_tokenizer(), _cfg(text_dir, steps=2), progress=False)


def test_a_diverged_model_is_never_returned(tiny_model, text_dir, monkeypatch):
    from lm_eval_lingreg import training

    real = training.probe_perplexity
    calls = []

    def blow_up(model, probe):
        calls.append(1)
        return real(model, probe) if len(calls) == 1 else {k: float("inf") for k in real(model, probe)}

    monkeypatch.setattr(training, "probe_perplexity", blow_up)
    with pytest.raises(TrainingError, match="diverged"):
        train(tiny_model, tiny_tokenizer(), _cfg(text_dir, steps=2), progress=False)


def test_checkpoint_is_atomic_and_refuses_to_replace_a_folder(tiny_model, tmp_path):
    from lm_eval_lingreg.errors import OutputError

    out = tmp_path / "ckpt"
    save_checkpoint(tiny_model, tiny_tokenizer(), out, {"x": 1})
    assert (out / "model.safetensors").is_file() and (out / "lingreg_train.json").is_file()
    with pytest.raises(OutputError, match="--overwrite"):
        save_checkpoint(tiny_model, tiny_tokenizer(), out, {"x": 2})
    save_checkpoint(tiny_model, tiny_tokenizer(), out, {"x": 2}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_paper_preset_is_a_whole_recipe_that_scales_only_its_warmup():
    from dataclasses import fields

    from lm_eval_lingreg.cli.train import PRESETTABLE
    from lm_eval_lingreg.training import PAPER_PRESET, paper_preset

    # every entry of the recipe is a TrainConfig field that a flag can set, and a config made from it keeps it as it is
    assert set(PAPER_PRESET) == set(PRESETTABLE) and set(PAPER_PRESET) <= {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(lang="en", **PAPER_PRESET)
    assert {k: getattr(cfg, k) for k in PAPER_PRESET} == PAPER_PRESET
    for steps in (5000, 300, 3):  # only the warmup follows the step count
        assert paper_preset(steps) == {**PAPER_PRESET, "warmup": paper_preset(steps)["warmup"]}
    assert paper_preset(5000)["warmup"] == 100 and paper_preset(300)["warmup"] == 30 and paper_preset(3)["warmup"] == 1
    # the recipe itself, as the paper's released code sets it: the specification this preset implements
    official = {"lr": 5e-5, "betas": (0.9, 0.95), "weight_decay": 0.001, "decay": "all", "warmup": 100, "schedule": "cosine"}
    official |= {"train_scope": "all", "unit": "documents", "seq_len": 512, "freeze_norms": False, "mixed_bf16": True}
    assert PAPER_PRESET == official


@pytest.mark.parametrize("command", ["train", "forget"])
def test_preset_paper_on_the_command_line_and_explicit_flags_win(command):
    from lm_eval_lingreg.cli import build_parser
    from lm_eval_lingreg.cli.train import _train_config
    from lm_eval_lingreg.training import PAPER_PRESET, paper_preset

    parser = build_parser()
    extra = ["--out", "x"] if command == "train" else []
    cfg = _train_config(parser.parse_args([command, "--lang", "ko", "--steps", "200", "--preset", "paper", *extra]), "ko")
    assert {k: getattr(cfg, k) for k in PAPER_PRESET} == paper_preset(200) and cfg.warmup == 20
    cfg = _train_config(parser.parse_args([command, "--lang", "ko", "--preset", "paper", "--freeze-norms", "--seq-len", "64", "--warmup", "0", *extra]), "ko")
    assert cfg.freeze_norms and cfg.seq_len == 64 and cfg.warmup == 0 and cfg.betas == PAPER_PRESET["betas"]
    plain = _train_config(parser.parse_args([command, "--lang", "ko", *extra]), "ko")
    assert (plain.betas, plain.decay, plain.unit, plain.freeze_norms, plain.mixed_bf16) == ((0.9, 0.999), "matrices", "blocks", True, False)


def test_paper_recipe_trains_documents_decays_every_parameter_and_leaves_norms_free(text_dir):
    from lm_eval_lingreg.training import _optimizer, _trainable, paper_preset

    model = make_tiny("gemma3")
    tok = tiny_tokenizer()
    cfg = _cfg(text_dir, **{**paper_preset(4), "seq_len": 160, "lr": 5e-3, "weight_decay": 0.1})
    optimizer, _ = _optimizer(cfg, _trainable(model, cfg.train_scope))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1] and optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    from lm_eval_lingreg.training import _decays

    assert not _decays("model.layers.0.self_attn.q_proj.bias", torch.nn.Parameter(torch.zeros(2)), "all")  # the official grouping
    region = random_region(model, ratio=0.2)
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    rec = train(model, tok, cfg, freeze=region, progress=False)
    assert rec["config"]["unit"] == "documents" and rec["config"]["mixed_bf16"] and rec["frozen"]["exact"]
    assert rec["tokens"] < 4 * 2 * 2 * 160  # padded documents, not full blocks: only real tokens count
    params = named_parameters(model)
    for name in region.indices:
        m = region.mask(name)
        same = torch.equal(params[name][m], before[name][m])
        assert same != ("norm" in name), f"{name}: frozen entries {'moved' if not same else 'stayed'}"
    assert not torch.equal(params["model.embed_tokens.weight"], before["model.embed_tokens.weight"])  # every parameter trains


def test_document_batches_use_the_hugging_face_loss(text_dir):
    from lm_eval_lingreg import lm_loss
    from lm_eval_lingreg.training import loss_backward

    model = make_tiny("llama")
    tok = tiny_tokenizer()
    docs = [tok(s).input_ids + [tok.eos_token_id] for s in SENTENCES[:3]]
    ids, attn = lm_loss.pad_batch(docs, tok.pad_token_id)
    ours = loss_backward(model, ids, 1.0, attn)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    hf = model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(attn == 0, -100)).loss
    hf.backward()
    assert ours == pytest.approx(hf.detach().item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
