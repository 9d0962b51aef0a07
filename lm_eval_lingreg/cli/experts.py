"""`lingreg experts`: the language-specific experts of a mixture-of-experts model: where each language's tokens are
routed, and how its monolingual region spreads over the experts."""

from __future__ import annotations

import argparse

from lm_eval_lingreg.cli import _args


def cmd_experts(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.experts import expert_statistics, language_experts, report_markdown, routing_share
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import validate

    if args.out:
        check_writable(args.out)
    regions = {}
    for mask in args.masks or []:
        region = load_region(mask)
        lang = region.metadata.get("lang")
        if not isinstance(lang, str):
            raise UsageError(f"{mask} names no language (metadata 'lang'): give monolingual regions, from `lingreg extract monolingual --lang X`")
        if lang in regions:
            raise UsageError(f"two regions of {lang!r} given ({mask} and another); give one monolingual region per language")
        regions[parse_languages(lang)[0]] = region
    langs = parse_languages(args.langs) if args.langs else list(regions) or list(CORE_LANGUAGES)
    missing = [lang for lang in regions if lang not in langs]
    if missing:
        raise UsageError(f"the region of {missing[0]!r} is not among --langs {','.join(langs)}; add it, or leave --langs out")
    model, tokenizer = _args.load(args)
    for region in regions.values():
        validate(region, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    samples = {
        lang: make_samples(tokenizer, lang, args.samples, data=args.data, unit=args.unit, seq_len=args.seq_len, seed=args.seed).input_ids for lang in langs
    }
    routing, layers, tokens = {}, [], {}
    with tqdm(total=sum(len(v) for v in samples.values()), desc="routing", unit="sample") as bar:
        for lang in langs:
            stats = expert_statistics(model, samples[lang], False, args.batch_size, pad_id, bar.update)
            routing[lang], layers, tokens[lang] = routing_share(stats), stats.layers, stats.tokens
    report = language_experts(routing, layers, regions)
    report["calibration"] = {"samples": {k: len(v) for k, v in samples.items()}, "tokens": tokens, "unit": args.unit, "data": args.data or "eld"}
    report["regions"] = {lang: str(mask) for lang, mask in zip(regions, args.masks or [], strict=True)}
    if args.out and args.out.endswith(".json"):
        from lm_eval_lingreg.outputs import write_json

        write_json(args.out, report)
        print(f"wrote {args.out}")
        return 0
    _args.emit(report_markdown(report, args.top), args.out)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.corpora import UNITS

    s = sub.add_parser(
        "experts",
        help="language-specific experts of a mixture-of-experts model: each language's routing share per expert, and how its "
        "monolingual region spreads over the experts",
    )
    s.add_argument("masks", nargs="*", help="monolingual regions (`lingreg extract monolingual`), one per language (optional: routing only without)")
    s.add_argument("--langs", default=None, help="languages to route calibration text of (default: the regions' languages, else ar,es,ru,zh,ko,vi)")
    s.add_argument("--samples", type=_args.positive_int, default=50, help="calibration samples per language (default 50)")
    s.add_argument("--data", default=None, help="calibration text (as `lingreg score --data`; default eld, offline)")
    s.add_argument("--unit", choices=UNITS, default="sentences", help="calibration unit (as `lingreg score --unit`)")
    s.add_argument("--seq-len", type=_args.positive_int, default=512, help="sentence truncation / document or block length (default 512)")
    s.add_argument("--batch-size", type=_args.positive_int, default=4, help="samples per forward (default 4)")
    s.add_argument("--seed", type=_args.seed, default=0, help="the calibration sentences' order")
    s.add_argument("--top", type=_args.positive_int, default=5, help="most language-specific experts to list (default 5)")
    s.add_argument("--out", default=None, help="write the report: Markdown, or JSON (every share and count) when it ends in .json (default: print Markdown)")
    _args.model_options(s)
    s.set_defaults(func=cmd_experts)
