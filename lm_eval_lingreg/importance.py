"""Importance per language: s_l = theta * sum over samples of d loss / d theta (PAPER.md).

Gradients of the causal-LM loss are summed over all calibration samples on the unchanged
weights (no optimizer step), in fp32 whatever the model dtype, and only for in-scope
parameters: embeddings and lm_head are frozen so their (large) gradients are never computed.

Each sample contributes the gradient of its mean token loss, so the sum does not depend on
batch size or on how samples are sharded over ranks: distributed scoring sums the same terms.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lm_eval_lingreg.regions import DEFAULT_SCOPE, named_parameters


@dataclass
class GradientSum:
    """Summed fp32 gradients of the in-scope parameters, and what went into them."""

    grads: dict[str, torch.Tensor]
    samples: int
    tokens: int


def _pad(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def _split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None] | None:
    """(body, head, softcap) when logits == softcap(head(body(...)[0])) for this model, else None."""
    if hasattr(model, "get_base_model"):  # peft: the wrapped causal LM, adapter layers injected in place
        model = model.get_base_model()
    cfg = model.config
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in ("logit_scale", "logits_scaling", "output_multiplier_scale")):
        return None
    body, head = getattr(model, "model", None), model.get_output_embeddings()
    if body is None or head is None or type(model).__name__.endswith("ForConditionalGeneration"):
        return None
    return body, head, getattr(cfg, "final_logit_softcapping", None)


def _backward_weighted_nll(model, ids, attn, labels, weights, chunk: int) -> float:
    """Backward of sum_t weights_t * nll_t, never holding the full [batch, len, vocab] logits; returns that sum.

    The head and loss run on `chunk` predicted positions at a time against a detached copy of
    the final hidden states; their gradient is then pushed through the body once. Models
    whose logits are not a plain (soft-capped) head of the hidden states use one full pass.
    """
    split = _split_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=attn).logits
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none")
        total = (nll * weights.reshape(-1)).sum()
        total.backward()
        return float(total.detach())
    body, head, cap = split
    hidden = body(input_ids=ids, attention_mask=attn)[0]
    rows = (labels != -100).reshape(-1).nonzero().reshape(-1)
    flat = hidden.detach().reshape(-1, hidden.shape[-1]).requires_grad_(True)
    total = 0.0
    for start in range(0, rows.numel(), chunk):
        sel = rows[start : start + chunk]
        logits = head(flat[sel]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        nll = torch.nn.functional.cross_entropy(logits, labels.reshape(-1)[sel], reduction="none")
        part = (nll * weights.reshape(-1)[sel]).sum()
        part.backward()
        total += float(part.detach())
    hidden.backward(flat.grad.view_as(hidden))
    return total


def sum_gradients(
    model: torch.nn.Module,
    samples: Sequence[list[int]],
    scope: str = DEFAULT_SCOPE,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 64,
) -> GradientSum:
    """Sum over `samples` of the gradient of each sample's mean next-token loss.

    `progress(samples_done, tokens_done)` is called after every batch; `chunk` bounds how
    many positions' vocabulary-sized logits exist at once (memory). The model's
    `requires_grad` flags are restored afterwards; its weights are never changed.
    """
    pattern = re.compile(scope)
    params = named_parameters(model)
    in_scope = {n: p for n, p in params.items() if pattern.search(n)}
    if not in_scope:
        raise ValueError(f"no parameter matches the scope pattern {scope!r}; names look like {next(iter(params), '?')!r}")
    flags = {id(p): p.requires_grad for p in model.parameters()}
    grads = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in in_scope.items()}
    hooks = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in in_scope.items():
            p.requires_grad_(True)
            p.grad = None

            def accumulate(param: torch.Tensor, buf: torch.Tensor = grads[name]) -> None:
                buf.add_(param.grad.to(torch.float32))
                param.grad = None

            hooks.append(p.register_post_accumulate_grad_hook(accumulate))
        was_training = model.training
        model.eval()  # no dropout: the estimate is of the deployed model
        device = next(iter(in_scope.values())).device
        tokens = done = 0
        # Batches of similar length waste little compute on padding; the sum is order-free.
        ordered = sorted((s for s in samples if len(s) >= 2), key=len)
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            ids, attn = _pad(batch, pad_id)
            ids, attn = ids.to(device), attn.to(device)
            # position t predicts token t+1; the last position and padding predict nothing
            labels = torch.full_like(ids, -100)
            labels[:, :-1] = ids[:, 1:].masked_fill(attn[:, 1:] == 0, -100)
            keep = labels != -100
            # each sample's mean token loss: weight 1/n on each of its n predicted tokens
            weights = (keep / keep.sum(1, keepdim=True)).to(torch.float32)
            _backward_weighted_nll(model, ids, attn, labels, weights, chunk)
            tokens += int(keep.sum())
            done += len(batch)
            if progress is not None:
                progress(done, tokens)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
    return GradientSum(grads, done, tokens)


def all_reduce(result: GradientSum) -> GradientSum:
    """Sum gradients, sample and token counts over the ranks of the default process group."""
    import torch.distributed as dist

    for g in result.grads.values():
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
    counts = torch.tensor([result.samples, result.tokens], dtype=torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return GradientSum(result.grads, int(counts[0]), int(counts[1]))


@torch.no_grad()
def importance(model: torch.nn.Module, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta * summed gradient, per in-scope parameter (signed; |.| is taken at selection)."""
    params = named_parameters(model)
    return {n: (params[n].detach().to(torch.float32) * g).cpu() for n, g in grads.items()}


