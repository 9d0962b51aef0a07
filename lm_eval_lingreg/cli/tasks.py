"""`lingreg tasks`: translation tasks for pairs of the 30 languages beyond the shipped English ones."""

from __future__ import annotations

import argparse


def cmd_tasks(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.language_tasks import SHIPPED_PAIRS, mt_task, parse_pairs, write_pair_tasks
    from lm_eval_lingreg.outputs import check_not_input
    from lm_eval_lingreg.resources import tasks_dir
    from lm_eval_lingreg.udhr import translation_split

    pairs = parse_pairs(args.pairs)
    for s, t in pairs:  # a pair with too few one-paragraph articles fails before anything is written
        translation_split(s, t)
    check_not_input(args.output, [tasks_dir()])
    shipped = [mt_task(s, t) for s, t in pairs if (s, t) in SHIPPED_PAIRS]
    if len(shipped) == len(pairs):
        print(f"{', '.join(shipped)} ship with the package already: run them with lm_eval --tasks {','.join(shipped)}; nothing written")
        return 0
    written = write_pair_tasks(pairs, args.output, overwrite=args.overwrite)
    names = ",".join(p.stem for p in written)
    print(f"wrote {len(written)} task files to {args.output}" + (f"; left out {len(shipped)} that ship with the package already" if shipped else ""))
    print(f"run them with: lm_eval --model hf-lingreg --include_path {args.output} --tasks {names if len(pairs) <= 4 else names.split(',')[0] + ',...'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "tasks",
        help="write lingreg_mt_<src>_<tgt> task files for any pairs of the 30 languages (English to and from each ship already)",
    )
    s.add_argument("--pairs", required=True, help="SRC-TGT pairs, comma-separated: fr-de,zh-ja; SRC<>TGT for both directions; all<>all for all 870")
    s.add_argument("-o", "--output", required=True, help="folder for the task files (pass it to lm_eval --include_path)")
    s.add_argument("--overwrite", action="store_true", help="replace task files already there")
    s.set_defaults(func=cmd_tasks)
