"""Further pre-training on one language, optionally with a frozen region, and the forgetting experiment.

`train()` is a plain causal-LM loop: packed blocks of one language's text, AdamW, warmup then a
cosine (or linear/constant) schedule, gradient accumulation, gradient clipping, a progress bar
with loss and tokens/s, and a held-out perplexity curve on the target language and a few others.
A frozen region is restored after every optimizer step (`freeze.FrozenRegion`).

`forget()` runs the paper's experiment: the same data, steps and seed under each freezing
condition, with the 30-language harness evaluation before and after.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg import __version__
from lm_eval_lingreg._atomic import atomic_path, save_figure, write_json
from lm_eval_lingreg.corpora import CorpusError, read_texts
from lm_eval_lingreg.freeze import FrozenRegion
from lm_eval_lingreg.importance import _backward_weighted_nll
from lm_eval_lingreg.regions import Region, RegionError, named_parameters
from lm_eval_lingreg.scan import ProbeSet, geometric_mean, probe_perplexity


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded with its results)."""

    lang: str
    data: str | None = None  # None: eld sentences (offline); a dir/file; or datasets:<path>[:<config>]
    steps: int = 300
    lr: float = 5e-5
    batch_size: int = 4
    seq_len: int = 128
    grad_accum: int = 1
    warmup: int = 10
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    train_scope: str = "all"  # "all" or a regex on parameter names
    eval_every: int = 25
    eval_langs: Sequence[str] = field(default_factory=lambda: ["en", "zh", "ar"])
    eval_blocks: int = 8
    heldout: float = 0.1  # share of the target text kept for held-out evaluation

    def __post_init__(self) -> None:
        problems = []
        for k in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_blocks"):
            if int(getattr(self, k)) < 1:
                problems.append(f"{k} must be >= 1 (got {getattr(self, k)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number (got {self.lr})")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule must be cosine, linear or constant (got {self.schedule!r})")
        if not 0 < self.heldout < 1:
            problems.append(f"heldout must be between 0 and 1 (got {self.heldout})")
        if self.warmup < 0 or self.weight_decay < 0:
            problems.append("warmup and weight_decay must be >= 0")
        if problems:
            raise ValueError("bad training configuration: " + "; ".join(problems))


