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

    if args.paper_protocol:
        if args.only and args.only.strip() != "protocol":
            raise UsageError("--paper-protocol runs the protocol experiment; leave out --only, or pass --only protocol")
        args.only = "protocol"
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
        if args.limit is not None:
            import dataclasses

            from lm_eval_lingreg.reproduce import LIMIT_FIELDS

            plans = {
                n: dataclasses.replace(p, **{LIMIT_FIELDS[n]: args.limit}) if getattr(p, LIMIT_FIELDS.get(n, ""), None) is not None else p
                for n, p in plans.items()
            }
        command = " ".join(
            [
                "lingreg reproduce",
                *(["--quick"] if args.quick else []),
                *(["--only", ",".join(names)] if args.only else []),
                *(["--limit", str(args.limit)] if args.limit is not None else []),
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
    from lm_eval_lingreg.evaluation import DEFAULT_LIMIT

    s = sub.add_parser("reproduce", help="run the paper's experiments on the bundled model and write a report (--quick: CI-sized; times in bench/README.md)")
    s.add_argument("--quick", action="store_true", help="CI-sized: 6 languages x 3 short documents, 1%% regions, 10 candidate dimensions, 3 training steps")
    s.add_argument(
        "--only", default=None, help="comma-separated experiments: regions, dimensions, forgetting (the default: all three), evaluation, protocol and methods"
    )
    s.add_argument("--out", default="lingreg-reproduce", help="results folder: one subfolder per experiment (default ./lingreg-reproduce)")
    s.add_argument("--doc", default=None, help="report path (default <out>/REPRODUCTION.md, or <out>/<EXPERIMENT>.md with one --only)")
    s.add_argument(
        "--paper-protocol",
        action="store_true",
        help="score with every official choice (documents, batch-token loss, bf16 accumulation) beside the default protocol, "
        "with checkpoints, and compare their regions and harness results (the `protocol` experiment; the longest, see bench/README.md)",
    )
    s.add_argument(
        "--limit",
        type=_args.positive_int,
        default=None,
        help=f"UDHR documents per language in the harness runs of regions, dimensions, forgetting, protocol and methods (default: each experiment's own; "
        f"regions reads {DEFAULT_LIMIT}); evaluation compares its own fixed counts",
    )
    s.add_argument("--from-results", action="store_true", help="only rewrite the report from the results under --out")
    s.add_argument("--baseline", default=None, help="also write the reference baseline file of the regions results here")
    s.add_argument("--overwrite", action="store_true", help="replace experiment folders under --out that an earlier reproduce did not write")
    _args.model_options(s)
    s.set_defaults(func=cmd_reproduce)
