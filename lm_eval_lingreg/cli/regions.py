"""`lingreg score`, `extract`, `mask info|compare|convert`: finding regions and handling region files."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args


def cmd_score(args: argparse.Namespace) -> int:
    import logging

    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.loading import init_distributed, load_model
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.scores import PAPER_SCORING, score_languages

    preset = PAPER_SCORING if args.preset == "paper" else {}
    for key, default in SCORE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
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
        model_label=args.pretrained or DEFAULT_MODEL,
        max_logits_mb=args.max_logits_mb,
        loss_norm=args.loss_norm,
        grad_dtype=args.grad_dtype,
        checkpoints=args.checkpoints,
        overwrite=args.overwrite,
    )
    if dist.rank == 0:
        print(Path(args.out).resolve())
    return 0


def cmd_import_scores(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.scores import import_official

    path = import_official(args.dump, args.lang, args.out, model_label=args.model, samples=args.samples, scope=args.scope, overwrite=args.overwrite)
    print(path.resolve())
    return 0


def _calibration(args: argparse.Namespace, tokenizer, langs: list[str]) -> dict[str, list[list[int]]]:
    from lm_eval_lingreg.corpora import make_samples

    return {lang: make_samples(tokenizer, lang, args.samples, data=args.data, unit=args.unit, seq_len=args.seq_len, seed=args.seed).input_ids for lang in langs}


def _source_region(args: argparse.Namespace, meta: dict):
    """A region from a source other than importance scores (magnitude, wanda, lape, super-weight)."""
    from lm_eval_lingreg.anatomy import model_fingerprint
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.sources import check_lape_rates, select_magnitude

    if args.which == "random":
        raise UsageError(f"`lingreg extract {args.kind}` selects --which top or bottom; for a random control use `lingreg extract core --which random`")
    if args.kind == "lape":
        check_lape_rates(args.top_rate, args.filter_rate, args.bar_rate)
    if args.kind == "super-weight" and not args.coordinates and not args.prompt.strip():
        raise UsageError("--prompt is empty; give the text whose activations to watch (default: 'Apple Inc. is a worldwide tech company.')")
    if args.kind == "lape" and args.lang and not args.neurons:
        args.lang = parse_languages(args.lang)[0]
        args.langs = ",".join(parse_languages(args.langs) if args.langs else CORE_LANGUAGES)
        if args.lang not in args.langs.split(","):
            raise UsageError(f"--lang {args.lang!r} is not among --langs {args.langs}")
    if args.kind == "lape" and args.neurons or args.kind == "super-weight" and args.coordinates:
        return _imported_region(args, meta)
    model, tokenizer = _args.load(args)
    meta |= {"model": args.pretrained or DEFAULT_MODEL, "model_fingerprint": model_fingerprint(model)}
    if args.kind == "magnitude":
        return select_magnitude(model, args.ratio, args.which, args.scope, meta)
    if args.kind == "super-weight":
        return _super_weight_region(args, model, tokenizer, meta)
    return _activation_region(args, model, tokenizer, meta)


def _imported_region(args: argparse.Namespace, meta: dict):
    """A LAPE neuron file or super-weight coordinates as a region: only the model's shapes are needed, read from
    its config (no weights loaded)."""
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.sources import coordinates_region, lape_region, load_coordinates, load_lape, shapes_of

    shapes = shapes_of(args.pretrained, args.scope)
    meta |= {"model": args.pretrained or DEFAULT_MODEL}
    if args.kind != "lape":
        return coordinates_region(load_coordinates(args.coordinates), shapes, meta | {"source": str(args.coordinates)})
    neurons = load_lape(args.neurons)
    positions = None
    if args.lang:
        if not args.file_langs:
            raise UsageError("--lang with --neurons needs --file-langs: the languages of the file in its order (e.g. en,zh,fr,es,vi,id,ja)")
        order = [s.strip() for s in args.file_langs.split(",")]
        if len(order) != len(neurons):
            raise UsageError(f"--file-langs names {len(order)} languages but {args.neurons} holds {len(neurons)}")
        if args.lang not in order:
            raise UsageError(f"--lang {args.lang!r} is not among --file-langs {','.join(order)}")
        positions = [order.index(args.lang)]
    return lape_region(neurons, shapes, positions, gate_up=args.gate_up, metadata=meta | {"source": str(args.neurons), "lang": args.lang})


def _super_weight_region(args: argparse.Namespace, model: Any, tokenizer: Any, meta: dict):
    """Super weights detected from down_proj spikes on `--prompt`, printed, as single-entry regions."""
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.sources import coordinates_region, detect_super_weights

    found = detect_super_weights(model, tokenizer(args.prompt)["input_ids"], spike=args.spike, top=args.top)
    if not found:
        raise UsageError(
            f"no down_proj output in any layer exceeds {args.spike:g}x the median over layers on this prompt; lower --spike or try another --prompt"
        )
    for f in found:
        print(
            f"super weight: layer {f['layer']}, row {f['row']}, col {f['col']} (|input| {f['max_abs_input']:.4g}, |output| {f['max_abs_output']:.4g}, {f['times_median']:.1f}x the median)"
        )
    meta |= {"prompt": args.prompt, "spike": args.spike, "found": found}
    return coordinates_region([(f["layer"], f["row"], f["col"]) for f in found], scope_shapes(model, args.scope), meta)


def _activation_region(args: argparse.Namespace, model: Any, tokenizer: Any, meta: dict):
    """Wanda or LAPE: one body forward over the calibration samples, then the selection."""
    from tqdm.auto import tqdm

    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.sources import activation_probabilities, input_norms, lape_neurons, lape_region, select_wanda

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    langs = parse_languages(args.langs) if args.langs else list(CORE_LANGUAGES)
    samples = _calibration(args, tokenizer, langs)
    calib = {"languages": langs, "samples": {k: len(v) for k, v in samples.items()}, "unit": args.unit, "seed": args.seed, "calibration": args.data or "eld"}
    with tqdm(total=sum(len(v) for v in samples.values()), desc=f"{args.kind} activations", unit="sample") as bar:
        if args.kind == "wanda":
            norms, tokens = input_norms(model, [s for v in samples.values() for s in v], args.scope, args.batch_size, pad_id, bar.update)
            return select_wanda(model, norms, args.ratio, args.which, args.per_row, args.scope, meta | calib | {"tokens": tokens})
        if len(langs) < 2:
            raise UsageError("LAPE compares languages: give --langs with at least two")
        probs, tokens = activation_probabilities(model, samples, args.batch_size, pad_id, bar.update)
    neurons = lape_neurons(probs, args.top_rate, args.filter_rate, args.bar_rate)
    for lang, per_layer in zip(langs, neurons, strict=True):
        print(f"LAPE {lang}: {sum(t.numel() for t in per_layer)} neurons")
    args.neurons_found = neurons  # written by cmd_extract once the region is saved
    lape_meta = {
        "top_rate": args.top_rate,
        "filter_rate": args.filter_rate,
        "bar_rate": args.bar_rate,
        "neurons": {k: sum(t.numel() for t in v) for k, v in zip(langs, neurons, strict=True)},
    }
    positions = [langs.index(args.lang)] if args.lang else None
    return lape_region(neurons, scope_shapes(model, args.scope), positions, args.gate_up, meta | calib | {"tokens": tokens, "lang": args.lang, **lape_meta})


def _model_files(pretrained: str | None) -> list[Path]:
    """The model folder and its files, when `pretrained` is a local folder (an output must never replace them)."""
    if pretrained is None:
        from lm_eval_lingreg.bundled import model_dir

        folder = model_dir()
    else:
        folder = Path(pretrained).expanduser()
    return [folder, *folder.iterdir()] if folder.is_dir() else []


_SOURCES = ("magnitude", "wanda", "lape", "super-weight", "lape --neurons", "super-weight --coordinates")
_CALIBRATED = ("wanda", "lape")
#: The `extract` variants each option applies to (the import variants read a file, not the model's activations).
_APPLIES = {
    "scores": ("core", "monolingual"),
    "all_scored": ("core",),
    "ratio": ("core", "monolingual", "magnitude", "wanda"),
    "which": ("core", "monolingual", "magnitude", "wanda"),
    "lang": ("monolingual", "lape", "lape --neurons"),
    "langs": ("core", "monolingual", *_CALIBRATED),
    "seed": ("core", *_CALIBRATED),
    "scope": _SOURCES,
    "pretrained": _SOURCES,
    **{k: _CALIBRATED for k in ("samples", "data", "unit", "seq_len", "batch_size")},
    "per_row": ("wanda",),
    "neurons": ("lape", "lape --neurons"),
    "file_langs": ("lape --neurons",),
    "gate_up": ("lape", "lape --neurons"),
    **{k: ("lape",) for k in ("top_rate", "filter_rate", "bar_rate", "save_neurons")},
    **{k: ("super-weight",) for k in ("prompt", "spike", "top")},
    "coordinates": ("super-weight", "super-weight --coordinates"),
}


def _check_options_apply(args: argparse.Namespace) -> None:
    """One clear error for an option given to an `extract` variant that would silently ignore it."""
    from lm_eval_lingreg.errors import UsageError

    variant = args.kind
    if args.kind == "lape" and args.neurons:
        variant = "lape --neurons"
    elif args.kind == "super-weight" and args.coordinates:
        variant = "super-weight --coordinates"
    defaults = args.extract_defaults
    for dest, kinds in _APPLIES.items():
        if variant not in kinds and getattr(args, dest) != defaults[dest]:
            flag = "--" + dest.replace("_", "-")
            uses = ", ".join(f"`extract {k}`" for k in kinds)
            raise UsageError(f"{flag} does not apply to `lingreg extract {variant}` (it is read by {uses}); remove it")


def cmd_extract(args: argparse.Namespace) -> int:
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.outputs import check_not_input, check_writable
    from lm_eval_lingreg.region_io import format_for, save_region
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual

    _check_options_apply(args)
    fmt = format_for(args.out)
    check_writable(args.out, directory=fmt == "official", overwrite=args.overwrite)
    if args.kind not in ("core", "monolingual"):
        inputs = [*_model_files(args.pretrained), *(p for p in (args.neurons, args.coordinates) if p)]
        check_not_input(args.out, inputs)
        save_neurons = args.kind == "lape" and not args.neurons and args.save_neurons
        if save_neurons:
            check_writable(save_neurons)
            check_not_input(save_neurons, [*inputs, args.out])
        region = _source_region(args, {"lm_eval_lingreg": __version__, "command": "lingreg " + " ".join(sys.argv[1:])})
        save_region(region, args.out, fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
        if save_neurons:
            import torch

            from lm_eval_lingreg.outputs import atomic_path

            with atomic_path(save_neurons, overwrite=True) as tmp:
                torch.save(args.neurons_found, tmp)
            print(f"wrote {save_neurons}: LAPE neurons (a list per language of a list per layer of indices)")
        print(f"wrote {args.out}: {region.metadata['kind']} region, {region.num_selected} entries ({region.density:.3%}) over {len(region.shapes)} tensors")
        return 0
    if not args.scores:
        raise UsageError(f"`lingreg extract {args.kind}` needs --scores: the folder written by `lingreg score`")
    if args.kind == "monolingual" and not args.lang:
        raise UsageError("`lingreg extract monolingual` needs --lang (e.g. --lang ar)")
    if args.kind == "monolingual" and args.which == "random":
        raise UsageError("a monolingual region is built from --which top or bottom; for a random control use `lingreg extract core --which random`")
    langs = parse_languages(args.langs) if args.langs else None
    scores = ScoreSet(args.scores, langs or (None if args.kind == "core" and args.all_scored else list(CORE_LANGUAGES)))
    check_not_input(args.out, scores.files)
    meta = {**scores.provenance(), "lm_eval_lingreg": __version__, "command": "lingreg " + " ".join(sys.argv[1:])}
    if args.kind == "core":
        region = select_core(scores.get, scores.names, scores.langs, args.ratio, which=args.which, seed=args.seed, metadata=meta)
    else:
        region = select_monolingual(scores.get, scores.names, parse_languages(args.lang)[0], scores.langs, args.ratio, metadata=meta, which=args.which)
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


def _convert_source(args: argparse.Namespace):
    """A LAPE neuron file or super-weight coordinates as a region (the model's shapes from --pretrained), else None."""
    from lm_eval_lingreg.region_io import TORCH_SUFFIXES, _torch_load
    from lm_eval_lingreg.sources import coordinates_region, lape_region, load_coordinates, load_lape, shapes_of

    src = Path(args.src)
    if src.suffix in (".json", ".yaml", ".yml") and src.is_file():
        return coordinates_region(load_coordinates(src), shapes_of(args.pretrained), {"source": str(src), "model": args.pretrained or DEFAULT_MODEL})
    if src.suffix in TORCH_SUFFIXES and src.is_file() and isinstance(_torch_load(src), (list, tuple)):
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


def _dense_option(s: argparse.ArgumentParser) -> None:
    from lm_eval_lingreg.region_io import MAX_DENSE_GB

    s.add_argument(
        "--max-dense-gb",
        type=_args.positive_float,
        default=MAX_DENSE_GB,
        help=f".pt and official outputs hold one byte per covered entry: refuse more than this many GB (default {MAX_DENSE_GB:g})",
    )


#: `lingreg score` options a preset may set (flags given explicitly win), and their defaults.
SCORE_DEFAULTS = {"unit": "sentences", "seq_len": 512, "batch_size": 4, "loss_norm": "sample", "grad_dtype": "float32", "dtype": "float32"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.anatomy import DEFAULT_SCOPE
    from lm_eval_lingreg.corpora import UNITS
    from lm_eval_lingreg.importance import GRAD_DTYPES, LOSS_NORMS
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

    s = sub.add_parser(
        "extract",
        help="extract a region: core|monolingual from score files; magnitude, wanda, lape, super-weight from the model (other published definitions)",
    )
    s.add_argument("kind", choices=["core", "monolingual", "magnitude", "wanda", "lape", "super-weight"])
    s.add_argument("--scores", default=None, help="core, monolingual: directory written by `lingreg score`")
    s.add_argument("--ratio", type=_args.ratio, default=0.01, help="share of each tensor (default 0.01)")
    s.add_argument(
        "--which",
        choices=["top", "bottom", "random"],
        default="top",
        help="top (default), bottom or random entries; monolingual: top, or bottom (the official control: bottom-k of the language minus the others' bottom-k)",
    )
    s.add_argument("--lang", default=None, help="monolingual: the language whose region to extract; lape: one language's neurons (default: all languages')")
    s.add_argument(
        "--langs", default=None, help="languages to combine (core, monolingual) or to calibrate on (wanda, lape) (default: the paper's six: ar,es,ru,zh,ko,vi)"
    )
    s.add_argument("--all-scored", action="store_true", help="core: use every language found in --scores")
    s.add_argument("--seed", type=_args.seed, default=0, help="for --which random; the calibration sentences' order (wanda, lape)")
    s.add_argument("--out", required=True, help="output region file (.safetensors, .pt, or a directory)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    _dense_option(s)
    g = s.add_argument_group("magnitude, wanda, lape, super-weight (computed from the model: --pretrained, --device, --dtype)")
    g.add_argument("--scope", type=_args.regex, default=DEFAULT_SCOPE, help="regex on parameter names (default: transformer blocks, as the core region)")
    g.add_argument("--samples", type=_args.positive_int, default=200, help="wanda, lape: calibration samples per language (default 200, as `lingreg score`)")
    g.add_argument("--data", default=None, help="wanda, lape: calibration text (as `lingreg score --data`; default eld, offline)")
    g.add_argument("--unit", choices=UNITS, default="sentences", help="wanda, lape: calibration unit (as `lingreg score --unit`)")
    g.add_argument("--seq-len", type=_args.positive_int, default=512, help="wanda, lape: sentence truncation / document or block length (default 512)")
    g.add_argument("--batch-size", type=_args.positive_int, default=4, help="wanda, lape: samples per forward (default 4)")
    g.add_argument("--per-row", action="store_true", help="wanda: choose the ratio within each output row (Wanda's own) instead of per tensor")
    g.add_argument(
        "--neurons", default=None, help="lape: import a LAPE *.neuron.pth file (list per language of list per layer of indices) instead of computing"
    )
    g.add_argument("--file-langs", default=None, help="lape --neurons: the languages of the file in its order, to pick one with --lang")
    g.add_argument("--gate-up", action="store_true", help="lape: also the neurons' gate_proj and up_proj rows (default: down_proj columns only)")
    g.add_argument("--top-rate", type=float, default=0.01, help="lape: share of neurons kept by lowest entropy (default 0.01, as published)")
    g.add_argument("--filter-rate", type=float, default=0.95, help="lape: quantile a neuron's probability must exceed in some language (default 0.95)")
    g.add_argument("--bar-rate", type=float, default=0.95, help="lape: quantile that assigns a kept neuron to a language (default 0.95)")
    g.add_argument("--save-neurons", default=None, help="lape: also write the neurons found as a LAPE *.neuron.pth file")
    g.add_argument("--prompt", default="Apple Inc. is a worldwide tech company.", help="super-weight: the prompt whose activations are watched")
    g.add_argument(
        "--spike", type=_args.positive_float, default=10.0, help="super-weight: a layer's largest |down_proj output| over this many times the median is a spike"
    )
    g.add_argument("--top", type=_args.positive_int, default=3, help="super-weight: at most this many coordinates (strongest first)")
    g.add_argument("--coordinates", default=None, help="super-weight: import (layer, row, col) coordinates from JSON/YAML instead of detecting")
    _args.model_options(s)
    s.set_defaults(func=cmd_extract)
    s.set_defaults(extract_defaults={a.dest: a.default for a in s._actions})

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
    _dense_option(s)
    s.set_defaults(func=cmd_mask_convert)
