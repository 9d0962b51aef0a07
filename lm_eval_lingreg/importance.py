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

Sharded (`shard_model`, PyTorch's FSDP2): parameters, gradients and sums are split over the ranks.
Every micro-batch's gradient is reduce-scattered (summed in float32), and each rank adds its own
shard of it into its own shard of the sum; scores are formed shard by shard and gathered one tensor
at a time. Every rank runs the same number of micro-batches (collectives), padding with zero-weight
ones where its share is shorter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, base_model, in_scope, layer_index, named_parameters
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
    "SHARDS",
    "shard_model",
    "is_sharded",
]

LOSS_NORMS = ("sample", "batch-token")
#: How scoring spreads the model over the ranks: `none` replicates it (gradients all-reduced at the end),
#: `fsdp` shards parameters, gradients and sums with FSDP2.
SHARDS = ("none", "fsdp")
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


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP2 shards (`shard_model`)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in base_model(model).named_modules() if layer_index(name) is not None]


def shard_model(model: torch.nn.Module, device: torch.device | str) -> None:
    """Shard `model` in place over the default process group with FSDP2: one group per decoder layer, the rest
    (embeddings, final norm, head) the root's. Gradients are reduce-scattered in float32 and summed over the ranks,
    not averaged. One tiny forward makes the whole model FSDP's root (the scorer then runs its body and head
    separately)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    layers = _decoder_layers(model)
    if not layers:
        raise UsageError(f"--shard fsdp shards decoder layers (`layers.<n>`), and {type(model).__name__} has none; score it with --shard none")
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    with torch.no_grad():
        model(input_ids=torch.ones((1, 1), dtype=torch.long, device=device))
    _reshard(model)


def _reshard(model: torch.nn.Module) -> None:
    """Free every gathered parameter of a sharded model: the model's parameters are its shards again."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextlib.contextmanager
def _checkpointing(model: torch.nn.Module, on: bool) -> Iterator[None]:
    """Recompute each decoder layer's activations in backward (transformers' activation checkpointing, non-reentrant)
    while the block runs. Transformers checkpoints only layers in training mode: the layers' own flag is set, their
    submodules (dropout) stay in eval mode. Afterwards the model is as it was."""
    if not on:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(f"--activation-checkpointing: transformers cannot checkpoint {type(model).__name__}'s layers; drop the option")
    was_on = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    layers = _decoder_layers(model)
    renamed = hasattr(model, "activation_checkpointing_enable")  # transformers' name since 5.x; gradient_ before
    enable = model.activation_checkpointing_enable if renamed else model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.disable_input_require_grads()  # the embeddings' hook it adds: non-reentrant checkpoints need no input gradient
    try:
        for layer in layers:
            layer.training = True
        yield
    finally:
        for layer in layers:
            layer.training = False
        if not was_on:
            (model.activation_checkpointing_disable if renamed else model.gradient_checkpointing_disable)()


@contextlib.contextmanager
def _summing_into(model: torch.nn.Module, targets: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], sharded: bool) -> Iterator[None]:
    """While the block runs: only `targets` take gradients, in eval mode; replicated, each gradient is added into its
    `grads` buffer as it is computed (then dropped); sharded, `_add_shards` does it after each backward. Afterwards
    every flag, hook and mode is as it was."""
    flags = {id(p): p.requires_grad for p in model.parameters()}  # sharded: the shards (the model is resharded between steps)
    hooks = []
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in targets.items():
            p.requires_grad_(True)
            p.grad = None
            if sharded:
                continue

            def accumulate(param: torch.Tensor, buf: torch.Tensor = grads[name]) -> None:
                buf.add_(param.grad.to(buf.dtype))
                param.grad = None

            hooks.append(p.register_post_accumulate_grad_hook(accumulate))
        model.eval()  # no dropout: the estimate is of the deployed model
        yield
    finally:
        if sharded:
            _reshard(model)  # an interrupted step may leave gathered parameters in the model's place
        model.train(was_training)
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None


def _add_shards(targets: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
    """Add this rank's shard of each reduced (summed over the ranks) gradient into its shard of the sum."""
    for name, p in targets.items():
        if p.grad is not None:
            grads[name].add_(_local(p.grad).to(grads[name].dtype))
            p.grad = None


def _max_over_ranks(n: int) -> int:
    import torch.distributed as dist

    from lm_eval_lingreg.loading import collective_device

    t = torch.tensor([n], dtype=torch.int64, device=collective_device(dist.get_backend()))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])


