"""`lingreg table`, `compare`, `check`, `plot`, `baseline`: results into tables, comparisons, gates and figures."""

from __future__ import annotations

import argparse
import sys

from lm_eval_lingreg.cli import _args

METRIC_HELP = (
    "perplexity tasks: bits_per_byte, byte_perplexity, word_perplexity, token_perplexity; generation: lang_fidelity, line_pass, "
    "word_pass, chrf; translation: mt_chrf, mt_fidelity; steering: steer_success, steer_chrf, steer_score"
)


def _metric(args: argparse.Namespace, runs, fallback: str) -> str:
    """The --metric given, else `fallback` when the runs have it, else the first metric they have (lang_fidelity, mt_chrf)."""
    from lm_eval_lingreg.results import METRICS

    if args.metric:
        return args.metric
    have = {m for r in runs for v in r.values.values() for m in v}
    return fallback if fallback in have else next((m for m in (fallback, "lang_fidelity", "mt_chrf", "steer_score", *METRICS) if m in have), fallback)


def _runs(args: argparse.Namespace, output: str | None = None):
    """The runs under the paths; an `output` that is one of their files is refused (it would destroy the input)."""
    from lm_eval_lingreg.outputs import check_not_input
    from lm_eval_lingreg.results import load_runs

    runs = load_runs(args.paths, _args.labels(args.label))
    if output:
        check_not_input(output, [r.path for r in runs])
    print(f"{len(runs)} run(s): " + ", ".join(f"{r.label} [{r.path}]" for r in runs), file=sys.stderr)
    return runs


