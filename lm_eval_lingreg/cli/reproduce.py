"""`lingreg reproduce`: the paper's experiments on the bundled model, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from lm_eval_lingreg.cli import _args


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lm_eval_lingreg import experiments
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.outputs import check_writable, write_json
    from lm_eval_lingreg.reproduce import FULL, QUICK, run, write_report

    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(experiments.PAPER)
    for n in names:
        experiments.module(n)
    if not names:
        raise UsageError("--only is empty; name experiments among " + ", ".join(experiments.NAMES))
    out = Path(args.out)
    doc = Path(args.doc) if args.doc else out / ("REPRODUCTION.md" if len(names) > 1 else f"{names[0].upper()}.md")
    check_writable(doc)
    if args.baseline:
        check_writable(args.baseline)
    if not args.from_results:
        check_writable(out, into=True)
        plans = {n: (QUICK if args.quick else FULL).get(n) or FULL[n] for n in names}
        command = " ".join(
            [
                "lingreg reproduce",
                *(["--quick"] if args.quick else []),
                *(["--only", ",".join(names)] if args.only else []),
                "--out",
                str(args.out),
                "--doc",
                str(doc),
            ]
        )
        run(out, plans, command, lm=_args.wrapper(args), overwrite=args.overwrite)
    write_report(out, doc, names)
    print(f"wrote {doc}")
    if args.baseline:
        from lm_eval_lingreg.experiments import regions

        write_json(args.baseline, regions.baseline(out / "regions", experiments.read_record(out / "regions")))
        print(f"wrote {args.baseline}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("reproduce", help="run the paper's experiments on the bundled model and write a report (about 1 h; --quick: a few minutes)")
    s.add_argument("--quick", action="store_true", help="CI-sized: 6 languages x 1 document, 1%% regions, 8 candidate dimensions, 3 training steps")
    s.add_argument("--only", default=None, help="comma-separated experiments: regions, dimensions, forgetting (the default: all three) and evaluation")
    s.add_argument("--out", default="lingreg-reproduce", help="results folder: one subfolder per experiment (default ./lingreg-reproduce)")
    s.add_argument("--doc", default=None, help="report path (default <out>/REPRODUCTION.md, or <out>/<EXPERIMENT>.md with one --only)")
    s.add_argument("--from-results", action="store_true", help="only rewrite the report from the results under --out")
    s.add_argument("--baseline", default=None, help="also write the reference baseline file of the regions results here")
    s.add_argument("--overwrite", action="store_true", help="replace experiment folders under --out that an earlier reproduce did not write")
    _args.model_options(s)
    s.set_defaults(func=cmd_reproduce)
