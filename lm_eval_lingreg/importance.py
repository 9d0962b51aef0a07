"""Importance per language: s_l = theta * sum over samples of d loss / d theta (PAPER.md).

Gradients of the causal-LM loss are summed over all calibration samples on the unchanged
weights (no optimizer step), whatever the model dtype, and only for in-scope parameters:
embeddings and lm_head are frozen so their (large) gradients are never computed.

Two loss normalisations (`loss_norm`):

- `sample` (default): each sample contributes the gradient of its own mean token loss, so the
  sum depends neither on batch size nor on how samples are sharded over ranks.
- `batch-token` (the official code): each micro-batch of `batch_size` samples contributes the
  gradient of the Hugging Face loss, the mean over all tokens of the micro-batch. Long samples
  weigh more. Micro-batches are formed in the given sample order and sharded whole over ranks,
  so the sum is the same on any number of processes. (The official run also divided by its
  number of GPUs and accumulation steps: a constant factor, which changes no ranking.)

Gradients accumulate in `grad_dtype`: float32 (default, accurate) or bfloat16 (the official
code, whose DeepSpeed ZeRO-2 run accumulated and saved bf16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, in_scope, named_parameters
from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.lm_loss import DEFAULT_MAX_LOGITS_MB, IGNORE, backward_weighted_nll, next_token_labels, pad_batch

__all__ = [
    "LOSS_NORMS",
    "GRAD_DTYPES",
    "GradientSum",
    "check_loss_norm",
    "grad_dtype_of",
    "usable",
    "micro_batches",
    "sum_gradients",
    "importance",
    "global_importance",
]

LOSS_NORMS = ("sample", "batch-token")
GRAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class GradientSum:
    """Summed gradients of the in-scope parameters (in the accumulation dtype), and what went into them."""

    grads: dict[str, torch.Tensor]
    samples: int
    tokens: int


def check_loss_norm(loss_norm: str) -> str:
    if loss_norm not in LOSS_NORMS:
        raise UsageError(f"unknown loss normalisation {loss_norm!r}; expected one of {', '.join(LOSS_NORMS)}")
    return loss_norm


def grad_dtype_of(name: str | torch.dtype) -> torch.dtype:
    """`float32` / `bfloat16` (or the torch dtype itself) -> torch dtype."""
    if isinstance(name, torch.dtype) and name in GRAD_DTYPES.values():
        return name
    if name not in GRAD_DTYPES:
        raise UsageError(f"unknown gradient dtype {name!r}; expected one of {', '.join(GRAD_DTYPES)}")
    return GRAD_DTYPES[name]


def usable(samples: Sequence[list[int]], loss_norm: str) -> list[list[int]]:
    """The samples that take part: under `sample` those with a token to predict (2 or more tokens); under
    `batch-token` every non-empty one, since a 1-token sample still belongs to its micro-batch (with no loss
    token, as in the official code), and dropping it would shift every later micro-batch."""
    least = 2 if loss_norm == "sample" else 1
    return [s for s in samples if len(s) >= least]


def micro_batches(samples: Sequence[list[int]], batch_size: int, loss_norm: str) -> Iterator[list[list[int]]]:
    """The micro-batches `sum_gradients` runs: sorted by length under `sample` (less padding; the
    sum is order-free), in the given order under `batch-token` (the batches define the loss)."""
    kept = usable(samples, loss_norm)
    ordered = sorted(kept, key=len) if loss_norm == "sample" else kept
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def _loss_weights(keep: torch.Tensor, loss_norm: str) -> torch.Tensor:
    """Per-token weights of the loss: each sample's mean token loss (1/n on each of its n predicted tokens) for
    `sample`, the micro-batch's mean token loss for `batch-token`."""
    if loss_norm == "sample":
        return (keep / keep.sum(1, keepdim=True)).to(torch.float32)
    return (keep / keep.sum().clamp(min=1)).to(torch.float32)


