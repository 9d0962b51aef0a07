"""`lingreg dims`, `scan`, `generate`: the hidden dimensions a region concentrates on, and what perturbing them does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args


def cmd_dims(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.dimensions import dimension_counts, mean_abs_activations
    from lm_eval_lingreg.outputs import check_writable, write_json
    from lm_eval_lingreg.region_io import load_region

    if args.json and args.plot and Path(args.json).absolute() == Path(args.plot).absolute():
        from lm_eval_lingreg.errors import UsageError

        raise UsageError("--json and --plot name the same file; give each its own")
    if args.json:
        check_writable(args.json)
    if args.plot:
        check_writable(args.plot, figure=True)
    region = load_region(args.mask)
    acts = None
    if args.activations:
        from lm_eval_lingreg.corpora import read_texts
        from lm_eval_lingreg.languages import parse_languages
        from lm_eval_lingreg.regions import validate

        texts = [t for iso in parse_languages(args.langs) for t in read_texts(iso, args.data)[0][: args.samples]]
        model, tokenizer = _args.load(args)
        validate(region, model)
        acts = mean_abs_activations(model, tokenizer, texts)
    dc = dimension_counts(region)
    data = dc.to_json(args.top, acts)
    headers = ["rank", "dim", "entries", "share of its entries", "norm", "columns read", "rows written", "top layers (entries)"]
    rows = [
        [i, r["dim"], r["total"], f"{r['share']:.2%}", r["norm"], r["read"], r["write"], ", ".join(f"L{k} ({v})" for k, v in r["top_layers"].items())]
        for i, r in enumerate(data["dims"], 1)
    ]
    if acts:
        headers += ["mean |act|", "act rank"]
        for row, r in zip(rows, data["dims"], strict=True):
            row += [f"{r['mean_abs_activation']:.3g}", r["activation_rank"]]
    print(
        f"{int(dc.total.sum())} region entries over {dc.hidden} hidden dimensions x {data['layers']} layers; "
        f"each dimension has {dc.entries_per_dim} entries; mean {data['mean_per_dim']:.1f} / median {data['median_per_dim']:.0f} region entries per dimension"
    )
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if acts:
        print(f"activations: {acts['tokens']} tokens; largest mean |activation| / median = {acts['max_over_median']:.1f}; top dims {acts['top'][:5]}")
    if args.json:
        write_json(args.json, data)
        print(f"wrote {args.json}")
    if args.plot:
        from lm_eval_lingreg.plots import plot_dimensions

        plot_dimensions(dc, args.plot, top=args.top)
        print(f"wrote {args.plot}")
    return 0


def _op_value(args: argparse.Namespace) -> float | None:
    """--value for the ops that take one (default 4); zero and mean take none, and a --value given to them is refused."""
    if args.op in ("zero", "mean"):
        if args.value is not None:
            from lm_eval_lingreg.errors import UsageError

            raise UsageError(f"--op {args.op} takes no --value (got {args.value:g}); use --op set to write a value")
        return None
    return 4.0 if args.value is None else args.value


def cmd_scan(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.anatomy import hidden_size
    from lm_eval_lingreg.dimensions import dimension_counts
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.outputs import check_writable, write_json
    from lm_eval_lingreg.perturbation import Perturbation
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.scan import ProbeSet, dimension_candidates, pick_dimensions, probe_texts, scan, template

    langs = parse_languages(args.langs)
    if args.output:
        check_writable(args.output)
    layers = Perturbation.from_dict({"layers": args.layer, "dim": 0, "op": "zero"}).layers
    op = {"op": args.op, "value": _op_value(args), "on": args.on, "scale": args.scale, "seed": args.seed}
    modules = tuple(m for m in args.modules.replace(",", "+").split("+") if m)
    mask = args.mask if args.mask is not None else ("core" if args.pretrained in (None, "", DEFAULT_MODEL) else None)
    region = load_region(mask) if mask else None
    probe_docs = probe_texts(langs, args.docs)
    model, tokenizer = _args.load(args)
    if region is not None:
        from lm_eval_lingreg.regions import validate

        validate(region, model)  # the mask's declared shapes are the model's before anything is sized from them
    counts = dimension_counts(region, hidden_size(model)) if region is not None else None
    hidden = hidden_size(model) or (counts.hidden if counts is not None else 0)
    dims = pick_dimensions(args.dims, counts.ranked() if counts is not None else None, hidden, args.seed)
    cands = dimension_candidates(dims, param=args.param, layers=layers, modules=modules, **op)
    probe = ProbeSet.build(tokenizer, probe_docs, args.tokens)
    print(f"scanning {len(cands)} candidates on {len(langs)} languages x {args.docs} UDHR documents (<= {args.tokens} tokens each)", file=sys.stderr)
    result = scan(model, probe, cands, tokenizer=tokenizer)
    if counts is not None:
        for r in result["rows"]:
            r["region_entries_on_dim"] = int(counts.total[r["dim"]])
    result.update(what=template(cands), mask=mask, docs=args.docs, tokens=args.tokens)
    rows = [
        [r["rank"], r["label"], r.get("region_entries_on_dim", ""), *(f"{r['ratio'][iso]:.3g}" for iso in langs), f"{r['geomean_ratio']:.3g}"]
        for r in result["rows"]
    ]
    print(f"perturbation: {result['what']}; base token perplexity: " + ", ".join(f"{iso} {v:.3g}" for iso, v in result["base_perplexity"].items()))
    print(tabulate(rows, headers=["rank", "candidate", "region entries", *(f"x ppl {iso}" for iso in langs), "geo-mean"], tablefmt="github"))
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.generation import generate, parse_conditions
    from lm_eval_lingreg.outputs import check_writable, write_json

    if args.output:
        check_writable(args.output)
    conditions = parse_conditions(args.compare)
    if any(not p.strip() for p in args.prompt):
        from lm_eval_lingreg.errors import UsageError

        raise UsageError('--prompt is empty; give the text to continue, e.g. --prompt "Fudan University is located in"')
    model, tokenizer = _args.load(args)
    rows = generate(model, tokenizer, args.prompt, conditions, max_new_tokens=args.max_new_tokens)
    table = [[r["prompt"], r["condition"], r["continuation"].replace("\n", " ⏎ ")] for r in rows]
    print(tabulate(table, headers=["prompt", "condition", "greedy continuation"], tablefmt="github"))
    if args.output:
        write_json(
            args.output,
            {"max_new_tokens": args.max_new_tokens, "generations": rows, "conditions": {k: [p.to_dict() for p in v] for k, v in conditions.items()}},
        )
        print(f"wrote {args.output}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.perturbation import OPS

    s = sub.add_parser("dims", help="hidden dimensions a region concentrates on (norm entries, rows written, columns read)")
    s.add_argument("mask", help="region file or shipped mask name (e.g. core)")
    s.add_argument("--top", type=_args.positive_int, default=10, help="dimensions to list (default 10)")
    s.add_argument("--json", default=None, help="write the ranking (and per-layer counts of the top dims) as JSON")
    s.add_argument("--plot", default=None, help="write a plot (.png or .svg)")
    s.add_argument("--activations", action="store_true", help="also measure mean |hidden state| per dimension on calibration text")
    s.add_argument("--langs", default="ar,es,ru,zh,ko,vi", help="calibration languages for --activations")
    s.add_argument("--data", default=None, help="calibration corpus for --activations (default: eld sentences)")
    s.add_argument("--samples", type=_args.positive_int, default=8, help="calibration sentences per language for --activations (default 8)")
    _args.model_options(s)
    s.set_defaults(func=cmd_dims)

    s = sub.add_parser("scan", help="apply one perturbation to each candidate dimension in turn; rank by perplexity change")
    s.add_argument(
        "--dims",
        default="top:20,random:20",
        help="candidates: top:N (from --mask), random:N (seeded controls), and/or dimension numbers (default top:20,random:20)",
    )
    s.add_argument("--mask", default=None, help="region whose dimensions rank the candidates (default: core for the bundled model)")
    s.add_argument("--layer", default="1", help="layer(s): 1, 0+1, 0-3 or all (default 1)")
    s.add_argument("--modules", default="all", help="modules at the dimension: all, norms, readers, writers or names joined by + (default all)")
    s.add_argument(
        "--param",
        default=None,
        help="perturb one entry of this 1-D parameter instead (index = the dimension), e.g. model.layers.1.post_attention_layernorm.weight",
    )
    s.add_argument("--op", choices=OPS, default="mul")
    s.add_argument("--value", type=_args.finite_float, default=None, help="operand of the op (default 4; zero and mean take none)")
    s.add_argument(
        "--on",
        choices=["param", "gain", "activation"],
        default="param",
        help="stored weight (default), a norm's effective gain, or the residual-stream activation after each --layer (no weight changes)",
    )
    s.add_argument("--scale", choices=["relative", "absolute"], default="relative", help="for --op noise")
    s.add_argument("--langs", default="en,zh,ar,ru", help="probe languages (default en,zh,ar,ru)")
    s.add_argument("--docs", type=_args.positive_int, default=2, help="UDHR documents per language (default 2)")
    s.add_argument("--tokens", type=_args.positive_int, default=128, help="tokens per document (default 128)")
    s.add_argument("--seed", type=_args.seed, default=0, help="for random:N and op=noise")
    s.add_argument("-o", "--output", default=None, help="write the ranked results as JSON")
    _args.model_options(s)
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("generate", help="greedy continuations under several conditions, side by side")
    s.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    s.add_argument(
        "--compare",
        action="append",
        default=None,
        help="conditions, comma-separated: base, mask=<m>, or perturbations like layer=1:dim=639:op=mul:value=4 (';' composes)",
    )
    s.add_argument("--max-new-tokens", type=_args.positive_int, default=24)
    s.add_argument("-o", "--output", default=None, help="write the generations as JSON")
    _args.model_options(s, device_map=True)
    s.set_defaults(func=cmd_generate)
