"""The anatomy of a causal LM as this package sees it: real parameter names, the scope of the
paper (the transformer blocks), the tensors that read or write the residual stream, the
output head, and how each norm uses its weight.

Everything is addressed by the model's own parameter names (`model.layers.1.mlp.down_proj.weight`);
a peft-wrapped model is unwrapped so that names made on the base model still apply.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lm_eval_lingreg.errors import PerturbationError, RegionError, first

__all__ = [
    "DEFAULT_SCOPE",
    "READERS",
    "WRITERS",
    "HEAD_NORMS",
    "LAYER_PATTERN",
    "ROUTER_PATTERN",
    "WITHOUT_ROUTERS",
    "is_router",
    "experts_of",
    "layer_index",
    "layer_module",
    "base_model",
    "named_parameters",
    "compile_scope",
    "in_scope",
    "scope_shapes",
    "hidden_size",
    "model_name",
    "editability_problems",
    "model_fingerprint",
    "Slot",
    "short_module",
    "is_norm",
    "residual_slots",
    "model_slots",
    "gain_offset",
    "Head",
    "split_head",
    "numel",
]

#: Parameters inside the transformer blocks: the paper's scope (embeddings, final norm and
#: lm_head excluded).
DEFAULT_SCOPE = r"layers\.\d+\."
#: Linear layers whose input is the residual stream (a hidden dimension is one of their columns): fused ones
#: (Phi-3's qkv_proj and gate_up_proj, the experts' gate_up_proj) read it the same way; `gate` is a mixture-of-experts
#: router (experts x hidden), which reads the residual stream to choose the experts.
READERS = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "qkv_proj", "gate_up_proj", "gate"})
#: Linear layers whose output is added to the residual stream (a hidden dimension is one of their rows).
WRITERS = frozenset({"o_proj", "down_proj"})
#: Per-head norms (Gemma-3, Qwen-3): they act on head_dim, not on the residual stream.
HEAD_NORMS = frozenset({"q_norm", "k_norm"})
#: A decoder layer in a dotted module or parameter name: `layers.<index>` at the start of the name or
#: after a dot (group 1: the index). `layer_index` anchors it at the end of a name, before a suffix.
LAYER_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)")
#: A residual-stream tensor: the last `layers.<index>.` of the name, then its module and weight or bias; fused
#: expert tensors are parameters of the experts module itself (`mlp.experts.down_proj`), with no suffix.
_SLOT_RE = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(.+?)(?:\.(weight|bias))?$")
#: A mixture-of-experts router weight (experts x hidden), as Qwen3-MoE, OLMoE and Mixtral name it.
ROUTER_PATTERN = re.compile(r"(?:^|\.)layers\.\d+\.mlp\.gate\.weight$")
#: The default scope less the routers. Routers are in the default scope (block parameters, as the paper's scope
#: has it); `--scope` with this pattern leaves them out.
WITHOUT_ROUTERS = r"layers\.\d+\.(?!mlp\.gate\.)"
#: The variant `layer_module` reads: the first `layers.<index>.` anywhere in a name (as `DEFAULT_SCOPE`
#: matches it), then the module, less a trailing `.weight` or `.bias`.
_LAYER_MODULE_RE = re.compile(r"layers\.(\d+)\.(.+?)(?:\.weight|\.bias)?$")


def layer_index(name: str, suffix: str = "") -> int | None:
    """The decoder layer index of a name that ends in `layers.<index>` followed by `suffix` exactly, else None.

    `layers` starts the name or follows a dot: `layer_index("model.layers.3")` is 3,
    `layer_index("model.layers.3.mlp", ".mlp")` is 3, `layer_index("model.layers.3.mlp")` is None.
    """
    m = re.search(LAYER_PATTERN.pattern + re.escape(suffix) + "$", name)
    return int(m.group(1)) if m else None


def layer_module(name: str) -> tuple[int | None, str]:
    """(layer index, module within the layer) of a parameter name, less a trailing `.weight`/`.bias`;
    (None, name) when no `layers.<index>.` occurs in it."""
    m = _LAYER_MODULE_RE.search(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def is_router(name: str) -> bool:
    """Whether a parameter name is a mixture-of-experts router weight (`layers.<n>.mlp.gate.weight`)."""
    return ROUTER_PATTERN.search(name) is not None


def experts_of(name: str, shape: Sequence[int]) -> int:
    """How many experts a tensor holds: its first size for a fused 3-D expert tensor (`...experts.gate_up_proj`,
    experts x rows x cols, each expert's slice laid out as an nn.Linear weight, rows out and columns in), else 1."""
    return int(shape[0]) if len(shape) == 3 and ".experts." in f".{name}." else 1


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The wrapped transformers model of a peft model (adapter layers injected in place), else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's parameters under their plain transformers names.

    A peft-wrapped model is unwrapped and `.base_layer` dropped, so a region made on the
    base model addresses the same base weights; adapter weights are left out.
    """
    out = {}
    for name, p in base_model(model).named_parameters(remove_duplicate=False):
        if "lora_" in name or ".modules_to_save." in name or "original_module" in name:
            continue
        out.setdefault(name.replace(".base_layer.", "."), p)
    return out


def compile_scope(scope: str) -> re.Pattern:
    """The scope regex, or a `RegionError` naming the bad pattern."""
    try:
        return re.compile(scope)
    except re.error as e:
        raise RegionError(f"scope {scope!r} is not a valid regular expression ({e}); the default is {DEFAULT_SCOPE!r}") from e


def in_scope(model: torch.nn.Module, scope: str = DEFAULT_SCOPE) -> dict[str, torch.nn.Parameter]:
    """The parameters whose name matches `scope`; an error naming the model's names if none does."""
    pattern = compile_scope(scope)
    params = named_parameters(model)
    out = {n: p for n, p in params.items() if pattern.search(n)}
    if not out:
        raise RegionError(
            f"no parameter of this model matches the scope {scope!r}; its names look like {next(iter(params), '?')!r} (the default scope is {DEFAULT_SCOPE!r})"
        )
    return out


def scope_shapes(model: torch.nn.Module, scope: str = DEFAULT_SCOPE) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters whose name matches the scope pattern."""
    return {n: tuple(p.shape) for n, p in in_scope(model, scope).items()}


def hidden_size(model: torch.nn.Module) -> int | None:
    cfg = getattr(base_model(model), "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "hidden_size", None)


def model_name(model: torch.nn.Module) -> str:
    cfg = getattr(base_model(model), "config", None)
    return str(getattr(cfg, "name_or_path", "") or type(base_model(model)).__name__)


def editability_problems(params: Mapping[str, torch.Tensor]) -> list[str]:
    """Why some of these parameters cannot be edited in place (offloaded, quantized), as messages."""
    offloaded = [n for n, p in params.items() if p.device.type == "meta"]
    frozen = [f"{n} ({p.dtype})" for n, p in params.items() if p.device.type != "meta" and not (p.is_floating_point() and p.is_contiguous())]
    problems = []
    if offloaded:
        problems.append(
            f"{len(offloaded)} targeted parameter(s) are offloaded (meta device): {first(offloaded)}; weights offloaded by a "
            "device map cannot be edited in place: load the model on one device (--device), or write an edited checkpoint "
            "with `lingreg apply` and evaluate that"
        )
    if frozen:
        problems.append(
            f"{len(frozen)} targeted parameter(s) are quantized or non-contiguous and cannot be edited in place: "
            f"{first(frozen)}; load the model in a float dtype"
        )
    return problems


#: Config fields that name where or how a model was loaded, not what it computes.
_CONFIG_NOT_IDENTITY = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "_attn_implementation", "_commit_hash"})


def model_fingerprint(model: torch.nn.Module) -> str:
    """The identity of a model's weights and architecture: every parameter's name, shape, dtype and bytes, and
    its config (less where and how it was loaded). Another model, the same one trained further or edited in a
    single entry, or a changed config (a norm epsilon, rope theta) differ; the same model at another path does not."""
    import json

    h = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOT_IDENTITY}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, p in sorted(named_parameters(model).items()):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        if p.device.type == "meta" or not p.numel():
            continue
        h.update(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().data)
    return h.hexdigest()


# the residual stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A tensor touching the residual stream: where hidden dimension d sits in it."""

    name: str
    layer: int
    module: str  # short module name, e.g. "down_proj", "input_layernorm"
    role: str  # "norm" (entry d), "read" (column d), "write" (row d or bias entry d)
    shape: tuple[int, ...]

    def indices(self, dim: int) -> torch.Tensor:
        """Flat indices of dimension `dim` in this tensor (in every expert's slice of a fused 3-D expert tensor)."""
        if len(self.shape) == 1:
            return torch.tensor([dim], dtype=torch.int64)
        rows, cols = self.shape[-2:]
        if self.role == "read":
            one = torch.arange(rows, dtype=torch.int64) * cols + dim
        else:
            one = torch.arange(cols, dtype=torch.int64) + dim * cols
        experts = numel(self.shape[:-2])
        return (torch.arange(experts, dtype=torch.int64)[:, None] * (rows * cols) + one[None, :]).reshape(-1)

    @property
    def entries_per_dim(self) -> int:
        """How many entries of this tensor sit on one hidden dimension (`len(indices(d))`, without building them)."""
        if len(self.shape) == 1:
            return 1
        return numel(self.shape[:-2]) * (self.shape[-2] if self.role == "read" else self.shape[-1])

    def counts(self, flat: torch.Tensor, hidden: int) -> torch.Tensor:
        """How many of the flat indices fall on each hidden dimension."""
        if len(self.shape) == 1:
            return torch.bincount(flat, minlength=hidden)
        rows, cols = self.shape[-2:]
        return torch.bincount(flat % cols if self.role == "read" else (flat % (rows * cols)) // cols, minlength=hidden)


def short_module(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def is_norm(module: str) -> bool:
    short = short_module(module)
    return short not in HEAD_NORMS and ("norm" in short or short.startswith("ln"))


def residual_slots(shapes: Mapping[str, Sequence[int]], hidden: int | None = None) -> tuple[dict[str, Slot], int]:
    """The tensors that read or write the residual stream, by name, and the hidden size.

    Works from names and shapes alone (so also for a region file): per-layer norm weights of
    the hidden size, the columns of q/k/v/gate/up projections (fused or not, and of a router) and the rows
    (and bias) of o/down. A fused 3-D expert tensor (experts x rows x cols) takes part with every expert's slice.
    """
    if hidden is None:
        sizes = [s[0] for n, s in shapes.items() if (m := _SLOT_RE.search(n)) and len(s) == 1 and is_norm(m.group(2)) and m.group(3) == "weight"]
        if not sizes:
            sizes = [s[-2] for n, s in shapes.items() if (m := _SLOT_RE.search(n)) and len(s) in (2, 3) and short_module(m.group(2)) in WRITERS]
        if not sizes:
            raise PerturbationError("cannot tell the hidden size: no per-layer norm or o_proj/down_proj tensors found")
        hidden = max(set(sizes), key=sizes.count)
    slots = {}
    for name, shape in shapes.items():
        m = _SLOT_RE.search(name)
        if not m:
            continue
        layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
        short, shape = short_module(module), tuple(int(x) for x in shape)
        matrix = (kind == "weight" and len(shape) == 2) or (kind is None and experts_of(name, shape) > 1)
        if len(shape) == 1 and kind == "weight" and is_norm(module) and shape[0] == hidden:
            slots[name] = Slot(name, layer, short, "norm", shape)
        elif matrix and short in READERS and shape[-1] == hidden:
            slots[name] = Slot(name, layer, short, "read", shape)
        elif short in WRITERS and (shape[-2] == hidden if matrix else (kind, shape) == ("bias", (hidden,))):
            slots[name] = Slot(name, layer, short, "write", shape)
    return slots, hidden


def model_slots(model: torch.nn.Module) -> tuple[dict[str, Slot], int]:
    """`residual_slots` of a loaded model."""
    return residual_slots({n: tuple(p.shape) for n, p in named_parameters(model).items()}, hidden_size(model))


@torch.no_grad()
def gain_offset(module: torch.nn.Module, weight: torch.Tensor) -> float:
    """0.0 if the norm computes `normalized * w`, 1.0 if `normalized * (1 + w)` (Gemma-style).

    Probed on the module itself with a zero-mean input, so LayerNorm, RMSNorm and their
    variants are told apart by what they compute rather than by their class name.
    """
    n = weight.numel()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, generator=g)
    x = (x - x.mean(-1, keepdim=True)) * 10
    r = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    try:
        y = module(x.to(weight.device, weight.dtype)).float().cpu()
    except Exception as e:  # noqa: BLE001 - any failure means we cannot tell
        raise PerturbationError(f"on=gain: cannot probe {type(module).__name__} ({e})") from e
    w = weight.detach().float().cpu()
    bias = getattr(module, "bias", None)
    b = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else 0.0
    err = {off: float((y - (r * (w + off) + b)).abs().max()) for off in (0.0, 1.0)}
    best = min(err, key=err.get)
    tol = 1e-2 * float(y.abs().max()) + 1e-3
    if err[best] > tol:
        raise PerturbationError(
            f"on=gain: {type(module).__name__} computes neither normalized*w nor normalized*(1+w); use on=param to perturb its stored weight"
        )
    return best


# the output head --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """logits == softcap(head(body(...)[0])) for this model."""

    body: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None

    @property
    def vocab_size(self) -> int:
        weight = getattr(self.head, "weight", None)
        return int(weight.shape[0]) if weight is not None else int(getattr(self.head, "out_features", 0))


def split_head(model: torch.nn.Module) -> Head | None:
    """The body, head and soft-cap of a plain causal LM, or None when the logits are not a plain
    (soft-capped) head of the final hidden states (scaled logits, multimodal wrappers)."""
    model = base_model(model)
    cfg = model.config
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in ("logit_scale", "logits_scaling", "output_multiplier_scale")):
        return None
    body, head = getattr(model, "model", None), model.get_output_embeddings()
    if body is None or head is None or type(model).__name__.endswith("ForConditionalGeneration"):
        return None
    return Head(body, head, getattr(cfg, "final_logit_softcapping", None))


def numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)
