"""Frozen regions: bit-exact preservation through any optimizer step (AdamW + weight decay), the Trainer, peft merges."""

from __future__ import annotations

import torch

from lm_eval_lingreg.anatomy import named_parameters
from lm_eval_lingreg.freeze import FreezeCallback, FrozenRegion, merge_and_reimpose
from lm_eval_lingreg.training import pack

from helpers import SENTENCES, check_frozen_exact_and_rest_moved, make_tiny, random_region, tiny_tokenizer, train_frozen


def test_adamw_with_weight_decay_never_moves_frozen_entries(tiny_model):
    region = random_region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    ids = torch.randint(3, 300, (4, 24))
    frozen, opt = train_frozen(tiny_model, region, ids, 6, lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99))
    check_frozen_exact_and_rest_moved(tiny_model, before, region)
    frozen.detach()  # after detaching, the region trains like the rest
    tiny_model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert not frozen.verify()


def test_memory_is_the_frozen_entries_only(tiny_model):
    region = random_region(tiny_model, 0.01)
    frozen = FrozenRegion(tiny_model, region)
    assert frozen.num_frozen == region.num_selected
    assert frozen.nbytes == region.num_selected * (4 + 4)  # int32 index + fp32 value per entry
    model_bytes = sum(p.numel() * p.element_size() for p in tiny_model.parameters())
    assert frozen.nbytes < 0.02 * model_bytes


def test_trainer_callback_keeps_region(tiny_model, tmp_path):
    from transformers import Trainer, TrainingArguments

    tok = tiny_tokenizer()
    blocks = pack(tok, SENTENCES * 10, 24)
    data = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    region = random_region(tiny_model)
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_model).items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=tiny_model, args=args, train_dataset=data, callbacks=[FreezeCallback(region)]).train()
    check_frozen_exact_and_rest_moved(tiny_model, before, region, min_moved=0.5)


def test_lora_merge_then_reimpose(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = make_tiny("llama")
    region = random_region(model, 0.1)
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
