"""`lingreg train`, `forget`: further pre-training with a frozen region, and the forgetting experiment."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args

#: Options a preset may set: their flags default to None, so that one given explicitly wins (`_args.resolve_preset`).
PRESETTABLE = ("lr", "warmup", "schedule", "weight_decay", "train_scope", "seq_len", "unit", "betas", "decay", "freeze_norms", "mixed_bf16")


def _defaults(command: str) -> dict[str, Any]:
    """The training options' defaults for `command`: TrainConfig's, but `lingreg forget` runs shorter on shorter
    blocks and trains the transformer blocks."""
    from lm_eval_lingreg.training import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    if command == "forget":
        from lm_eval_lingreg.anatomy import DEFAULT_SCOPE

        defaults |= {"steps": 80, "seq_len": 64, "train_scope": DEFAULT_SCOPE, "eval_every": 20}
    return defaults


def _train_config(args: argparse.Namespace, lang: str):
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.training import TrainConfig, paper_preset

    defaults = _defaults(args.command)
    _args.resolve_preset(args, {k: defaults[k] for k in PRESETTABLE}, paper_preset(args.steps) if args.preset == "paper" else {})
    return TrainConfig(
        lang=lang,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_langs=parse_languages(args.watch_langs),
        eval_blocks=args.eval_blocks,
        **{k: getattr(args, k) for k in PRESETTABLE},
    )


def cmd_train(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.training import further_pretrain, parse_lora, resolve_freeze, save_checkpoint

    lang = parse_languages(args.lang)[0]
    cfg = _train_config(args, lang)
    lora = parse_lora(args.lora) if args.lora else None
    out = _args.check_output(args, args.out, directory=True, overwrite=args.overwrite)
    model, tokenizer = _args.load(args)
    region = resolve_freeze(args.freeze, model, cfg.seed)
    model, record = further_pretrain(model, tokenizer, cfg, freeze=region, lora=lora)
    record |= {"pretrained": args.pretrained or f"{DEFAULT_MODEL} (bundled)", "freeze": args.freeze}
    save_checkpoint(model, tokenizer, out, record, overwrite=args.overwrite)
    first, last = record["curves"][0]["perplexity"], record["curves"][-1]["perplexity"]
    print("held-out token perplexity, before -> after: " + ", ".join(f"{k} {first[k]:.3g} -> {last[k]:.3g}" for k in last))
    print(f"{record['tokens']} tokens in {record['seconds']:.0f} s ({record['tokens_per_second']:.0f} tokens/s)")
    print(out.resolve())
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.experiments.forgetting import forget, table
    from lm_eval_lingreg.languages import LANGUAGES, parse_languages
    from lm_eval_lingreg.outputs import atomic_path
    from lm_eval_lingreg.plots import plot_curves
    from lm_eval_lingreg.training import condition_label, resolve_freeze

    lang = parse_languages(args.lang)[0]
    cfg = _train_config(args, lang)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    labels = [condition_label(c) for c in conditions]
    if not conditions or len(set(labels)) != len(labels):
        raise UsageError(f"--conditions {args.conditions!r}: give distinct conditions, e.g. none,core:0.05,random:0.05")
    eval_langs = parse_languages(args.eval_langs)
    out = _args.check_output(args, args.output, directory=True, overwrite=args.overwrite, owned_by="lingreg forget")
    lm = _args.wrapper(args)
    for c in conditions:  # every condition checked before any training
        resolve_freeze(c, lm.model, cfg.seed)
    with atomic_path(out, directory=True, overwrite=args.overwrite, owned_by="lingreg forget") as tmp:
        summary = forget(lm, cfg, conditions, eval_langs, args.eval_limit, tmp, save_checkpoints=args.save_checkpoints)
        plot_curves(summary, tmp / "curves.png")
    print(
        f"\n{cfg.steps} steps on {LANGUAGES[lang].name}; token perplexity after / before, on {len(eval_langs)} languages x {args.eval_limit or 'all'} UDHR documents"
    )
    print(table(summary))
    print(f"results under {out}/ (summary.json, curves.png, <condition>/results.json, <condition>/train.json); {summary['seconds'] / 60:.1f} min")
    return 0


def _betas(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.9,0.95, got {text!r}")
    b1, b2 = (_args.nonneg_float(x) for x in parts)
    if not (b1 < 1 and b2 < 1):
        raise argparse.ArgumentTypeError(f"betas must be below 1, got {text!r}")
    return b1, b2


def _shown(value: Any) -> str:
    """A default as the help shows it: 5e-5, 0.9,0.999, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}".replace("e-0", "e-")
    if isinstance(value, (tuple, list)):
        return ",".join(map(_shown, value))
    return str(value)


