"""Next-token loss kernels shared by scoring, probing and training.

Vocabularies of 262K tokens make one batch's logits hundreds of MB, so the head and the loss
run on a bounded number of positions at a time against the final hidden states: forward
only (`token_nll`) or with a two-stage backward (`backward_weighted_nll`: the head's gradient
is accumulated chunk by chunk, then pushed through the body once). How many positions go in
a chunk follows a memory budget for one chunk's fp32 logits (`max_logits_mb`), so a 32K
vocabulary gets 8x larger chunks than a 262K one at the same memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lm_eval_lingreg.anatomy import split_head
from lm_eval_lingreg.errors import UsageError

#: Default budget for one chunk of fp32 logits: 64 positions of a 262K vocabulary, 512 of a 32K one.
DEFAULT_MAX_LOGITS_MB = 64.0
IGNORE = -100


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` for token id sequences."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def next_token_labels(ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the positions: position t predicts token t+1; the last position and
    padding predict nothing (`IGNORE`)."""
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:].masked_fill(attn[:, 1:] == 0, IGNORE)
    return labels


def chunk_rows(vocab_size: int, max_logits_mb: float = DEFAULT_MAX_LOGITS_MB) -> int:
    """Positions per head/loss chunk so that one chunk's fp32 logits fit in `max_logits_mb`."""
    if not (max_logits_mb > 0 and max_logits_mb != float("inf")):
        raise UsageError(f"max_logits_mb must be a positive number of MB, got {max_logits_mb}")
    return max(1, int(max_logits_mb * 2**20 // (4 * max(1, vocab_size))))


def _logits(head, hidden: torch.Tensor) -> torch.Tensor:
    logits = head.head(hidden).float()
    if head.softcap:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits


@torch.no_grad()
def token_nll(
    model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor, max_logits_mb: float = DEFAULT_MAX_LOGITS_MB
) -> torch.Tensor:
    """Per-position next-token NLL in fp32 (0 where the label is `IGNORE`), never holding all logits."""
    split = split_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=IGNORE)
        return nll.masked_fill(labels == IGNORE, 0.0)
    hidden = split.body(input_ids=ids, attention_mask=attn)[0]
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    nll = torch.zeros(flat_t.shape, dtype=torch.float32, device=hidden.device)
    rows = (flat_t != IGNORE).nonzero().reshape(-1)
    step = chunk_rows(split.vocab_size, max_logits_mb)
    for start in range(0, rows.numel(), step):
        sel = rows[start : start + step]
        nll[sel] = torch.nn.functional.cross_entropy(_logits(split, flat_h[sel]), flat_t[sel], reduction="none")
    return nll.view_as(labels)


def backward_weighted_nll(
    model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, max_logits_mb: float = DEFAULT_MAX_LOGITS_MB
) -> torch.Tensor:
    """Backward of `sum_t weights_t * nll_t`; returns that sum (detached, on the model's device).

    Models whose logits are not a plain (soft-capped) head of the hidden states use one full pass.
    """
    split = split_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=attn).logits
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none", ignore_index=IGNORE)
        total = (nll * weights.reshape(-1)).sum()
        total.backward()
        return total.detach()
    hidden = split.body(input_ids=ids, attention_mask=attn)[0]
    rows = (labels != IGNORE).reshape(-1).nonzero().reshape(-1)
    flat = hidden.detach().reshape(-1, hidden.shape[-1]).requires_grad_(True)
    flat_labels, flat_weights = labels.reshape(-1), weights.reshape(-1)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    step = chunk_rows(split.vocab_size, max_logits_mb)
    for start in range(0, rows.numel(), step):
        sel = rows[start : start + step]
        nll = torch.nn.functional.cross_entropy(_logits(split, flat[sel]), flat_labels[sel], reduction="none")
        part = (nll * flat_weights[sel]).sum()
        part.backward()
        total += part.detach()  # no host sync per chunk
    if flat.grad is not None:
        hidden.backward(flat.grad.view_as(hidden))
    return total
