"""`lingreg train`, `forget`: further pre-training with a frozen region, and the forgetting experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args

#: Options a preset may set: flags given explicitly win over the preset, the preset over the defaults.
PRESETTABLE = ("lr", "warmup", "schedule", "weight_decay", "train_scope", "seq_len", "unit", "betas", "decay", "freeze_norms", "mixed_bf16")


def _train_config(args: argparse.Namespace, lang: str):
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.training import TrainConfig, paper_preset

    preset = paper_preset(args.steps) if args.preset == "paper" else {}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else preset.get(k, args.defaults[k]) for k in PRESETTABLE}
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
        **chosen,
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


def _training_options(s: argparse.ArgumentParser, steps: int, seq_len: int, scope: str, eval_every: int) -> None:
    defaults = {
        "lr": 5e-5,
        "warmup": 10,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "train_scope": scope,
        "seq_len": seq_len,
        "unit": "blocks",
        "betas": (0.9, 0.999),
        "decay": "matrices",
        "freeze_norms": True,
        "mixed_bf16": False,
    }
    s.set_defaults(defaults=defaults)
    s.add_argument(
        "--preset",
        choices=["paper"],
        default=None,
        help="the official recipe: AdamW betas 0.9,0.95, weight decay 0.001 on every parameter, warmup 100 (a tenth of runs under 1,000 steps), "
        "cosine, every parameter trained, bf16 autocast, documents of at most 512 tokens, norm weights never frozen; explicit flags win",
    )
    s.add_argument(
        "--data", default=None, help="training text: 'eld' (default, offline sentences), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>]"
    )
    s.add_argument("--steps", type=_args.positive_int, default=steps, help=f"optimizer steps (default {steps})")
    s.add_argument("--lr", type=_args.positive_float, default=None, help="peak learning rate (default 5e-5, as in the paper)")
    s.add_argument("--batch-size", type=_args.positive_int, default=4, help="samples per micro-batch (default 4)")
    s.add_argument(
        "--unit",
        choices=["blocks", "documents"],
        default=None,
        help="blocks: packed --seq-len blocks (default); documents: BOS + text + EOS, longer ones dropped",
    )
    s.add_argument("--seq-len", type=_args.positive_int, default=None, help=f"tokens per packed block, or the longest document kept (default {seq_len})")
    s.add_argument("--grad-accum", type=_args.positive_int, default=1, help="micro-batches per optimizer step (default 1)")
    s.add_argument("--warmup", type=_args.nonneg_int, default=None, help="linear warmup steps (default 10)")
    s.add_argument("--schedule", choices=["cosine", "linear", "constant"], default=None, help="learning-rate schedule after warmup (default cosine)")
    s.add_argument("--weight-decay", type=_args.nonneg_float, default=None, help="AdamW weight decay (default 0.01)")
    s.add_argument(
        "--decay",
        choices=["matrices", "all"],
        default=None,
        help="which parameters weight decay applies to (default matrices; all: every one but biases, the official grouping)",
    )
    s.add_argument("--betas", type=_betas, default=None, help="AdamW betas (default 0.9,0.999; the official code: 0.9,0.95)")
    s.add_argument(
        "--freeze-norms",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze the region's entries in norm weights too (default yes; the official code never froze norms: --no-freeze-norms)",
    )
    s.add_argument(
        "--mixed-bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast forward over float32 weights, as the official bf16 run (default no; slow on CPUs without native bf16)",
    )
    s.add_argument("--seed", type=_args.seed, default=0)
    s.add_argument("--train-scope", default=None, help=f"'all' or a regex on parameter names to train (default {scope!r})")
    s.add_argument("--eval-every", type=_args.positive_int, default=eval_every, help=f"held-out evaluation every N steps (default {eval_every})")
    s.add_argument("--watch-langs", default="en,zh,ar", help="languages whose held-out perplexity is tracked besides the target (default en,zh,ar)")
    s.add_argument("--eval-blocks", type=_args.positive_int, default=8, help="held-out blocks per watched language (default 8)")
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
    _training_options(s, 300, 128, "all", 25)
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
    _training_options(s, 80, 64, r"layers\.\d+\.", 20)
    s.set_defaults(func=cmd_forget)
