"""`lingreg extract core|monolingual|magnitude|wanda|lape|super-weight`: a region from score files or from the model.

Each method is a subcommand with only the options it reads, defined once in `_options()`: an option of
another method is refused by the parser, naming the methods that read it. `lape --neurons` and
`super-weight --coordinates` import a file instead of reading the model's activations; the options those
variants would ignore are refused as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args

#: The methods, with their one-line help: two from importance scores, four from the model.
METHODS = {
    "core": "the entries important to every language of --langs (from `lingreg score` files)",
    "monolingual": "the entries important to one --lang and not to the other languages (from score files)",
    "magnitude": "the largest |W| entries of each tensor (from the model)",
    "wanda": "|W_ij| * ||X_j||_2 on calibration text, as Wanda (from the model)",
    "lape": "language-specific neurons by activation entropy, as LAPE (from the model), or a LAPE file with --neurons",
    "super-weight": "super weights found by down_proj spikes on --prompt (from the model), or coordinates with --coordinates",
}
_SCORED = ("core", "monolingual")
#: The option that makes a method import a file instead of reading the model's activations.
_IMPORTS = {"lape": "neurons", "super-weight": "coordinates"}
_CALIBRATED = ("wanda", "lape")
_SOURCES = ("magnitude", "wanda", "lape", "super-weight", "lape --neurons", "super-weight --coordinates")
#: `_args.model_options`: read by every method computed from the model, and by the import variants (the model's shapes).
_MODEL_FLAGS = ("--pretrained", "--device", "--dtype")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _options() -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    """dest -> (its `add_argument` settings, the variants that read it); the flag is the dest with dashes."""
    from lm_eval_lingreg.anatomy import DEFAULT_SCOPE
    from lm_eval_lingreg.corpora import UNITS

    return {
        "scores": ({"default": None, "help": "core, monolingual: directory written by `lingreg score`"}, _SCORED),
        "ratio": ({"type": _args.ratio, "default": 0.01, "help": "share of each tensor (default 0.01)"}, (*_SCORED, "magnitude", "wanda")),
        "which": (
            {
                "choices": ["top", "bottom", "random"],
                "default": "top",
                "help": "top (default), bottom or random entries; monolingual: top, or bottom (the official control: bottom-k of the language "
                "minus the others' bottom-k)",
            },
            (*_SCORED, "magnitude", "wanda"),
        ),
        "lang": (
            {"default": None, "help": "monolingual: the language whose region to extract; lape: one language's neurons (default: all languages')"},
            ("monolingual", "lape", "lape --neurons"),
        ),
        "langs": (
            {
                "default": None,
                "help": "languages to combine (core, monolingual) or to calibrate on (wanda, lape) (default: the paper's six: ar,es,ru,zh,ko,vi)",
            },
            (*_SCORED, *_CALIBRATED),
        ),
        "per_expert": (
            {
                "action": "store_true",
                "default": False,
                "help": "core, monolingual: in a fused 3-D expert tensor, the --ratio share of each expert's slice (default: of the whole tensor)",
            },
            _SCORED,
        ),
        "all_scored": ({"action": "store_true", "default": False, "help": "core: use every language found in --scores"}, ("core",)),
        "seed": ({"type": _args.seed, "default": 0, "help": "for --which random; the calibration sentences' order (wanda, lape)"}, ("core", *_CALIBRATED)),
        "scope": (
            {"type": _args.regex, "default": DEFAULT_SCOPE, "help": "regex on parameter names (default: transformer blocks, as the core region)"},
            _SOURCES,
        ),
        "samples": (
            {"type": _args.positive_int, "default": 200, "help": "wanda, lape: calibration samples per language (default 200, as `lingreg score`)"},
            _CALIBRATED,
        ),
        "data": ({"default": None, "help": "wanda, lape: calibration text (as `lingreg score --data`; default eld, offline)"}, _CALIBRATED),
        "unit": ({"choices": UNITS, "default": "sentences", "help": "wanda, lape: calibration unit (as `lingreg score --unit`)"}, _CALIBRATED),
        "seq_len": (
            {"type": _args.positive_int, "default": 512, "help": "wanda, lape: sentence truncation / document or block length (default 512)"},
            _CALIBRATED,
        ),
        "batch_size": ({"type": _args.positive_int, "default": 4, "help": "wanda, lape: samples per forward (default 4)"}, _CALIBRATED),
        "per_row": (
            {"action": "store_true", "default": False, "help": "wanda: choose the ratio within each output row (Wanda's own) instead of per tensor"},
            ("wanda",),
        ),
        "neurons": (
            {"default": None, "help": "lape: import a LAPE *.neuron.pth file (list per language of list per layer of indices) instead of computing"},
            ("lape", "lape --neurons"),
        ),
        "file_langs": ({"default": None, "help": "lape --neurons: the languages of the file in its order, to pick one with --lang"}, ("lape --neurons",)),
        "gate_up": (
            {
                "action": "store_true",
                "default": False,
                "help": "lape: also the neurons' gate_proj and up_proj rows, or both rows of a fused gate_up_proj (default: down_proj columns only)",
            },
            ("lape", "lape --neurons"),
        ),
        "top_rate": ({"type": float, "default": 0.01, "help": "lape: share of neurons kept by lowest entropy (default 0.01, as published)"}, ("lape",)),
        "filter_rate": (
            {"type": float, "default": 0.95, "help": "lape: quantile a neuron's probability must exceed in some language (default 0.95)"},
            ("lape",),
        ),
        "bar_rate": ({"type": float, "default": 0.95, "help": "lape: quantile that assigns a kept neuron to a language (default 0.95)"}, ("lape",)),
        "save_neurons": ({"default": None, "help": "lape: also write the neurons found as a LAPE *.neuron.pth file"}, ("lape",)),
        "prompt": ({"default": "Apple Inc. is a worldwide tech company.", "help": "super-weight: the prompt whose activations are watched"}, ("super-weight",)),
        "spike": (
            {
                "type": _args.positive_float,
                "default": 10.0,
                "help": "super-weight: a layer's largest |down_proj output| over this many times the median is a spike",
            },
            ("super-weight",),
        ),
        "top": ({"type": _args.positive_int, "default": 3, "help": "super-weight: at most this many coordinates (strongest first)"}, ("super-weight",)),
        "coordinates": (
            {"default": None, "help": "super-weight: import (layer, row, col) coordinates from JSON/YAML instead of detecting"},
            ("super-weight", "super-weight --coordinates"),
        ),
    }


def _method(variant: str) -> str:
    return variant.split()[0]


class _MethodParser(argparse.ArgumentParser):
    """The parser of one `extract` method: an option it does not read is refused, naming the methods that do."""

    def __init__(self, *a: Any, method: str, options: dict[str, tuple[dict[str, Any], tuple[str, ...]]], **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.method = method
        self.own = {dest: readers for dest, (_, readers) in options.items() if method in map(_method, readers)}
        foreign = {_flag(dest): readers for dest, (_, readers) in options.items() if dest not in self.own}
        self.foreign = foreign | (dict.fromkeys(_MODEL_FLAGS, _SOURCES) if method in _SCORED else {})

    def _refuse(self, flag: str, variant: str, readers: tuple[str, ...]) -> None:
        uses = ", ".join(f"`extract {v}`" for v in readers)
        self.error(f"{flag} does not apply to `lingreg extract {variant}` (it is read by {uses}); remove it")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        for arg in given[: given.index("--") if "--" in given else None]:  # before parsing: --lang is no abbreviation of --langs here
            if (flag := arg.split("=", 1)[0]) in self.foreign:
                self._refuse(flag, self.method, self.foreign[flag])
        ns, extras = super().parse_known_args(given, namespace)
        if any(extra.startswith("-") for extra in extras):
            self.error(f"unrecognized arguments: {' '.join(extras)}; `lingreg extract {self.method} --help` lists its options")
        imported = _IMPORTS.get(self.method)
        variant = f"{self.method} {_flag(imported)}" if imported and getattr(ns, imported) else self.method
        for dest, readers in self.own.items():  # an option of this method's other variant
            if variant not in readers and getattr(ns, dest) != self.get_default(dest):
                self._refuse(_flag(dest), variant, readers)
        return ns, extras


def _calibration(args: argparse.Namespace, tokenizer, langs: list[str]) -> dict[str, list[list[int]]]:
    from lm_eval_lingreg.corpora import make_samples

    return {lang: make_samples(tokenizer, lang, args.samples, data=args.data, unit=args.unit, seq_len=args.seq_len, seed=args.seed).input_ids for lang in langs}


def _source_region(args: argparse.Namespace, meta: dict):
    """(region, LAPE neurons found or None) from a source other than importance scores (magnitude, wanda, lape, super-weight)."""
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
        return _imported_region(args, meta), None
    model, tokenizer = _args.load(args)
    meta |= {"model": args.pretrained or DEFAULT_MODEL, "model_fingerprint": model_fingerprint(model)}
    if args.kind == "magnitude":
        return select_magnitude(model, args.ratio, args.which, args.scope, meta), None
    if args.kind == "super-weight":
        return _super_weight_region(args, model, tokenizer, meta), None
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
    """Wanda or LAPE: one body forward over the calibration samples, then the selection; (region, LAPE neurons or None)."""
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
            return select_wanda(model, norms, args.ratio, args.which, args.per_row, args.scope, meta | calib | {"tokens": tokens}), None
        if len(langs) < 2:
            raise UsageError("LAPE compares languages: give --langs with at least two")
        probs, tokens = activation_probabilities(model, samples, args.batch_size, pad_id, bar.update)
    neurons = lape_neurons(probs, args.top_rate, args.filter_rate, args.bar_rate)
    for lang, per_layer in zip(langs, neurons, strict=True):
        print(f"LAPE {lang}: {sum(t.numel() for t in per_layer)} neurons")
    lape_meta = {
        "top_rate": args.top_rate,
        "filter_rate": args.filter_rate,
        "bar_rate": args.bar_rate,
        "neurons": {k: sum(t.numel() for t in v) for k, v in zip(langs, neurons, strict=True)},
    }
    positions = [langs.index(args.lang)] if args.lang else None
    region = lape_region(neurons, scope_shapes(model, args.scope), positions, args.gate_up, meta | calib | {"tokens": tokens, "lang": args.lang, **lape_meta})
    return region, neurons


def _model_files(pretrained: str | None) -> list[Path]:
    """The model folder and its files, when `pretrained` is a local folder (an output must never replace them)."""
    if pretrained is None:
        from lm_eval_lingreg.bundled import model_dir

        folder = model_dir()
    else:
        folder = Path(pretrained).expanduser()
    return [folder, *folder.iterdir()] if folder.is_dir() else []


def _command() -> str:
    return "lingreg " + " ".join(sys.argv[1:])


def _wrote(args: argparse.Namespace, region: Any) -> None:
    print(f"wrote {args.out}: {region.metadata['kind']} region, {region.num_selected} entries ({region.density:.3%}) over {len(region.shapes)} tensors")


def cmd_extract_source(args: argparse.Namespace) -> int:
    """magnitude, wanda, lape, super-weight: from the model (or an imported neuron or coordinate file)."""
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.outputs import check_not_input, check_writable
    from lm_eval_lingreg.region_io import format_for, save_region

    fmt = format_for(args.out)
    check_writable(args.out, directory=fmt == "official", overwrite=args.overwrite)
    inputs = [*_model_files(args.pretrained), *(p for p in (args.neurons, args.coordinates) if p)]
    check_not_input(args.out, inputs)
    save_neurons = args.kind == "lape" and not args.neurons and args.save_neurons
    if save_neurons:
        check_writable(save_neurons)
        check_not_input(save_neurons, [*inputs, args.out])
    region, neurons = _source_region(args, {"lm_eval_lingreg": __version__, "command": _command()})
    save_region(region, args.out, fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
    if save_neurons:
        import torch

        from lm_eval_lingreg.outputs import atomic_path

        with atomic_path(save_neurons, overwrite=True) as tmp:
            torch.save(neurons, tmp)
        print(f"wrote {save_neurons}: LAPE neurons (a list per language of a list per layer of indices)")
    _wrote(args, region)
    return 0


def cmd_extract_scored(args: argparse.Namespace) -> int:
    """core, monolingual: from the score files of `lingreg score`."""
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.outputs import check_not_input, check_writable
    from lm_eval_lingreg.region_io import format_for, save_region
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual

    fmt = format_for(args.out)
    check_writable(args.out, directory=fmt == "official", overwrite=args.overwrite)
    if not args.scores:
        raise UsageError(f"`lingreg extract {args.kind}` needs --scores: the folder written by `lingreg score`")
    if args.kind == "monolingual" and not args.lang:
        raise UsageError("`lingreg extract monolingual` needs --lang (e.g. --lang ar)")
    if args.kind == "monolingual" and args.which == "random":
        raise UsageError("a monolingual region is built from --which top or bottom; for a random control use `lingreg extract core --which random`")
    langs = parse_languages(args.langs) if args.langs else None
    scores = ScoreSet(args.scores, langs or (None if args.kind == "core" and args.all_scored else list(CORE_LANGUAGES)))
    check_not_input(args.out, scores.files)
    meta = {**scores.provenance(), "lm_eval_lingreg": __version__, "command": _command()}
    if args.kind == "core":
        region = select_core(scores.get, scores.names, scores.langs, args.ratio, which=args.which, seed=args.seed, metadata=meta, per_expert=args.per_expert)
    else:
        lang = parse_languages(args.lang)[0]
        region = select_monolingual(scores.get, scores.names, lang, scores.langs, args.ratio, metadata=meta, which=args.which, per_expert=args.per_expert)
    save_region(region, args.out, fmt, overwrite=args.overwrite, max_dense_gb=args.max_dense_gb)
    _wrote(args, region)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract a region: core|monolingual from score files; magnitude, wanda, lape, super-weight from the model (other published definitions)",
        description="Extract a region: core or monolingual from score files; magnitude, wanda, lape or super-weight from the model. "
        "`lingreg extract METHOD --help` lists a method's options.",
    )
    methods = p.add_subparsers(dest="kind", required=True, metavar="METHOD", parser_class=_MethodParser)
    options = _options()
    for method, help_text in METHODS.items():
        s = methods.add_parser(method, help=help_text, description=help_text, method=method, options=options)
        for dest in s.own:
            s.add_argument(_flag(dest), **options[dest][0])
        s.add_argument("--out", required=True, help="output region file (.safetensors, .pt, or a directory)")
        s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
        _args.dense_option(s)
        if method in _SCORED:
            s.set_defaults(func=cmd_extract_scored, pretrained=None)  # the bundled model stays an input no output may replace
        else:
            _args.model_options(s)
            s.set_defaults(func=cmd_extract_source)
        s.set_defaults(**{dest: kwargs["default"] for dest, (kwargs, _) in options.items() if dest not in s.own})  # one namespace for every method
