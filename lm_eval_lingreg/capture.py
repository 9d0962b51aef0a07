"""Activations captured and changed through one primitive: a forward hook on one of the model's own modules.

`add_hook(module, fn, kind)` calls `fn` with the module's input (`kind="input"`, its first argument) or
output (`kind="output"`) tensor, the first element when the module returns a tuple, or with the whole call
`(args, kwargs)` (`kind="call"`: a fused experts module is called with the hidden states, the experts each
token is routed to and their weights); an input or output hook whose `fn` returns a tensor replaces that
input or output (an intervention), one that returns None only looks (a capture). `hooked` adds hooks
by module name for the length of a block and removes them on exit; `activation_pass` runs the model body
over token samples under such hooks, the way every activation statistic here is gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model
from lm_eval_lingreg.errors import LingregError

__all__ = ["KINDS", "add_hook", "hooked", "body", "activation_pass"]

KINDS = ("input", "output", "call")
Fn = Callable[[Any], "torch.Tensor | None"]


def add_hook(module: torch.nn.Module, fn: Fn, kind: str = "output") -> Any:
    """Hook `fn` on `module`'s input, output or call; returns the handle whose `remove()` takes it off."""
    if kind == "call":

        def pre_call(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            fn((args, kwargs))

        return module.register_forward_pre_hook(pre_call, with_kwargs=True)
    if kind == "input":

        def pre(_module: torch.nn.Module, args: tuple) -> Any:
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre)
    if kind != "output":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def post(_module: torch.nn.Module, _args: tuple, out: Any) -> Any:
        new = fn(out[0] if isinstance(out, tuple) else out)
        if new is None:
            return None
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return module.register_forward_hook(post)


@contextlib.contextmanager
def hooked(model: torch.nn.Module, fns: Mapping[str, Fn], kind: str = "output") -> Iterator[None]:
    """`fns` hooked on the named modules of `model` (names as `named_modules` gives them) while the block runs."""
    modules = dict(base_model(model).named_modules())
    missing = [m for m in fns if m not in modules]
    if missing:
        raise LingregError(f"no module {missing[0]!r} in this model")
    handles = []
    try:
        for name, fn in fns.items():
            handles.append(add_hook(modules[name], fn, kind))
        yield
    finally:
        for h in handles:
            h.remove()


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without the output head (a 262K-vocabulary head is most of a forward's cost)."""
    base = base_model(model)
    inner = getattr(base, getattr(base, "base_model_prefix", ""), None)
    return inner if isinstance(inner, torch.nn.Module) and inner is not base else base


def activation_pass(
    model: torch.nn.Module,
    samples: Sequence[Sequence[int]],
    collect: Mapping[str, Callable[[torch.Tensor, torch.Tensor], None]],
    kind: str,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """One forward pass of the model body over `samples` (no head, no gradient), calling
    `collect[module](values, keep)` for each named module with its input (`kind="input"`) or output
    (`kind="output"`) flattened to (tokens, features), or its call `(args, kwargs)` as it comes
    (`kind="call"`), and the boolean mask of real (non-padding) tokens over the flattened batch.
    Returns the number of real tokens."""
    from lm_eval_lingreg.lm_loss import pad_batch

    if batch_size < 1:
        raise LingregError(f"batch size must be at least 1, got {batch_size}")
    keep: dict[str, torch.Tensor] = {}

    def flat(name: str) -> Fn:
        def fn(x: torch.Tensor) -> None:
            collect[name](x if kind == "call" else x.reshape(-1, x.shape[-1]), keep["mask"])

        return fn

    device = next(model.parameters()).device
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with hooked(model, {name: flat(name) for name in collect}, kind), torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = [list(s) for s in samples[start : start + batch_size] if len(s)]
                if not chunk:
                    continue
                ids, attn = pad_batch(chunk, pad_id)
                keep["mask"] = attn.reshape(-1).bool().to(device)
                body(model)(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
                tokens += int(attn.sum())
                if progress:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    return tokens