def _step_tensors(batch: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, attn = pad_batch(batch, pad_id)
    ids, attn = ids.to(device), attn.to(device)
    return ids, attn, next_token_labels(ids, attn)


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
    activation_checkpointing: bool = False,
) -> GradientSum:
    """Sum over `samples` of the loss gradient (normalised by `loss_norm`), accumulated in `grad_dtype`.

    `start` continues an earlier sum (its buffers are added to in place: cumulative
    checkpoints). `progress(samples_done, tokens_done)` is called after every batch;
    `max_logits_mb` bounds one chunk of vocabulary-sized logits (memory); `activation_checkpointing`
    recomputes the layers' activations in backward (memory for long sequences). The model's
    `requires_grad` flags are restored afterwards; its weights are never changed. On a sharded model
    (`shard_model`) every rank calls this together, and the sums are this rank's shards of the global sums.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    check_loss_norm(loss_norm)
    dtype = grad_dtype_of(grad_dtype)
    targets = in_scope(model, scope)
    sharded = is_sharded(model)
    if start is not None:
        if set(start.grads) != set(targets) or any(g.dtype != dtype or g.shape != _local(targets[n]).shape for n, g in start.grads.items()):
            raise UsageError("cannot continue a gradient sum made over other parameters, shards or in another dtype")
        grads, tokens, done = start.grads, start.tokens, start.samples
    else:
        grads, tokens, done = {n: torch.zeros(_local(p).shape, dtype=dtype, device=p.device) for n, p in targets.items()}, 0, 0
    device = next(iter(targets.values())).device
    batches = list(micro_batches(samples, batch_size, loss_norm))
    steps = _max_over_ranks(len(batches)) if sharded else len(batches)

    def step(ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        if sharded:
            model.unshard()  # the root's parameters (embeddings, head): the body and head run outside its forward
        backward_weighted_nll(model, ids, attn, labels, weights, max_logits_mb)
        if sharded:
            _add_shards(targets, grads)

    with _summing_into(model, targets, grads, sharded), _checkpointing(model, activation_checkpointing):
        for i in range(steps):
            batch = batches[i] if i < len(batches) else []
            ids, attn, labels = _step_tensors(batch or [[pad_id, pad_id]], pad_id, device)
            count = int((labels != IGNORE).sum()) if batch else 0
            if count:
                step(ids, attn, labels, _loss_weights(labels != IGNORE, loss_norm))
            elif sharded:  # every rank runs every step's collectives: without a token of its own, one weighing nothing
                ids, attn, labels = _step_tensors([[pad_id, pad_id]], pad_id, device)
                step(ids, attn, labels, torch.zeros(ids.shape, device=device))
            if batch:
                tokens += count
                done += len(batch)
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


@torch.no_grad()
def _gathered_importance(model: torch.nn.Module, grads: Mapping[str, torch.Tensor], keep: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """theta * sum formed on each rank's shards, then gathered one tensor at a time (so no rank ever holds more
    than one whole tensor on its device); ranks with `keep` copy each to the CPU. (scores, any sum non-zero)."""
    from torch.distributed.tensor import DTensor

    params = named_parameters(model)
    scores, nonzero = {}, False
    for n, g in grads.items():
        p = params[n]
        nonzero |= bool(g.any())
        local = (_local(p).detach().to(torch.float32) * g.to(torch.float32)).to(g.dtype)
        whole = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()).full_tensor()
        if keep:
            scores[n] = whole.cpu()
        del whole
    return scores, bool(_max_over_ranks(int(nonzero)))


def global_importance(model: torch.nn.Module, result: GradientSum, distributed: bool, keep: bool = True) -> tuple[dict[str, torch.Tensor], bool, int, int]:
    """Importance of the gradients summed over all ranks (one tensor reduced at a time; local sums unchanged):
    (scores, whether any summed gradient is non-zero, global samples, global tokens). Every rank takes part in
    the reductions; only ranks with `keep` (rank 0, which writes) form the scores in CPU memory, the others
    return an empty dict. Without torch.distributed, plain `importance`; on a sharded model, `_gathered_importance`."""
    if not distributed:
        scores = importance(model, result.grads)
        return scores, any(bool(s.any()) for s in scores.values()), result.samples, result.tokens
    if is_sharded(model):
        return *_gathered_importance(model, result.grads, keep), *_reduced_counts(result)
    params = named_parameters(model)
    scores, nonzero = {}, False
    with torch.no_grad():
        for n, g in result.grads.items():
            total = _reduced(g)
            nonzero |= bool(total.any())
            if keep:
                scores[n] = (params[n].detach().to(torch.float32) * total.to(torch.float32)).to(g.dtype).cpu()
    return scores, nonzero, *_reduced_counts(result)