class Throughput:
    """tqdm-friendly progress: samples as the bar, tokens/s in the postfix."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.t0 = time.perf_counter()
        self.last = 0

    def __call__(self, done: int, tokens: int) -> None:
        self.bar.update(done - self.last)
        self.last = done
        self.bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - self.t0):.0f}", tokens=tokens)


def score_languages(
    model: torch.nn.Module,
    tokenizer,
    langs: Sequence[str],
    out_dir: str,
    samples: int,
    data: str | None = None,
    unit: str = "sentences",
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int = 4,
    scope: str = DEFAULT_SCOPE,
    model_name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Score each language into `<out_dir>/<lang>.safetensors`, skipping finished ones.

    Under torch.distributed, every rank scores its shard of the samples, gradients are
    summed across ranks and rank 0 writes.
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.corpora import make_samples, shard
    from lm_eval_lingreg.scores import is_done, save_scores

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    name = model_name or getattr(model.config, "name_or_path", type(model).__name__)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    summary = {}
    for lang in langs:
        config = {"model": name, "lang": lang, "samples": samples, "data": data or "eld", "unit": unit, "seq_len": seq_len, "seed": seed, "scope": scope}
        if is_done(out_dir, lang, config):
            log(f"{lang}: already scored in {out_dir} with this configuration, skipping")
            summary[lang] = {"skipped": True}
            continue
        batch = make_samples(tokenizer, lang, samples, data=data, unit=unit, seq_len=seq_len, seed=seed)
        mine = shard(batch.input_ids, rank, world)
        bar = tqdm(total=len(mine), desc=f"scoring {lang}", unit="sample", disable=rank != 0)
        t0 = time.perf_counter()
        result = sum_gradients(model, mine, scope=scope, batch_size=batch_size, pad_id=pad_id, progress=Throughput(bar))
        bar.close()
        if distributed:
            result = all_reduce(result)
        seconds = time.perf_counter() - t0
        info = {"samples": result.samples, "tokens": result.tokens, "source": batch.source, "corpus_sha256": batch.sha256,
                "seconds": round(seconds, 2), "world_size": world, "lm_eval_lingreg": __version__}
        if rank == 0:
            save_scores(out_dir, lang, importance(model, result.grads), info, config)
            log(f"{lang}: {result.samples} samples, {result.tokens} tokens from {batch.source} in {seconds:.1f}s "
                f"({result.tokens / max(seconds, 1e-9):.0f} tokens/s) -> {out_dir}/{lang}.safetensors")
        summary[lang] = info
        if distributed:
            dist.barrier()
    return summary
