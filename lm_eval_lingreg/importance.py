"""Importance per language: s_l = theta * sum over samples of d loss / d theta (PAPER.md).

Gradients of the causal-LM loss are summed over all calibration samples on the unchanged
weights (no optimizer step), in fp32 whatever the model dtype, and only for in-scope
parameters: embeddings and lm_head are frozen so their (large) gradients are never computed.

Each sample contributes the gradient of its mean token loss, so the sum does not depend on
batch size or on how samples are sharded over ranks: distributed scoring sums the same terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, in_scope, named_parameters
from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.lm_loss import DEFAULT_MAX_LOGITS_MB, IGNORE, backward_weighted_nll, next_token_labels, pad_batch


@dataclass
class GradientSum:
    """Summed fp32 gradients of the in-scope parameters, and what went into them."""

    grads: dict[str, torch.Tensor]
    samples: int
    tokens: int


def sum_gradients(
    model: torch.nn.Module,
    samples: Sequence[list[int]],
    scope: str = DEFAULT_SCOPE,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
    max_logits_mb: float = DEFAULT_MAX_LOGITS_MB,
) -> GradientSum:
    """Sum over `samples` of the gradient of each sample's mean next-token loss.

    `progress(samples_done, tokens_done)` is called after every batch; `max_logits_mb` bounds
    one chunk of vocabulary-sized logits (memory). The model's `requires_grad` flags are
    restored afterwards; its weights are never changed.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    targets = in_scope(model, scope)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    grads = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in targets.items()}
    hooks = []
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in targets.items():
            p.requires_grad_(True)
            p.grad = None

            def accumulate(param: torch.Tensor, buf: torch.Tensor = grads[name]) -> None:
                buf.add_(param.grad.to(torch.float32))
                param.grad = None

            hooks.append(p.register_post_accumulate_grad_hook(accumulate))
        model.eval()  # no dropout: the estimate is of the deployed model
        device = next(iter(targets.values())).device
        tokens = done = 0
        # Batches of similar length waste little compute on padding; the sum is order-free.
        ordered = sorted((s for s in samples if len(s) >= 2), key=len)
        for start in range(0, len(ordered), batch_size):
            ids, attn = pad_batch(ordered[start : start + batch_size], pad_id)
            ids, attn = ids.to(device), attn.to(device)
            labels = next_token_labels(ids, attn)
            keep = labels != IGNORE
            # each sample's mean token loss: weight 1/n on each of its n predicted tokens
            weights = (keep / keep.sum(1, keepdim=True)).to(torch.float32)
            backward_weighted_nll(model, ids, attn, labels, weights, max_logits_mb)
            tokens += int(keep.sum())
            done += ids.shape[0]
            if progress is not None:
                progress(done, tokens)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
    return GradientSum(grads, done, tokens)


def all_reduce(result: GradientSum) -> GradientSum:
    """Sum gradients, sample and token counts over the ranks of the default process group.

    Every collective uses tensors on the backend's device (the current GPU for nccl, the CPU
    for gloo); gradients elsewhere are moved there and back.
    """
    import torch.distributed as dist

    from lm_eval_lingreg.loading import collective_device

    device = collective_device(dist.get_backend())
    for g in result.grads.values():
        if g.device == torch.device(device):
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
        else:
            moved = g.to(device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            g.copy_(moved)
    counts = torch.tensor([result.samples, result.tokens], dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return GradientSum(result.grads, int(counts[0]), int(counts[1]))


@torch.no_grad()
def importance(model: torch.nn.Module, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta * summed gradient, per in-scope parameter (signed; |.| is taken at selection)."""
    params = named_parameters(model)
    return {n: (params[n].detach().to(torch.float32) * g).cpu() for n, g in grads.items()}