def pack(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Concatenate texts (each ended by EOS) and cut into blocks of `seq_len` tokens, each starting with BOS."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = seq_len - len(bos)
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + eos)
    return [bos + stream[k * body : (k + 1) * body] for k in range(len(stream) // body)]


def split_blocks(tokenizer: Any, lang: str, data: str | None, seq_len: int, heldout: float, seed: int) -> tuple[list[list[int]], list[list[int]], str]:
    """Train and held-out blocks of one language, split by text (never within a text)."""
    texts, source = read_texts(lang, data)
    order = list(range(len(texts)))
    random.Random(f"{seed}:{lang}:split").shuffle(order)
    n_held = max(1, int(len(texts) * heldout))
    held = pack(tokenizer, [texts[i] for i in order[:n_held]], seq_len)
    train = pack(tokenizer, [texts[i] for i in order[n_held:]], seq_len)
    if not train or not held:
        raise CorpusError(f"{source}: too little {lang} text for blocks of {seq_len} tokens (train {len(train)}, held-out {len(held)}); lower --seq-len or give more text")
    return train, held, source


def _probe_from_blocks(blocks: Mapping[str, Sequence[list[int]]]) -> ProbeSet:
    rows = [(lang, b) for lang, bs in blocks.items() for b in bs]
    width = max(len(b) for _, b in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (_, b) in enumerate(rows):
        ids[i, : len(b)] = torch.tensor(b)
        attn[i, : len(b)] = 1
    return ProbeSet(ids, attn, ids.masked_fill(attn == 0, -100), [lang for lang, _ in rows])


def _loss_backward(model: torch.nn.Module, ids: torch.Tensor, scale: float, chunk: int = 128) -> float:
    """Mean next-token loss of a batch of full blocks; backward of `scale * loss`.

    Uses the scorer's chunked head and loss, so the [batch, len, vocab] logits never exist at
    once (262K vocabularies make them GBs).
    """
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    n = ids.shape[0] * (ids.shape[1] - 1)
    weights = torch.full(ids.shape, scale / n, dtype=torch.float32, device=ids.device)
    return _backward_weighted_nll(model, ids, torch.ones_like(ids), labels, weights, chunk) / scale


def _schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    from transformers import get_scheduler

    return get_scheduler(cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: TrainConfig,
    freeze: Region | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train `model` in place; return the run's record (config, curves, timing, frozen entries)."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    train_blocks, held, source = split_blocks(tokenizer, cfg.lang, cfg.data, cfg.seq_len, cfg.heldout, cfg.seed)
    watch = {cfg.lang: held[: cfg.eval_blocks]}
    for iso in cfg.eval_langs:
        if iso != cfg.lang:
            try:  # the training source if it has this language, else the offline default
                held_iso = split_blocks(tokenizer, iso, cfg.data, cfg.seq_len, cfg.heldout, cfg.seed)[1]
            except (CorpusError, FileNotFoundError):
                held_iso = split_blocks(tokenizer, iso, None, cfg.seq_len, cfg.heldout, cfg.seed)[1]
            watch[iso] = held_iso[: cfg.eval_blocks]
    probe = _probe_from_blocks(watch)

    params = named_parameters(model)
    pattern = None if cfg.train_scope == "all" else re.compile(cfg.train_scope)
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    if not any(".lora_" in n for n in was):  # full fine-tuning: choose by scope; with adapters peft decides
        for n, p in params.items():
            p.requires_grad_(pattern is None or bool(pattern.search(n)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise RegionError(f"no parameter matches train_scope {cfg.train_scope!r}")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = _schedule(cfg, optimizer)
    frozen = FrozenRegion(model, freeze).attach(optimizer) if freeze is not None else None

    def evaluate(step: int) -> dict[str, Any]:
        model.eval()
        ppl = probe_perplexity(model, probe)
        model.train()
        return {"step": step, "perplexity": ppl}

    curves = [evaluate(0)]
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    tokens = 0
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.lang}", unit="step", disable=not progress)
    try:
        for step in bar:
            loss = 0.0
            for _ in range(cfg.grad_accum):
                if len(order) < cfg.batch_size:  # epochs over the shuffled blocks
                    order += torch.randperm(len(train_blocks), generator=gen).tolist()
                batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
                ids = torch.tensor([train_blocks[i] for i in batch], device=next(model.parameters()).device)
                loss += _loss_backward(model, ids, 1.0 / cfg.grad_accum) / cfg.grad_accum
                tokens += ids.numel()
            if frozen is not None:
                frozen.zero_grads()  # frozen entries do not count towards the clipped norm
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()  # the frozen region is restored by the step hook
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step + 1}; lower --lr")
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                curves.append(evaluate(step + 1) | {"train_loss": loss})
                if not progress:
                    log(f"step {step + 1}: loss {loss:.3f}; held-out ppl " + ", ".join(f"{k} {v:.3g}" for k, v in curves[-1]["perplexity"].items()))
    finally:
        model.eval()
        if frozen is not None:
            frozen.detach()
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
    seconds = time.perf_counter() - t0
    record = {
        "config": asdict(cfg) | {"eval_langs": list(cfg.eval_langs)},
        "source": source,
        "train_blocks": len(train_blocks),
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
            raise RuntimeError("frozen entries changed during training")
    return record


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, out: str | Path, record: Mapping[str, Any]) -> Path:
    """A standard HF directory (safetensors), written atomically, with `lingreg_train.json`."""
    out = Path(out)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lingreg_train.json").write_text(json.dumps(record, indent=1, default=str, ensure_ascii=False))
    return out


# the forgetting experiment ------------------------------------------------------------------


def summarize_forgetting(before: Mapping[str, float], after: Mapping[str, Mapping[str, float]], target: str) -> dict[str, Any]:
    """Per condition: target-language ratio (gain < 1) and the other languages' ratios (forgetting > 1)."""
    out = {}
    for cond, ppl in after.items():
        ratios = {iso: ppl[iso] / before[iso] for iso in before if iso in ppl}
        others = [v for iso, v in ratios.items() if iso != target]
        out[cond] = {
            "target_ratio": ratios.get(target, math.nan),
            "others_geomean_ratio": geometric_mean(others),
            "others_max_ratio": max(others) if others else math.nan,
            "others_worst": max((iso for iso in ratios if iso != target), key=lambda i: ratios[i], default=None),
            "ratios": ratios,
        }
    return out


_FREEZE_RE = re.compile(r"(core|top|bottom|random):([0-9]*\.?[0-9]+)")


def resolve_freeze(spec: str | None, model: torch.nn.Module, seed: int = 0) -> Region | None:
    """`none`, `core:0.05` / `bottom:0.05` (shipped masks of the bundled model), `random:0.05`
    (seeded, any model, same size per tensor as a core region of that ratio), or a mask file/name."""
    from lm_eval_lingreg.region_io import load_region, shipped_masks
    from lm_eval_lingreg.regions import scope_shapes, validate
    from lm_eval_lingreg.selection import select_random

    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    m = _FREEZE_RE.fullmatch(spec.strip())
    if m:
        kind, ratio = m.group(1), float(m.group(2))
        if not 0 < ratio < 1:
            raise RegionError(f"--freeze {spec}: the ratio must be between 0 and 1 (e.g. core:0.05)")
        if kind == "random":
            return select_random(scope_shapes(model), ratio, seed=seed, metadata={"kind": "random", "ratio": ratio, "seed": seed})
        name = f"core-{'bottom' if kind == 'bottom' else 'top'}-{ratio * 100:g}"
        if name not in shipped_masks():
            raise RegionError(
                f"--freeze {spec}: no shipped mask {name!r} (shipped: {', '.join(sorted(n for n in shipped_masks() if n.startswith('core-')))}); "
                f"make one with `lingreg score` and `lingreg extract core --ratio {ratio} --which {'bottom' if kind == 'bottom' else 'top'} --out core.safetensors`, then pass --freeze core.safetensors"
            )
        spec = name
    region = load_region(spec)
    validate(region, model)
    return region


def condition_label(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip()).strip("-") or "none"


def forget(
    lm: Any,
    cfg: TrainConfig,
    conditions: Sequence[str],
    eval_langs: Sequence[str],
    eval_limit: int | None,
    out_dir: str | Path,
    save_checkpoints: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a copy of the same starting weights under each freezing condition; harness before and after.

    `lm` is a loaded lingreg HFLM wrapper (float32). Its weights are put back to the starting
    point before each condition and at the end.
    """
    from lm_eval_lingreg.evaluation import evaluate_conditions, per_language

    out_dir = Path(out_dir)
    model = lm.model
    regions = {condition_label(c): resolve_freeze(c, model, cfg.seed) for c in conditions}  # all checked before any training
    start = {n: p.detach().clone() for n, p in model.named_parameters()}  # tied weights once

    @torch.no_grad()
    def reset() -> None:
        for n, p in model.named_parameters():
            p.copy_(start[n])

    t0 = time.perf_counter()
    log(f"harness before training: {len(eval_langs)} languages, {eval_limit or 'all'} documents each")
    before = evaluate_conditions(lm, {"before": None}, eval_langs, limit=eval_limit, output_dir=out_dir)["before"]
    records, after = {}, {}
    try:
        for label, region in regions.items():
            reset()
            log(f"[{label}] training {cfg.steps} steps on {cfg.lang}" + (f", {region.num_selected} entries frozen" if region is not None else ""))
            rec = train(model, lm.tokenizer, cfg, freeze=region, log=log)
            rec["condition"] = label
            records[label] = rec
            lm._lingreg_info["training"] = {k: v for k, v in rec.items() if k != "curves"}
            try:
                res = evaluate_conditions(lm, {label: None}, eval_langs, limit=eval_limit, output_dir=out_dir)[label]
            finally:
                lm._lingreg_info.pop("training", None)
            after[label] = per_language(res, "token_perplexity")
            write_json(out_dir / label / "train.json", rec)
            if save_checkpoints:
                save_checkpoint(model, lm.tokenizer, out_dir / label / "checkpoint", rec)
    finally:
        reset()
    ppl_before = per_language(before, "token_perplexity")
    summary = {
        "target": cfg.lang,
        "config": asdict(cfg) | {"eval_langs": list(cfg.eval_langs)},
        "eval_limit": eval_limit,
        "conditions": list(regions),
        "before": ppl_before,
        "after": after,
        "forgetting": summarize_forgetting(ppl_before, after, cfg.lang),
        "curves": {k: r["curves"] for k, r in records.items()},
        "frozen": {k: r.get("frozen") for k, r in records.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": {k: r["seconds"] for k, r in records.items()},
        "lm_eval_lingreg": __version__,
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def plot_curves(summary: Mapping[str, Any], path: str | Path) -> None:
    """Held-out perplexity over training steps, one panel per watched language, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = summary["curves"]
    langs = list(next(iter(curves.values()))[0]["perplexity"])
    fig, axes = plt.subplots(1, len(langs), figsize=(3.6 * len(langs), 3.4), squeeze=False)
    for ax, iso in zip(axes[0], langs, strict=True):
        for cond, pts in curves.items():
            ax.plot([p["step"] for p in pts], [p["perplexity"][iso] for p in pts], marker="o", ms=3, label=cond)
        ax.set_yscale("log")
        ax.set_title(f"{iso}{' (trained)' if iso == summary['target'] else ''}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("held-out token perplexity")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
