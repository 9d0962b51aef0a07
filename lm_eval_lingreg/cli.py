"""`lingreg`: the command-line interface.

    lingreg prepare                       convert the bundled model once; print its path last
    lingreg apply --mask M --out DIR      write an ablated model as a standard HF checkpoint
    lingreg demo                          base vs core and random 1% regions on the 30 languages
    lingreg score --langs ar,es,... --out scores/     per-language importance (torchrun-able)
    lingreg extract core|monolingual ...  regions from score files
    lingreg mask info|compare|convert ... inspect, compare and convert region files
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from lm_eval_lingreg import __version__


def _limit(value: str) -> int | None:
    if value == "all":
        return None
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive number of documents or 'all'")
    return n


def _cmd_prepare(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.bundled import prepare

    print(prepare(force=args.force))
    return 0


def _load_model(pretrained: str | None, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import resolve_pretrained

    path = resolve_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _cmd_apply(args: argparse.Namespace) -> int:
    from lm_eval_lingreg._atomic import atomic_path
    from lm_eval_lingreg.region_io import file_sha256, load_region, resolve
    from lm_eval_lingreg.regions import apply

    path = resolve(args.mask)
    region = load_region(path)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"error: {out} exists and is not empty; pass --overwrite to replace it")
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    apply(region, model, args.mask_value)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lingreg_ablation.json").write_text(
            json.dumps(
                {
                    "pretrained": args.pretrained or "gemma-3-270m (bundled)",
                    "mask": str(args.mask),
                    "mask_sha256": file_sha256(path),
                    "mask_value": args.mask_value,
                    "entries_changed": region.num_selected,
                    "mask_metadata": region.metadata,
                    "lm_eval_lingreg": __version__,
                },
                indent=1,
                default=str,
            )
        )
    print(f"wrote {out} ({region.num_selected} entries set to {args.mask_value})")
    print(out.resolve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.evaluation import evaluate_conditions, per_language
    from lm_eval_lingreg.languages import LANGUAGES, parse_languages
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import scope_shapes, validate
    from lm_eval_lingreg.selection import select_random

    langs = parse_languages(args.langs)
    bundled = args.pretrained in (None, "", "gemma-3-270m")
    masks = [m for m in (args.masks if args.masks is not None else ("core" if bundled else "")).split(",") if m]
    regions = {}
    for m in masks:  # bad mask files fail before the model loads
        label = Path(m).name.removesuffix(".safetensors").removesuffix(".pt") or m
        regions[label if label not in regions else f"{label}-{len(regions)}"] = load_region(m)
    lm = RegionAblatedLM(pretrained=args.pretrained, dtype=args.dtype, batch_size=args.batch_size, device=args.device)
    for region in regions.values():
        validate(region, lm.model)
    label = f"random-{args.ratio:g}"
    regions[label] = select_random(scope_shapes(lm.model), args.ratio, seed=args.seed)
    for name, region in regions.items():
        print(f"{name}: {region.num_selected} entries ({region.density:.2%} of the {region.num_covered} parameters it covers)")
    results = evaluate_conditions(lm, {"base": None, **regions}, langs, limit=args.limit, output_dir=args.output_path)
    bpb = per_language(results["base"], "bits_per_byte")
    ppl = {c: per_language(r, "token_perplexity") for c, r in results.items()}
    rows = [[LANGUAGES[iso].name, iso, bpb[iso], ppl["base"][iso], *(ppl[c][iso] / ppl["base"][iso] for c in regions)] for iso in langs]
    gmean = [math.exp(sum(math.log(r[4 + i]) for r in rows) / len(rows)) for i in range(len(regions))]
    rows.append(["Geometric mean", "", None, None, *gmean])
    headers = ["Language", "ISO", "bpb base", "tok-ppl base", *(f"x ppl {c}" for c in regions)]
    print(f"\n{args.limit or 31} UDHR documents per language; token perplexity of each ablated model divided by the base model's")
    print(tabulate(rows, headers=headers, floatfmt=".3g", tablefmt="github", missingval=""))
    if args.output_path:
        print(f"results JSON per condition under {args.output_path}/")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import os

    import torch

    from lm_eval_lingreg.importance import score_languages
    from lm_eval_lingreg.languages import parse_languages

    langs = parse_languages(args.langs)
    rank = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun / accelerate
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        rank = dist.get_rank()
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    if torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    torch.manual_seed(args.seed)
    score_languages(
        model, tokenizer, langs, args.out, args.samples, data=args.data, unit=args.unit, seq_len=args.seq_len,
        seed=args.seed, batch_size=args.batch_size, scope=args.scope, model_name=args.pretrained or "gemma-3-270m",
        log=(print if rank == 0 else (lambda _msg: None)),
    )
    if rank == 0:
        print(Path(args.out).resolve())
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual

    langs = parse_languages(args.langs) if args.langs else None
    scores = ScoreSet(args.scores, langs or (None if args.kind == "core" and args.all_scored else list(CORE_LANGUAGES)))
    meta = {**scores.provenance(), "lm_eval_lingreg": __version__, "command": "lingreg " + " ".join(sys.argv[1:])}
    if args.kind == "core":
        region = select_core(scores.get, scores.names, scores.langs, args.ratio, which=args.which, seed=args.seed, metadata=meta)
    else:
        if not args.lang:
            raise SystemExit("error: `lingreg extract monolingual` needs --lang (e.g. --lang ar)")
        region = select_monolingual(scores.get, scores.names, parse_languages(args.lang)[0], scores.langs, args.ratio, metadata=meta)
    save_region(region, args.out)
    print(f"wrote {args.out}: {region.metadata['kind']} region, {region.num_selected} entries ({region.density:.3%}) over {len(region.shapes)} tensors")
    return 0


def _cmd_mask_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import summarize

    region = load_region(args.mask)
    rows = summarize(region)
    if args.json:
        print(json.dumps({"metadata": region.metadata, "selected": region.num_selected, "entries": region.num_covered, "tensors": rows}, indent=1, default=str))
        return 0
    meta = {k: v for k, v in region.metadata.items() if k not in ("samples", "tokens", "calibration")}
    print(json.dumps(meta, indent=1, default=str))
    print(f"{region.num_selected} selected of {region.num_covered} entries ({region.density:.3%}) in {len(region.shapes)} tensors\n")
    by_module: dict[str, list[int]] = {}
    by_layer: dict[object, list[int]] = {}
    for r in rows:
        by_module.setdefault(r["module"], [0, 0])
        by_layer.setdefault(r["layer"], [0, 0])
        for acc in (by_module[r["module"]], by_layer[r["layer"]]):
            acc[0] += r["selected"]
            acc[1] += r["entries"]
    print(tabulate([[m, s, f"{s / max(1, e):.3%}"] for m, (s, e) in by_module.items()], headers=["module", "selected", "share"], tablefmt="github"))
    print()
    layers = sorted(by_layer.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0))
    print(tabulate([[layer, s, f"{s / max(1, e):.3%}"] for layer, (s, e) in layers], headers=["layer", "selected", "share"], tablefmt="github"))
    return 0


def _cmd_mask_compare(args: argparse.Namespace) -> int:
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


def _cmd_mask_convert(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.region_io import load_region, save_region

    region = load_region(args.src)
    out = save_region(region, args.dst, fmt=args.format)
    print(f"wrote {out} ({region.num_selected} entries)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lingreg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lm-eval-lingreg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="convert the bundled model once; print its local path as the last line")
    s.add_argument("--force", action="store_true", help="convert again even if cached")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("apply", help="write an ablated model as a standard HF checkpoint (safetensors)")
    s.add_argument("--mask", required=True, help="region file, official-layout directory, or shipped mask name")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--mask-value", type=float, default=0.0, help="value written to the selected entries (default 0)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    s.set_defaults(func=_cmd_apply)

    s = sub.add_parser("demo", help="main job: base vs the core region and a seeded random control on the 30 languages")
    s.add_argument("--masks", default=None, help="comma-separated masks (paths or shipped names) to evaluate beside the random control (default: 'core' for the bundled model, none otherwise)")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--langs", default="all", help="comma-separated ISO codes or 'all' (default)")
    s.add_argument("--ratio", type=float, default=0.01, help="share of entries per tensor (default 0.01)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=_limit, default=8, help="documents per language, or 'all' for the 31 (default 8; 'all' reads the 31 and takes about 3x longer)")
    s.add_argument("--batch-size", default="1")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--device", default="cpu")
    s.add_argument("--output-path", default="lingreg-demo", help="where results JSON go (default ./lingreg-demo)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("score", help="per-language importance scores (theta * summed gradient)")
    s.add_argument("--langs", default="ar,es,ru,zh,ko,vi", help="comma-separated ISO codes (default: the paper's six)")
    s.add_argument("--samples", type=int, default=200, help="calibration samples per language (default 200)")
    s.add_argument("--out", required=True, help="directory for <lang>.safetensors score files")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--data", default=None, help="'eld' (default, offline), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>] ({lang} is substituted)")
    s.add_argument("--unit", choices=["sentences", "blocks"], default="sentences", help="a sample is one sentence/line, or a packed block of --seq-len tokens (paper: blocks of 512)")
    s.add_argument("--seq-len", type=int, default=512, help="block length / sentence truncation in tokens (default 512)")
    s.add_argument("--batch-size", type=int, default=4, help="samples per forward+backward (default 4; memory grows with it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scope", default=r"layers\.\d+\.", help="regex on parameter names to score (default: transformer blocks)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("extract", help="extract a region from score files")
    s.add_argument("kind", choices=["core", "monolingual"])
    s.add_argument("--scores", required=True, help="directory written by `lingreg score`")
    s.add_argument("--ratio", type=float, default=0.01, help="share of each tensor (default 0.01)")
    s.add_argument("--which", choices=["top", "bottom", "random"], default="top", help="core only (default top)")
    s.add_argument("--lang", default=None, help="monolingual only: the language whose region to extract")
    s.add_argument("--langs", default=None, help="languages to combine (default: the paper's six: ar,es,ru,zh,ko,vi)")
    s.add_argument("--all-scored", action="store_true", help="core: use every language found in --scores")
    s.add_argument("--seed", type=int, default=0, help="for --which random")
    s.add_argument("--out", required=True, help="output region file (.safetensors, .pt, or a directory)")
    s.set_defaults(func=_cmd_extract)

    mask = sub.add_parser("mask", help="inspect, compare and convert region files").add_subparsers(dest="mask_command", required=True)
    s = mask.add_parser("info", help="entries per layer and module, share of parameters")
    s.add_argument("mask")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_mask_info)
    s = mask.add_parser("compare", help="Jaccard index overall and per tensor")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--top", type=int, default=10, help="tensors to list (lowest Jaccard first)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_mask_compare)
    s = mask.add_parser("convert", help="convert between .safetensors, .pt and the official directory layout")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--format", choices=["safetensors", "pt", "official"], default=None, help="default: from dst's suffix (no suffix = official directory)")
    s.set_defaults(func=_cmd_mask_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from lm_eval_lingreg.bundled import BundledModelError
    from lm_eval_lingreg.languages import UnknownLanguageError
    from lm_eval_lingreg.corpora import CorpusError
    from lm_eval_lingreg.regions import RegionError
    from lm_eval_lingreg.scores import ScoreFileError

    try:
        return args.func(args)
    except (RegionError, UnknownLanguageError, BundledModelError, CorpusError, ScoreFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
