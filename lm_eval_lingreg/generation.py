"""Greedy continuations of prompts under several conditions, side by side, on one loaded model."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.interventions import check_all, perturb
from lm_eval_lingreg.perturbation import Perturbation, parse_spec


def parse_condition(text: str) -> list[Perturbation]:
    """`base` (nothing), `mask=core` (zero a region), or perturbations in the compact form."""
    text = text.strip()
    if text.lower() in ("base", "none", ""):
        return []
    return parse_spec(text)


def parse_conditions(groups: Sequence[str] | None) -> dict[str, list[Perturbation]]:
    """`--compare` values (each comma-separated) -> {condition text: perturbations}; `base` by default."""
    out: dict[str, list[Perturbation]] = {}
    for group in groups or ["base"]:
        for c in (c.strip() for c in group.split(",")):
            if c:
                out[c] = parse_condition(c)
    if not out:
        raise UsageError("--compare is empty; give conditions like base,mask=core")
    return out


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    conditions: Mapping[str, Sequence[Perturbation]],
    max_new_tokens: int = 24,
) -> list[dict[str, str]]:
    """Greedy continuations of every prompt under every condition (model restored after each)."""
    from transformers import GenerationConfig

    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty or not prompts:
        raise UsageError('--prompt is empty; give the text to continue, e.g. --prompt "Fudan University is located in"')
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context and max_new_tokens > context:
        raise UsageError(f"--max-new-tokens {max_new_tokens} is more than the model's context of {context} tokens; ask for at most {context}")
    for perts in conditions.values():
        check_all(model, perts)
    eos = tokenizer.eos_token_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        eos_token_id=eos,
    )
    device = next(model.parameters()).device
    out = []
    for label, perts in conditions.items():
        with perturb(model, perts, tokenizer=tokenizer) if perts else contextlib.nullcontext():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt").to(device)
                ids = model.generate(**enc, generation_config=cfg)
                text = tokenizer.decode(ids[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
                out.append({"condition": label, "prompt": prompt, "continuation": text})
    return out
