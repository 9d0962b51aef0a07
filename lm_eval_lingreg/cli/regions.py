"""`lingreg score`, `extract`, `mask info|compare|convert`: finding regions and handling region files."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lm_eval_lingreg.cli import _args


def cmd_score(args: argparse.Namespace) -> int:
    import logging

    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.loading import init_distributed, load_model
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.scores import score_languages

    langs = parse_languages(args.langs)
    dist = init_distributed(args.backend, args.device)
    if dist.rank == 0:
        check_writable(args.out, into=True)
    else:
        logging.getLogger("lm_eval_lingreg").setLevel(logging.WARNING)
    model, tokenizer = load_model(args.pretrained, device=dist.device, dtype=args.dtype)
    score_languages(
        model,
        tokenizer,
        langs,
        args.out,
        args.samples,
        data=args.data,
        unit=args.unit,
        seq_len=args.seq_len,
        seed=args.seed,
        batch_size=args.batch_size,
        scope=args.scope,
        model_label=args.pretrained or "gemma-3-270m",
        max_logits_mb=args.max_logits_mb,
        overwrite=args.overwrite,
    )
    if dist.rank == 0:
        print(Path(args.out).resolve())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.outputs import check_not_input, check_writable
    from lm_eval_lingreg.region_io import format_for, save_region
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual

    fmt = format_for(args.out)
    check_writable(args.out, directory=fmt == "official", overwrite=args.overwrite)
    if args.kind == "monolingual" and not args.lang:
        raise UsageError("`lingreg extract monolingual` needs --lang (e.g. --lang ar)")
    langs = parse_languages(args.langs) if args.langs else None
    scores = ScoreSet(args.scores, langs or (None if args.kind == "core" and args.all_scored else list(CORE_LANGUAGES)))
    check_not_input(args.out, scores.files)
    meta = {**scores.provenance(), "lm_eval_lingreg": __version__, "command": "lingreg " + " ".join(sys.argv[1:])}
    if args.kind == "core":
        region = select_core(scores.get, scores.names, scores.langs, args.ratio, which=args.which, seed=args.seed, metadata=meta)
    else:
        region = select_monolingual(scores.get, scores.names, parse_languages(args.lang)[0], scores.langs, args.ratio, metadata=meta)
    save_region(region, args.out, fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
    print(f"wrote {args.out}: {region.metadata['kind']} region, {region.num_selected} entries ({region.density:.3%}) over {len(region.shapes)} tensors")
    return 0


def cmd_mask_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import summarize, totals_by

    region = load_region(args.mask)
    rows = summarize(region)
    if args.json:
        print(json.dumps({"metadata": region.metadata, "selected": region.num_selected, "entries": region.num_covered, "tensors": rows}, indent=1, default=str))
        return 0
    meta = {k: v for k, v in region.metadata.items() if k not in ("samples", "tokens", "calibration")}
    print(json.dumps(meta, indent=1, default=str))
    print(f"{region.num_selected} selected of {region.num_covered} entries ({region.density:.3%}) in {len(region.shapes)} tensors\n")
    for key in ("module", "layer"):
        table = [[k, s, f"{s / max(1, e):.3%}"] for k, (s, e) in totals_by(rows, key).items()]
        print(tabulate(table, headers=[key, "selected", "share"], tablefmt="github"))
        print()
    return 0


def cmd_mask_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import jaccard

    a, b = load_region(args.a), load_region(args.b)
    overall, per = jaccard(a, b)
    if args.json:
        print(json.dumps({"jaccard": overall, "per_tensor": per}, indent=1))
        return 0
    print(f"Jaccard overall: {overall:.4f}  ({a.num_selected} vs {b.num_selected} entries)")
    worst = sorted(per.items(), key=lambda kv: (math.isnan(kv[1]), kv[1]))
    print(tabulate([[n, f"{j:.4f}"] for n, j in worst[: args.top]], headers=["tensor (lowest first)", "Jaccard"], tablefmt="github"))
    return 0


def cmd_mask_convert(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.region_io import format_for, load_region, save_region

    fmt = format_for(args.dst, args.format)
    check_writable(args.dst, directory=fmt == "official", overwrite=args.overwrite)
    region = load_region(args.src)
    out = save_region(region, args.dst, fmt=fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
    print(f"wrote {out} ({region.num_selected} entries)")
    return 0


def _dense_option(s: argparse.ArgumentParser) -> None:
    from lm_eval_lingreg.region_io import MAX_DENSE_GB

    s.add_argument(
        "--max-dense-gb",
        type=_args.positive_float,
        default=MAX_DENSE_GB,
        help=f".pt and official outputs hold one byte per covered entry: refuse more than this many GB (default {MAX_DENSE_GB:g})",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.anatomy import DEFAULT_SCOPE
    from lm_eval_lingreg.lm_loss import DEFAULT_MAX_LOGITS_MB
    from lm_eval_lingreg.loading import BACKENDS

    s = sub.add_parser("score", help="per-language importance scores (theta * summed gradient); torchrun-able")
    s.add_argument("--langs", default="ar,es,ru,zh,ko,vi", help="comma-separated ISO codes (default: the paper's six)")
    s.add_argument("--samples", type=_args.positive_int, default=200, help="calibration samples per language (default 200)")
    s.add_argument("--out", required=True, help="directory for <lang>.safetensors score files")
    s.add_argument(
        "--data", default=None, help="'eld' (default, offline), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>] ({lang} is substituted)"
    )
    s.add_argument(
        "--unit", choices=["sentences", "blocks"], default="sentences", help="a sample is one sentence/line (default), or a packed block of --seq-len tokens"
    )
    s.add_argument("--seq-len", type=_args.positive_int, default=512, help="block length / sentence truncation in tokens (default 512)")
    s.add_argument("--batch-size", type=_args.positive_int, default=4, help="samples per forward+backward (default 4; memory grows with it)")
    s.add_argument("--seed", type=_args.seed, default=0)
    s.add_argument("--scope", type=_args.regex, default=DEFAULT_SCOPE, help="regex on parameter names to score (default: transformer blocks)")
    s.add_argument(
        "--max-logits-mb",
        type=_args.positive_float,
        default=DEFAULT_MAX_LOGITS_MB,
        help=f"memory for one chunk of fp32 logits in the head/loss (default {DEFAULT_MAX_LOGITS_MB:g} MB: 64 positions of a 262K vocabulary, 512 of a 32K one)",
    )
    s.add_argument("--backend", choices=BACKENDS, default="auto", help="under torchrun: nccl (GPUs) or gloo (CPU); auto picks by --device")
    s.add_argument("--overwrite", action="store_true", help="rescore languages whose saved scores were made with another model, text or option")
    _args.model_options(s)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("extract", help="extract a region from score files")
    s.add_argument("kind", choices=["core", "monolingual"])
    s.add_argument("--scores", required=True, help="directory written by `lingreg score`")
    s.add_argument("--ratio", type=_args.ratio, default=0.01, help="share of each tensor (default 0.01)")
    s.add_argument("--which", choices=["top", "bottom", "random"], default="top", help="core only (default top)")
    s.add_argument("--lang", default=None, help="monolingual only: the language whose region to extract")
    s.add_argument("--langs", default=None, help="languages to combine (default: the paper's six: ar,es,ru,zh,ko,vi)")
    s.add_argument("--all-scored", action="store_true", help="core: use every language found in --scores")
    s.add_argument("--seed", type=_args.seed, default=0, help="for --which random")
    s.add_argument("--out", required=True, help="output region file (.safetensors, .pt, or a directory)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    _dense_option(s)
    s.set_defaults(func=cmd_extract)

    mask = sub.add_parser("mask", help="inspect, compare and convert region files").add_subparsers(dest="mask_command", required=True)
    s = mask.add_parser("info", help="entries per layer and module, share of parameters")
    s.add_argument("mask")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_mask_info)
    s = mask.add_parser("compare", help="Jaccard index overall and per tensor")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--top", type=_args.positive_int, default=10, help="tensors to list (lowest Jaccard first)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_mask_compare)
    s = mask.add_parser("convert", help="convert between .safetensors, .pt and the official directory layout")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--format", choices=["safetensors", "pt", "official"], default=None, help="default: from dst's suffix (no suffix = official directory)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    _dense_option(s)
    s.set_defaults(func=cmd_mask_convert)