def cmd_table(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.report import build_table, render_table

    if args.output:
        from lm_eval_lingreg.outputs import check_writable

        check_writable(args.output)
    runs = _runs(args, args.output)
    df = build_table(runs, _metric(args, runs, "bits_per_byte"), args.ratio_to, ci=_level(args.ci), allow_mixed=args.allow_mixed_bos)
    text = render_table(df, args.format)
    if args.costs:
        text += "\n\n" + costs_table(runs)
    _args.emit(text, args.output)
    return 0


def _level(ci: float | None) -> float | None:
    from lm_eval_lingreg.uncertainty import check_level

    return None if ci is None else check_level(ci)


def costs_table(runs) -> str:
    """What each run cost: dtype, device, tokens scored, scoring time and tokens/s (as recorded by lingreg wrappers)."""
    from tabulate import tabulate

    rows = [
        [
            r.label,
            r.info.get("dtype", ""),
            r.info.get("device", ""),
            r.info.get("tokens_scored", ""),
            r.info.get("scoring_seconds", ""),
            r.info.get("tokens_per_second", ""),
            r.info.get("wall_seconds", ""),
        ]
        for r in runs
    ]
    return tabulate(rows, headers=["run", "dtype", "device", "tokens scored", "scoring s", "tokens/s", "wall s"], tablefmt="github", missingval="")


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.report import check_tolerance, compare, fmt_value, load_baseline

    check_tolerance(args.rtol, args.atol)
    rows = compare(_runs(args), load_baseline(args.baseline), rtol=args.rtol, atol=args.atol, ci=_level(args.ci), allow_mixed=args.allow_mixed_bos)

    def rel(r: dict) -> str:
        if r["rel"] != r["rel"]:
            return ""
        return f"{r['rel']:+.1%}" if abs(r["rel"]) < 100 else f"x{r['rel'] + 1:.3g}"

    table = [
        [
            r["condition"],
            r["language"],
            r["metric"] if r["metric"] == r["compared_metric"] else f"{r['metric']} vs {r['compared_metric']}",
            fmt_value(r["value"]),
            fmt_value(r["got"]),
            rel(r),
            r["status"],
            f"{r['kind'] or ''} {r['source']}".strip(),
        ]
        for r in rows
    ]
    print(
        tabulate(
            table,
            headers=["condition", "lang", "metric", "baseline", "this run", "rel. change", "status", "baseline source"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    flagged = [r for r in rows if r["status"] != "ok"]
    print(
        f"\n{len(rows)} baseline values: {sum(r['status'] == 'ok' for r in rows)} agree within rtol={args.rtol:g}, atol={args.atol:g}; {len(flagged)} flagged "
        f"({', '.join(sorted({r['status'] for r in flagged})) or 'none'})"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when every check passes, 1 on a regression, 2 on bad input (raised before any verdict)."""
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.report import check_tolerance, load_baseline
    from lm_eval_lingreg.rules import gate, load_rules

    if not args.baseline and not args.rules:
        raise UsageError("give --baseline and/or --rules to check against")
    check_tolerance(args.rtol, args.atol)
    level = _level(args.ci)
    baseline = load_baseline(args.baseline) if args.baseline else None
    rules = load_rules(args.rules) if args.rules else None
    v = gate(_runs(args), baseline, rules, args.rtol, args.atol, level, args.strict, args.both_ways, args.allow_mixed_bos)
    note = f" ({v.skipped} baseline values for conditions or languages not in these runs were skipped; --strict fails on them)" if v.skipped else ""
    if v.passed:
        print(f"PASS: {v.checked} checks{note}")
        return 0
    print(f"FAIL: {len(v.failures)} of {v.checked} checks failed{note}")
    for f in v.failures[: args.max_report]:
        print("  - " + f)
    if len(v.failures) > args.max_report:
        print(f"  ... and {len(v.failures) - args.max_report} more")
    return 1


def cmd_plot(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.plots import plot_heatmap, plot_region_density

    check_writable(args.output, figure=True)
    if args.mask:
        from lm_eval_lingreg.region_io import load_region

        plot_region_density(load_region(args.mask), args.output)
    else:
        if not args.paths:
            raise UsageError("give results folders/files to plot, or --mask for a region density plot")
        runs = _runs(args)
        if args.ci is not None:
            from lm_eval_lingreg.plots import plot_ratios

            plot_ratios(runs, args.output, _metric(args, runs, "token_perplexity"), args.ratio_to, _level(args.ci))
        else:
            plot_heatmap(runs, args.output, _metric(args, runs, "token_perplexity"), args.ratio_to)
    print(f"wrote {args.output}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.outputs import check_writable, write_json
    from lm_eval_lingreg.report import baseline_from_runs

    check_writable(args.output)
    runs = _runs(args, args.output)
    metric = _metric(args, runs, "token_perplexity")
    data = baseline_from_runs(runs, args.source, args.model or runs[0].model, metric, args.note)
    write_json(args.output, data)
    nan = sum(1 for r in runs for iso, v in r.values.items() if metric in v and v[metric] != v[metric])
    print(
        f"wrote {args.output}: {len(data['values'])} values from {len(runs)} runs"
        + (f"; {nan} NaN values left out (a baseline holds numbers only)" if nan else "")
    )
    return 0


def _common(s: argparse.ArgumentParser) -> None:
    _args.label_option(s)
    s.add_argument("--allow-mixed-bos", action="store_true", help="take ratios between runs that treated BOS differently (rolling_bos)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.results import METRICS

    s = sub.add_parser("table", help="leaderboard table: languages x conditions, from lm-eval results")
    s.add_argument("paths", nargs="+", help="results JSON files or folders (searched recursively)")
    s.add_argument("--metric", choices=METRICS, default=None, help=METRIC_HELP + " (default bits_per_byte; lang_fidelity or mt_chrf for runs of those tasks)")
    s.add_argument("--ratio-to", default=None, help="divide every run by the run with this label, e.g. base (generation/translation metrics: subtract it)")
    s.add_argument("--format", choices=["markdown", "csv", "latex", "html", "json"], default="markdown")
    s.add_argument("-o", "--output", default=None, help="write the table here (default: print)")
    s.add_argument("--ci", type=_args.positive_float, default=None, metavar="LEVEL", help="bootstrap intervals over documents, e.g. --ci 95")
    s.add_argument("--costs", action="store_true", help="also list each run's dtype, device, tokens scored and tokens/s")
    _common(s)
    s.set_defaults(func=cmd_table)

    s = sub.add_parser("compare", help="runs side by side with a baseline file, with deltas; flags what disagrees")
    s.add_argument("paths", nargs="+")
    s.add_argument("--baseline", required=True, help="baseline file (see baselines/README.md)")
    s.add_argument("--rtol", type=float, default=0.05, help="relative tolerance (default 0.05)")
    s.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    s.add_argument(
        "--ci", type=_args.positive_float, default=None, metavar="LEVEL", help="flag a difference only when the run's interval excludes the baseline"
    )
    _common(s)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("check", help="regression gate: exit 0 pass, 1 regression, 2 bad input")
    s.add_argument("paths", nargs="+")
    s.add_argument("--baseline", default=None, help="values to match (lower-is-better metrics: worse than tolerance fails)")
    s.add_argument("--rules", default=None, help="YAML expectation rules (see baselines/rules-bundled.yaml)")
    s.add_argument("--rtol", type=float, default=0.05)
    s.add_argument("--atol", type=float, default=0.0)
    s.add_argument("--both-ways", action="store_true", help="also fail when a value is better than the baseline beyond tolerance")
    s.add_argument("--strict", action="store_true", help="fail on baseline values missing from the runs")
    s.add_argument("--max-report", type=_args.positive_int, default=20, help="failures to list (default 20)")
    s.add_argument(
        "--ci",
        type=_args.positive_float,
        default=None,
        metavar="LEVEL",
        help="baseline comparisons: flag only when the interval excludes the value (rules set `ci:` themselves)",
    )
    _common(s)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("plot", help="heatmap of languages x conditions (log ratio to base), or --mask for region density")
    s.add_argument("paths", nargs="*")
    s.add_argument("-o", "--output", required=True, help=".png or .svg")
    s.add_argument(
        "--metric", choices=METRICS, default=None, help=METRIC_HELP + " (default token_perplexity; lang_fidelity or mt_chrf for runs of those tasks)"
    )
    s.add_argument("--ratio-to", default="base", help="label of the run to divide by, or subtract for generation/translation metrics (default base)")
    s.add_argument("--mask", default=None, help="plot a region's density per layer x module instead")
    s.add_argument(
        "--ci",
        type=_args.positive_float,
        default=None,
        metavar="LEVEL",
        help="plot each run's ratios per language with bootstrap intervals instead of the heatmap",
    )
    _common(s)
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("baseline", help="write a reference baseline file from runs of this tool")
    s.add_argument("paths", nargs="+")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--source", required=True, help="how the runs were produced (the command)")
    s.add_argument("--model", default=None, help="model name to record (default: from the runs)")
    s.add_argument(
        "--metric", choices=METRICS, default=None, help=METRIC_HELP + " (default token_perplexity; lang_fidelity or mt_chrf for runs of those tasks)"
    )
    s.add_argument("--note", default="")
    _args.label_option(s)
    s.set_defaults(func=cmd_baseline)