@contextlib.contextmanager
def _summing_into(model: torch.nn.Module, targets: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> Iterator[None]:
    """While the block runs: only `targets` take gradients, each added into its `grads` buffer as it is computed
    (then dropped), in eval mode; afterwards every flag, hook and mode is as it was."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    hooks = []
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in targets.items():
            p.requires_grad_(True)
            p.grad = None

            def accumulate(param: torch.Tensor, buf: torch.Tensor = grads[name]) -> None:
                buf.add_(param.grad.to(buf.dtype))
                param.grad = None

            hooks.append(p.register_post_accumulate_grad_hook(accumulate))
        model.eval()  # no dropout: the estimate is of the deployed model
        yield
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None


def sum_gradients(
    model: torch.nn.Module,
    samples: Sequence[list[int]],
    scope: str = DEFAULT_SCOPE,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
    max_logits_mb: float = DEFAULT_MAX_LOGITS_MB,
    loss_norm: str = "sample",
    grad_dtype: str | torch.dtype = "float32",
    start: GradientSum | None = None,
) -> GradientSum:
    """Sum over `samples` of the loss gradient (normalised by `loss_norm`), accumulated in `grad_dtype`.

    `start` continues an earlier sum (its buffers are added to in place: cumulative
    checkpoints). `progress(samples_done, tokens_done)` is called after every batch;
    `max_logits_mb` bounds one chunk of vocabulary-sized logits (memory). The model's
    `requires_grad` flags are restored afterwards; its weights are never changed.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    check_loss_norm(loss_norm)
    dtype = grad_dtype_of(grad_dtype)
    targets = in_scope(model, scope)
    if start is not None:
        if set(start.grads) != set(targets) or any(g.dtype != dtype for g in start.grads.values()):
            raise UsageError("cannot continue a gradient sum made over other parameters or in another dtype")
        grads, tokens, done = start.grads, start.tokens, start.samples
    else:
        grads, tokens, done = {n: torch.zeros(p.shape, dtype=dtype, device=p.device) for n, p in targets.items()}, 0, 0
    with _summing_into(model, targets, grads):
        device = next(iter(targets.values())).device
        for batch in micro_batches(samples, batch_size, loss_norm):
            ids, attn = pad_batch(batch, pad_id)
            ids, attn = ids.to(device), attn.to(device)
            labels = next_token_labels(ids, attn)
            keep = labels != IGNORE
            if bool(keep.any()):
                backward_weighted_nll(model, ids, attn, labels, _loss_weights(keep, loss_norm), max_logits_mb)
            tokens += int(keep.sum())
            done += ids.shape[0]
            if progress is not None:
                progress(done, tokens)
    return GradientSum(grads, done, tokens)


def _reduced(g: torch.Tensor) -> torch.Tensor:
    """The sum of `g` over the ranks, as a new tensor (`g` itself unchanged)."""
    import torch.distributed as dist

    from lm_eval_lingreg.loading import collective_device

    moved = g.to(collective_device(dist.get_backend()), copy=True)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(g.device)


def _reduced_counts(result: GradientSum) -> tuple[int, int]:
    import torch.distributed as dist

    from lm_eval_lingreg.loading import collective_device

    counts = torch.tensor([result.samples, result.tokens], dtype=torch.int64, device=collective_device(dist.get_backend()))
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return int(counts[0]), int(counts[1])


@torch.no_grad()
def importance(model: torch.nn.Module, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta * summed gradient, per in-scope parameter (signed; |.| is taken at selection), on the CPU.

    In the gradients' dtype: float32, or bfloat16 as the official code saved them. The product of the
    weight (in the model's dtype) and the gradient is formed in float32 and rounded once; the official
    run multiplied its bf16 weights by the gradient the same way, so with bf16 weights the two agree.
    """
    params = named_parameters(model)
    return {n: (params[n].detach().to(torch.float32) * g.to(torch.float32)).to(g.dtype).cpu() for n, g in grads.items()}


def global_importance(model: torch.nn.Module, result: GradientSum, distributed: bool, keep: bool = True) -> tuple[dict[str, torch.Tensor], bool, int, int]:
    """Importance of the gradients summed over all ranks (one tensor reduced at a time; local sums unchanged):
    (scores, whether any summed gradient is non-zero, global samples, global tokens). Every rank takes part in
    the reductions; only ranks with `keep` (rank 0, which writes) form the scores in CPU memory, the others
    return an empty dict. Without torch.distributed, plain `importance`."""
    if not distributed:
        scores = importance(model, result.grads)
        return scores, any(bool(s.any()) for s in scores.values()), result.samples, result.tokens
    params = named_parameters(model)
    scores, nonzero = {}, False
    with torch.no_grad():
        for n, g in result.grads.items():
            total = _reduced(g)
            nonzero |= bool(total.any())
            if keep:
                scores[n] = (params[n].detach().to(torch.float32) * total.to(torch.float32)).to(g.dtype).cpu()
    return scores, nonzero, *_reduced_counts(result)