def _training_options(s: argparse.ArgumentParser, command: str) -> None:
    """The options that make `command`'s TrainConfig: defaults and help from the dataclass's fields. Options the
    preset may set default to None (PRESETTABLE)."""
    from lm_eval_lingreg.training import TrainConfig

    s.add_argument(
        "--preset",
        choices=["paper"],
        default=None,
        help="the official recipe: AdamW betas 0.9,0.95, weight decay 0.001 on every parameter, warmup 100 (a tenth of runs under 1,000 steps), "
        "cosine, every parameter trained, bf16 autocast, documents of at most 512 tokens, norm weights never frozen; explicit flags win",
    )
    settings = {  # TrainConfig field -> its option's parsing, in the order --help lists them
        "data": {},
        "steps": {"type": _args.positive_int},
        "lr": {"type": _args.positive_float},
        "batch_size": {"type": _args.positive_int},
        "unit": {"choices": ["blocks", "documents"]},
        "seq_len": {"type": _args.positive_int},
        "grad_accum": {"type": _args.positive_int},
        "warmup": {"type": _args.nonneg_int},
        "schedule": {"choices": ["cosine", "linear", "constant"]},
        "weight_decay": {"type": _args.nonneg_float},
        "decay": {"choices": ["matrices", "all"]},
        "betas": {"type": _betas},
        "freeze_norms": {"action": argparse.BooleanOptionalAction},
        "mixed_bf16": {"action": argparse.BooleanOptionalAction},
        "seed": {"type": _args.seed},
        "train_scope": {},
        "eval_every": {"type": _args.positive_int},
        "eval_langs": {"dest": "watch_langs"},  # a comma-separated list on the command line
        "eval_blocks": {"type": _args.positive_int},
    }
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = _defaults(command) | {"eval_langs": ",".join(fields["eval_langs"].default_factory())}
    for name, kwargs in settings.items():
        dest = kwargs.pop("dest", name)
        default = defaults[name]
        shown = "" if default is None else f" (default {repr(default) if name == 'train_scope' else _shown(default)})"
        parsed = None if name in PRESETTABLE else default
        s.add_argument("--" + dest.replace("_", "-"), dest=dest, default=parsed, help=fields[name].metadata["help"] + shown, **kwargs)
    _args.model_options(s)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="further pre-train on one language, optionally with a region frozen")
    s.add_argument("--lang", required=True, help="language to train on (ISO code)")
    s.add_argument("--freeze", default=None, help="region kept frozen: core:0.05, bottom:0.05, random:0.05, a mask file or shipped name (default: none)")
    s.add_argument(
        "--lora",
        default=None,
        help="train a peft LoRA adapter instead: r=16,alpha=32,dropout=0.05,target=q_proj+v_proj; merged at the end, frozen entries re-imposed",
    )
    s.add_argument("--out", required=True, help="output checkpoint directory (standard HF, safetensors)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    _training_options(s, "train")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("forget", help="the catastrophic-forgetting experiment: train under each freezing condition, harness before and after")
    s.add_argument("--lang", default="ko", help="language to train on (default ko)")
    s.add_argument(
        "--conditions",
        default="none,core:0.05,random:0.05",
        help="comma-separated: none, core:R, bottom:R, random:R or mask files (default none,core:0.05,random:0.05)",
    )
    s.add_argument("--eval-langs", default="all", help="harness languages before and after (default all 30)")
    s.add_argument("--eval-limit", type=_args.limit, default=2, help="UDHR documents per language for the harness (default 2, or 'all')")
    s.add_argument("--save-checkpoints", action="store_true", help="also write each trained model under <output>/<condition>/checkpoint")
    s.add_argument(
        "-o", "--output", type=Path, default=Path("lingreg-forget"), help="output directory (default ./lingreg-forget; a rerun replaces its own earlier output)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder that an earlier forget did not write")
    _training_options(s, "forget")
    s.set_defaults(func=cmd_forget)
