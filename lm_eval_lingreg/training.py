"""Further pre-training on one language, optionally with a frozen region or a LoRA adapter.

`train()` is a plain causal-LM loop: packed blocks (or whole documents) of one language's text,
AdamW, warmup then a cosine (or linear/constant) schedule, gradient accumulation, gradient
clipping, a progress bar with loss and tokens/s, and a held-out perplexity curve on the target
language and a few others. A frozen region is restored after every optimizer step
(`freeze.FrozenRegion`). `PAPER_PRESET` / `paper_preset()` is the official recipe.
`further_pretrain()` adds the LoRA route (adapter trained, merged, frozen entries re-imposed).
The forgetting experiment built on it lives in `experiments.forgetting`.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg import __version__
from lm_eval_lingreg.anatomy import compile_scope, named_parameters
from lm_eval_lingreg.corpora import read_texts
from lm_eval_lingreg.errors import CorpusError, RegionError, TrainingError, UsageError
from lm_eval_lingreg.freeze import FrozenRegion, merge_and_reimpose, without_norms
from lm_eval_lingreg.lm_loss import IGNORE, backward_weighted_nll, next_token_labels, pad_batch
from lm_eval_lingreg.outputs import save_model
from lm_eval_lingreg.regions import Region
from lm_eval_lingreg.scan import ProbeSet, probe_perplexity

__all__ = [
    "TrainConfig",
    "PAPER_PRESET",
    "paper_preset",
    "pack",
    "documents",
    "split_blocks",
    "watch_probe",
    "loss_backward",
    "OFFICIAL_NO_DECAY",
    "train",
    "parse_lora",
    "further_pretrain",
    "save_checkpoint",
    "resolve_freeze",
    "condition_label",
]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded with its results)."""

    lang: str = field(metadata={"help": "the language trained on (ISO code)"})
    data: str | None = field(
        default=None,
        metadata={"help": "training text: 'eld' (default, offline sentences), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>]"},
    )
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate, as in the paper"})
    batch_size: int = field(default=4, metadata={"help": "samples per micro-batch"})
    seq_len: int = field(default=128, metadata={"help": "tokens per packed block, or the longest document kept"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup: int = field(default=10, metadata={"help": "linear warmup steps"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule after warmup: cosine, linear or constant"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients are clipped to this norm"})
    seed: int = field(default=0, metadata={"help": "random seed: data order, held-out split, random regions"})
    train_scope: str = field(default="all", metadata={"help": "'all' or a regex on parameter names to train"})
    eval_every: int = field(default=25, metadata={"help": "held-out evaluation every N steps"})
    eval_langs: Sequence[str] = field(
        default_factory=lambda: ["en", "zh", "ar"], metadata={"help": "languages whose held-out perplexity is tracked besides the target"}
    )
    eval_blocks: int = field(default=8, metadata={"help": "held-out blocks per watched language"})
    heldout: float = field(default=0.1, metadata={"help": "share of the target text kept for held-out evaluation"})
    unit: str = field(
        default="blocks",
        metadata={"help": "blocks: packed --seq-len blocks; documents: BOS + text + EOS, at most --seq-len tokens (longer ones dropped), padded"},
    )
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas; the official code: 0.9,0.95"})
    decay: str = field(
        default="matrices", metadata={"help": "which parameters weight decay applies to: matrices, or all: every one but biases, the official grouping"}
    )
    freeze_norms: bool = field(
        default=True, metadata={"help": "freeze the region's entries in norm weights too; the official code never froze norms: --no-freeze-norms"}
    )
    mixed_bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast forward over float32 weights, as the official bf16 run; slow on CPUs without native bf16"}
    )

    def __post_init__(self) -> None:
        problems = []
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1) (got {self.betas})")
        if self.unit not in ("blocks", "documents"):
            problems.append(f"unit must be blocks or documents (got {self.unit!r})")
        if self.decay not in ("matrices", "all"):
            problems.append(f"decay must be matrices or all (got {self.decay!r})")
        for k in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_blocks"):
            if int(getattr(self, k)) < 1:
                problems.append(f"{k} must be >= 1 (got {getattr(self, k)})")
        if self.seq_len < 2:
            problems.append(f"seq_len must be >= 2 (got {self.seq_len})")
        for k in ("lr", "weight_decay", "max_grad_norm", "heldout"):
            if not math.isfinite(getattr(self, k)):
                problems.append(f"{k} must be a finite number (got {getattr(self, k)})")
        if not 0 < self.lr <= 10:
            problems.append(f"lr must be a positive number up to 10 (got {self.lr})")
        if not 0 <= self.weight_decay <= 1:
            problems.append(f"weight_decay must be between 0 and 1 (got {self.weight_decay})")
        if not 0 <= self.seed < 2**63:
            problems.append(f"seed must be a whole number from 0 to 2**63 - 1 (got {self.seed})")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule must be cosine, linear or constant (got {self.schedule!r})")
        if not 0 < self.heldout < 1:
            problems.append(f"heldout must be between 0 and 1 (got {self.heldout})")
        if self.warmup < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            problems.append("warmup, weight_decay and max_grad_norm must be >= 0")
        if self.train_scope != "all":
            compile_scope(self.train_scope)
        if problems:
            raise TrainingError("bad training configuration: " + "; ".join(problems))


