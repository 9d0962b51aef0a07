"""`lingreg score`, `import-scores`, `extract` (in `cli.extract`), `mask info|compare|convert`: finding regions and handling region files."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args, extract


def cmd_score(args: argparse.Namespace) -> int:
    import logging

    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.loading import init_distributed, load_model, resolve_dtype
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.scores import PAPER_SCORING, check_shard, score_languages

    _args.resolve_preset(args, SCORE_DEFAULTS, PAPER_SCORING if args.preset == "paper" else {})
    langs = parse_languages(args.langs)
    dist = init_distributed(args.backend, args.device)
    check_shard(args.shard, dist.device)  # before the model is read
    if dist.rank == 0:
        check_writable(args.out, into=True)
    else:
        logging.getLogger("lm_eval_lingreg").setLevel(logging.WARNING)
    # sharded: each rank reads the model into host memory, and FSDP2 moves only its shards to the device
    model, tokenizer = load_model(args.pretrained, device="cpu" if args.shard == "fsdp" else dist.device, dtype=resolve_dtype(args.dtype, dist.device))
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
        model_label=args.pretrained or DEFAULT_MODEL,
        max_logits_mb=args.max_logits_mb,
        loss_norm=args.loss_norm,
        grad_dtype=args.grad_dtype,
        checkpoints=args.checkpoints,
        overwrite=args.overwrite,
        shard=args.shard,
        activation_checkpointing=args.activation_checkpointing,
        device=dist.device,
    )
    if dist.rank == 0:
        print(Path(args.out).resolve())
    return 0


def cmd_import_scores(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.official import import_official

    path = import_official(args.dump, args.lang, args.out, model_label=args.model, samples=args.samples, scope=args.scope, overwrite=args.overwrite)
    print(path.resolve())
    return 0


def cmd_mask_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.experts import SPREAD_HEADERS, has_experts, spread_rows, spread_table
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import summarize, totals_by

    region = load_region(args.mask)
    rows = summarize(region)
    moe = has_experts(region.shapes)
    if args.json:
        data = {"metadata": region.metadata, "selected": region.num_selected, "entries": region.num_covered, "tensors": rows}
        print(json.dumps(data | ({"experts": spread_rows(region)} if moe else {}), indent=1, default=str))
        return 0
    meta = {k: v for k, v in region.metadata.items() if k not in ("samples", "tokens", "calibration")}
    print(json.dumps(meta, indent=1, default=str))
    print(f"{region.num_selected} selected of {region.num_covered} entries ({region.density:.3%}) in {len(region.shapes)} tensors\n")
    for key in ("module", "layer"):
        table = [[k, s, f"{s / max(1, e):.3%}"] for k, (s, e) in totals_by(rows, key).items()]
        print(tabulate(table, headers=[key, "selected", "share"], tablefmt="github"))
        print()
    if moe:
        print("how the region spreads over the experts (fused expert tensors; effective experts = exp(entropy) of the counts)")
        print(tabulate(spread_table(region), headers=SPREAD_HEADERS, tablefmt="github"))
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


def _convert_source(args: argparse.Namespace):
    """A LAPE neuron file or super-weight coordinates as a region (the model's shapes from --pretrained), else None."""
    from lm_eval_lingreg.region_io import TORCH_SUFFIXES, torch_load
    from lm_eval_lingreg.sources import coordinates_region, lape_region, load_coordinates, load_lape, shapes_of

    src = Path(args.src)
    if src.suffix in (".json", ".yaml", ".yml") and src.is_file():
        return coordinates_region(load_coordinates(src), shapes_of(args.pretrained), {"source": str(src), "model": args.pretrained or DEFAULT_MODEL})
    if src.suffix in TORCH_SUFFIXES and src.is_file() and isinstance(torch_load(src), (list, tuple)):
        return lape_region(
            load_lape(src), shapes_of(args.pretrained), gate_up=args.gate_up, metadata={"source": str(src), "model": args.pretrained or DEFAULT_MODEL}
        )
    return None


def cmd_mask_convert(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.outputs import check_not_input, check_writable
    from lm_eval_lingreg.region_io import format_for, load_region, save_region

    fmt = format_for(args.dst, args.format)
    check_writable(args.dst, directory=fmt == "official", overwrite=args.overwrite)
    check_not_input(args.dst, [args.src])
    region = _convert_source(args) or load_region(args.src)
    out = save_region(region, args.dst, fmt=fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
    print(f"wrote {out} ({region.num_selected} entries)")
    return 0


#: `lingreg score` options a preset may set, and their defaults (`_args.resolve_preset`: explicit flags win over the preset, the preset over these).
SCORE_DEFAULTS = {"unit": "sentences", "seq_len": 512, "batch_size": 4, "loss_norm": "sample", "grad_dtype": "float32", "dtype": "float32"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.anatomy import DEFAULT_SCOPE
    from lm_eval_lingreg.corpora import UNITS
    from lm_eval_lingreg.importance import GRAD_DTYPES, LOSS_NORMS, SHARDS
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
        "--preset",
        choices=["paper"],
        default=None,
        help="the official protocol: --unit documents --seq-len 512 --loss-norm batch-token --grad-dtype bfloat16 --batch-size 8 --dtype bfloat16; explicit flags win",
    )
    s.add_argument(
        "--unit",
        choices=UNITS,
        default=None,
        help="a sample is BOS + one sentence/line, truncated to --seq-len (default); or a document: BOS + line + EOS, lines over --seq-len tokens dropped "
        "(the official preprocessing); or a packed block of --seq-len tokens",
    )
    s.add_argument(
        "--seq-len", type=_args.positive_int, default=None, help="sentence truncation / longest document kept / block length, in tokens (default 512)"
    )
    s.add_argument("--batch-size", type=_args.positive_int, default=None, help="samples per forward+backward (default 4; memory grows with it)")
    s.add_argument(
        "--loss-norm",
        choices=LOSS_NORMS,
        default=None,
        help="sample (default): each sample's mean token loss, independent of batching; batch-token: the Hugging Face mean over all tokens of a "
        "micro-batch of --batch-size, as the official code (which the paper used)",
    )
    s.add_argument(
        "--grad-dtype",
        choices=list(GRAD_DTYPES),
        default=None,
        help="gradient accumulation and score dtype: float32 (default, accurate) or bfloat16 (the official DeepSpeed run)",
    )
    s.add_argument(
        "--checkpoints",
        type=_args.counts,
        default=(),
        help="also write the cumulative scores after these sample counts to <out>/checkpoints/<n>/ (e.g. 50,100,200): how many samples are enough",
    )
    s.add_argument("--seed", type=_args.seed, default=0)
    s.add_argument("--scope", type=_args.regex, default=DEFAULT_SCOPE, help="regex on parameter names to score (default: transformer blocks)")
    s.add_argument(
        "--max-logits-mb",
        type=_args.positive_float,
        default=DEFAULT_MAX_LOGITS_MB,
        help=f"memory for one chunk of fp32 logits in the head/loss (default {DEFAULT_MAX_LOGITS_MB:g} MB: 64 positions of a 262K vocabulary, 512 of a 32K one)",
    )
    s.add_argument("--backend", choices=BACKENDS, default="auto", help="under torchrun: nccl (GPUs) or gloo (CPU); auto picks by --device")
    s.add_argument(
        "--shard",
        choices=SHARDS,
        default="none",
        help="under torchrun: none (default) keeps the whole model and gradient sums on every rank; fsdp shards parameters, gradients and sums "
        "over the ranks with FSDP2 (for models whose float32 sums do not fit one device)",
    )
    s.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each layer's activations during backward: less memory for long sequences, about one more forward of time",
    )
    s.add_argument("--overwrite", action="store_true", help="rescore languages whose saved scores were made with another model, text or option")
    _args.model_options(s)
    s.set_defaults(func=cmd_score, dtype=None)

    s = sub.add_parser("import-scores", help="import one language's scores written by the official code (grad-mul-param_checkpoint_N/<param>.pt)")
    s.add_argument("dump", help="the official scorer's output folder, or one of its grad-mul-param_checkpoint_N folders")
    s.add_argument("--lang", required=True, help="the language these scores are of (ISO code)")
    s.add_argument("--out", required=True, help="score directory to add <lang>.safetensors to (then `lingreg extract --scores` it)")
    s.add_argument("--samples", type=_args.positive_int, default=None, help="which checkpoint: the N of grad-mul-param_checkpoint_N (default: the largest)")
    s.add_argument(
        "--model", default="official", help="a label for the scored model; languages imported with the same label form one score set (default 'official')"
    )
    s.add_argument("--scope", type=_args.regex, default=DEFAULT_SCOPE, help="regex on parameter names to keep (default: transformer blocks)")
    s.add_argument("--overwrite", action="store_true", help="replace this language's scores if they came from elsewhere")
    s.set_defaults(func=cmd_import_scores)

    extract.add_parsers(sub)

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
    s.add_argument(
        "--pretrained",
        default=None,
        help="for a LAPE *.neuron.pth or super-weight coordinates (.json/.yaml) source: the model they address (config only; default: the bundled model)",
    )
    s.add_argument("--gate-up", action="store_true", help="LAPE source: also the neurons' gate_proj and up_proj rows")
    _args.dense_option(s)
    s.set_defaults(func=cmd_mask_convert)