#: The official further pre-training recipe (PAPER.md), as TrainConfig fields; `paper_preset(steps)` scales the warmup.
PAPER_PRESET: dict[str, Any] = {
    "lr": 5e-5,
    "betas": (0.9, 0.95),
    "weight_decay": 0.001,
    "decay": "all",
    "warmup": 100,
    "schedule": "cosine",
    "train_scope": "all",
    "unit": "documents",
    "seq_len": 512,
    "freeze_norms": False,
    "mixed_bf16": True,
}


def paper_preset(steps: int) -> dict[str, Any]:
    """The official recipe for a run of `steps` optimizer steps: its 100 warmup steps, or a tenth of
    the run when that is shorter than 1,000 steps (100 warmup steps would be most of a short run)."""
    return {**PAPER_PRESET, "warmup": min(PAPER_PRESET["warmup"], max(1, steps // 10))}


def pack(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Concatenate texts (each ended by EOS) and cut into blocks of `seq_len` tokens, each starting with BOS."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = seq_len - len(bos)
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + eos)
    return [bos + stream[k * body : (k + 1) * body] for k in range(len(stream) // body)]


def documents(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """BOS + text + EOS for each text, dropping those longer than `seq_len` tokens (never truncated or packed)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    docs = (bos + tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in texts)
    return [d for d in docs if 2 <= len(d) <= seq_len]


def split_blocks(
    tokenizer: Any, lang: str, data: str | None, seq_len: int, heldout: float, seed: int, unit: str = "blocks"
) -> tuple[list[list[int]], list[list[int]], str]:
    """Train and held-out samples (packed blocks or whole documents) of one language, split by text (never within a text)."""
    texts, source = read_texts(lang, data)
    order = list(range(len(texts)))
    random.Random(f"{seed}:{lang}:split").shuffle(order)
    n_held = max(1, int(len(texts) * heldout))
    cut = documents if unit == "documents" else pack
    held = cut(tokenizer, [texts[i] for i in order[:n_held]], seq_len)
    train_blocks = cut(tokenizer, [texts[i] for i in order[n_held:]], seq_len)
    if not train_blocks or not held:
        what, fix = (f"documents of at most {seq_len} tokens", "raise --seq-len") if unit == "documents" else (f"blocks of {seq_len} tokens", "lower --seq-len")
        raise CorpusError(f"{source}: too little {lang} text for {what} (train {len(train_blocks)}, held-out {len(held)}); {fix} or give more text")
    return train_blocks, held, source


def watch_probe(tokenizer: Any, cfg: TrainConfig, held: Sequence[list[int]]) -> ProbeSet:
    """Held-out blocks of the target language and of `cfg.eval_langs` (from the training source if it
    has the language, else the offline default)."""
    rows = [(cfg.lang, b) for b in held[: cfg.eval_blocks]]
    for iso in cfg.eval_langs:
        if iso == cfg.lang:
            continue
        try:
            held_iso = split_blocks(tokenizer, iso, cfg.data, cfg.seq_len, cfg.heldout, cfg.seed, cfg.unit)[1]
        except CorpusError:
            held_iso = split_blocks(tokenizer, iso, None, cfg.seq_len, cfg.heldout, cfg.seed, cfg.unit)[1]
        rows += [(iso, b) for b in held_iso[: cfg.eval_blocks]]
    return ProbeSet.from_ids(rows)


def loss_backward(model: torch.nn.Module, ids: torch.Tensor, scale: float, attn: torch.Tensor | None = None) -> float:
    """Mean next-token loss over all tokens of a (right-padded) batch, the Hugging Face loss; backward of
    `scale * loss` (chunked head and loss)."""
    attn = torch.ones_like(ids) if attn is None else attn
    labels = next_token_labels(ids, attn)
    keep = labels != IGNORE
    weights = keep.to(torch.float32) * (scale / keep.sum())
    return float(backward_weighted_nll(model, ids, attn, labels, weights)) / scale


def _trainable(model: torch.nn.Module, scope: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Set requires_grad by `scope` (full fine-tuning; with adapters peft decides) and return what trains, by name."""
    if not any(".lora_" in n for n, _ in model.named_parameters()):
        pattern = None if scope == "all" else compile_scope(scope)
        for n, p in named_parameters(model).items():
            p.requires_grad_(pattern is None or bool(pattern.search(n)))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise RegionError(f"no parameter matches train_scope {scope!r}")
    return trainable


#: Names the official optimizer grouping keeps out of weight decay (LLaMA-2 and Gemma-3 have no such parameter).
OFFICIAL_NO_DECAY = ("bias", "LayerNorm.weight")


def _decays(name: str, p: torch.nn.Parameter, decay: str) -> bool:
    """`matrices`: weight decay on tensors of 2 or more dimensions; `all`: the official grouping, every parameter
    except names containing `bias` or `LayerNorm.weight`."""
    return p.dim() >= 2 if decay == "matrices" else not any(k in name for k in OFFICIAL_NO_DECAY)


def _optimizer(cfg: TrainConfig, trainable: Sequence[tuple[str, torch.nn.Parameter]]):
    from transformers import get_scheduler

    decay = [p for n, p in trainable if _decays(n, p, cfg.decay)]
    no_decay = [p for n, p in trainable if not _decays(n, p, cfg.decay)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)
    schedule = cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup"
    return optimizer, get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)


def _batches(cfg: TrainConfig, blocks: Sequence[list[int]], device: torch.device, pad_id: int = 0):
    """Micro-batches (ids, attention mask) of `cfg.batch_size` samples, epochs over them in a seeded shuffled order."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    while True:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(blocks), generator=gen).tolist()
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        ids, attn = pad_batch([blocks[i] for i in batch], pad_id)
        yield ids.to(device), attn.to(device)


def train(model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, freeze: Region | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `model` in place; return the run's record (config, curves, timing, frozen entries)."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    train_blocks, held, source = split_blocks(tokenizer, cfg.lang, cfg.data, cfg.seq_len, cfg.heldout, cfg.seed, cfg.unit)
    probe = watch_probe(tokenizer, cfg, held)
    if freeze is not None and not cfg.freeze_norms:
        freeze = without_norms(freeze)
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    named = _trainable(model, cfg.train_scope)
    trainable = [p for _, p in named]
    optimizer, scheduler = _optimizer(cfg, named)
    frozen = FrozenRegion(model, freeze).attach(optimizer) if freeze is not None else None
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_bf16)

    def evaluate(step: int, **extra: Any) -> dict[str, Any]:
        model.eval()
        ppl = probe_perplexity(model, probe)
        model.train()
        return {"step": step, "perplexity": ppl, **extra}

    curves, tokens, t0 = [evaluate(0)], 0, time.perf_counter()
    batches = _batches(cfg, train_blocks, device, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.lang}", unit="step", disable=not progress)
    try:
        for step in bar:
            loss = 0.0
            for _ in range(cfg.grad_accum):
                ids, attn = next(batches)
                with autocast:
                    loss += loss_backward(model, ids, 1.0 / cfg.grad_accum, attn) / cfg.grad_accum
                tokens += int(attn.sum())
            if frozen is not None:
                frozen.zero_grads()  # frozen entries do not count towards the clipped norm
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()  # the frozen region is restored by the step hook
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss):
                raise TrainingError(f"training loss became {loss} at step {step + 1}; lower --lr")
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                curves.append(evaluate(step + 1, train_loss=loss))
                log.info("step %d: loss %.3f; held-out ppl %s", step + 1, loss, ", ".join(f"{k} {v:.3g}" for k, v in curves[-1]["perplexity"].items()))
    finally:
        model.eval()
        if frozen is not None:
            frozen.detach()
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
    return _record(cfg, source, len(train_blocks), tokens, time.perf_counter() - t0, trainable, curves, frozen, freeze)


def _record(
    cfg: TrainConfig,
    source: str,
    n_blocks: int,
    tokens: int,
    seconds: float,
    trainable: Sequence[torch.nn.Parameter],
    curves: list[dict[str, Any]],
    frozen: FrozenRegion | None,
    freeze: Region | None,
) -> dict[str, Any]:
    """The run's record; a run whose weights or held-out perplexity are no longer finite, or whose frozen entries moved, is an error."""
    final = curves[-1]["perplexity"]
    if not all(math.isfinite(v) for v in final.values()) or not all(bool(torch.isfinite(p).all()) for p in trainable):
        raise TrainingError(f"training diverged: the weights or the held-out perplexity ({final}) are no longer finite; lower --lr or --weight-decay")
    record = {
        "config": asdict(cfg) | {"eval_langs": list(cfg.eval_langs)},
        "source": source,
        "train_blocks": n_blocks,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "curves": curves,
        "lm_eval_lingreg": __version__,
    }
    if frozen is not None:
        record["frozen"] = {"entries": frozen.num_frozen, "bytes": frozen.nbytes, "exact": frozen.verify(), "region": freeze.metadata}
        if not record["frozen"]["exact"]:
            raise TrainingError("frozen entries changed during training")
    return record


def parse_lora(text: str) -> dict[str, Any]:
    """`r=16,alpha=32,dropout=0.05,target=q_proj+v_proj` -> peft LoraConfig keyword arguments."""
    out: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
    keys = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target": "target_modules"}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in keys:
            raise UsageError(f"--lora {text!r}: expected comma-separated r=16,alpha=32,dropout=0.05,target=q_proj+v_proj (got {part!r})")
        key = keys[k.strip()]
        try:
            out[key] = int(v) if key == "r" else float(v) if key in ("lora_alpha", "lora_dropout") else (v if v == "all-linear" else v.split("+"))
        except ValueError as exc:
            raise UsageError(f"--lora {k}={v!r} is not a number") from exc
    if out["r"] < 1 or not 0 <= out["lora_dropout"] < 1 or not math.isfinite(out["lora_alpha"]):
        raise UsageError(f"--lora {text!r}: r must be >= 1, dropout in [0, 1) and alpha finite")
    return out


def further_pretrain(
    model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, freeze: Region | None = None, lora: Mapping[str, Any] | None = None, progress: bool = True
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the model itself, or a LoRA adapter merged at the end; a frozen region keeps its exact values either way.

    With an adapter the base weights do not train, but the adapter's update still changes the
    effective weights: the adapter is merged, then the frozen entries are written back.
    Returns the (plain, merged) model and the run's record.
    """
    if freeze is not None and not cfg.freeze_norms:
        freeze = without_norms(freeze)
    if not lora:
        return model, train(model, tokenizer, cfg, freeze=freeze, progress=progress)
    from peft import LoraConfig, get_peft_model

    from lm_eval_lingreg.anatomy import hidden_size

    hidden = hidden_size(model) or 0
    if hidden and lora["r"] > hidden:
        raise UsageError(f"--lora r={lora['r']} is more than the model's hidden size {hidden}; a LoRA rank is small (8-64)")
    frozen = FrozenRegion(model, freeze) if freeze is not None else None
    try:
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    except (ValueError, TypeError) as e:
        raise UsageError(f"--lora {lora}: peft refused it: {' '.join(str(e).split())[:300]}") from e
    record = train(peft_model, tokenizer, cfg, progress=progress)
    merged = merge_and_reimpose(peft_model, frozen) if frozen else peft_model.merge_and_unload()
    record["lora"] = dict(lora)
    if frozen:
        record["frozen"] = {
            "entries": frozen.num_frozen,
            "exact": frozen.verify(),
            "region": freeze.metadata,
            "how": "adapters merged into the base weights, then the frozen entries written back",
        }
    return merged, record


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, out: str | Path, record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """A standard HF directory (safetensors), written atomically, with `lingreg_train.json`."""
    return save_model(model, tokenizer, out, {"lingreg_train.json": record}, overwrite=overwrite)


_FREEZE_RE = re.compile(r"(core|top|bottom|random):([0-9]*\.?[0-9]+)")


def resolve_freeze(spec: str | None, model: torch.nn.Module, seed: int = 0) -> Region | None:
    """`none`, `core:0.05` / `bottom:0.05` (shipped masks of the bundled model), `random:0.05`
    (seeded, any model, same size per tensor as a core region of that ratio), or a mask file/name."""
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import load_region, shipped_masks
    from lm_eval_lingreg.regions import validate
    from lm_eval_lingreg.selection import select_random
    from lm_eval_lingreg.strict import shown

    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    m = _FREEZE_RE.fullmatch(spec.strip())
    if m:
        kind, ratio = m.group(1), float(m.group(2))
        if not 0 < ratio < 1:
            raise RegionError(f"--freeze {shown(spec.strip())}: the ratio must be between 0 and 1 (e.g. core:0.05)")
        if kind == "random":
            return select_random(scope_shapes(model), ratio, seed=seed, metadata={"kind": "random", "ratio": ratio, "seed": seed})
        name = f"core-{'bottom' if kind == 'bottom' else 'top'}-{ratio * 100:g}"
        if name not in shipped_masks():
            raise RegionError(
                f"--freeze {shown(spec.strip())}: no shipped mask {name!r} (shipped: {', '.join(sorted(n for n in shipped_masks() if n.startswith('core-')))}); "
                f"make one with `lingreg score` and `lingreg extract core --ratio {ratio} --which {'bottom' if kind == 'bottom' else 'top'} --out core.safetensors`, then pass --freeze core.safetensors"
            )
        spec = name
    region = load_region(spec)
    validate(region, model)
    return region


def condition_label(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip()).strip("-") or "none"
