"""One rule for every command: no output may be, contain, or lie inside one of its inputs.

Each command's inputs and outputs are read off its parsed arguments by name (`INPUT_ARGS`,
`OUTPUT_ARGS`), before the command runs. Inputs are the model folder (the bundled one when
`--pretrained` is left out), masks by path or by shipped name, corpora, score sets, dumps, rules,
baselines, coordinates, neuron files and the results files under the given folders; what the
package ships (its masks, tasks and baselines) and the bundled model's cache are inputs of every
command, since defaults read them; `reproduce` reads its experiment folders to write its report
and baseline. `--overwrite` never changes this rule.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

#: Arguments that name what a command reads (paths, shipped mask names, or specs that contain them).
INPUT_ARGS = (
    "mask",
    "masks",
    "pretrained",
    "data",
    "scores",
    "dump",
    "src",
    "a",
    "b",
    "rules",
    "coordinates",
    "neurons",
    "lora",
    "freeze",
    "compare",
    "conditions",
)
#: Arguments that name what a command writes.
OUTPUT_ARGS = ("out", "output", "output_path", "json", "plot", "doc", "save_neurons", "dst", "steered")
#: Inputs read as a whole folder: nothing may be written inside them.
WHOLE = ("pretrained", "mask", "masks", "src", "a", "b", "data", "lora")


_FREEZE = re.compile(r"(core|bottom):([0-9.]+)")


def _tokens(value: object) -> list[str]:
    """The value, and its parts between , ; : = (a spec such as base,mask=core names masks inside it)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if isinstance(v, str) and v.strip():
            out.append(v)
            out += [t for t in re.split(r"[,;:=]", v) if t.strip() and t != v]
            # --freeze core:0.05 is the shipped mask core-top-5
            out += [f"core-{'top' if k == 'core' else 'bottom'}-{float(r) * 100:g}" for k, r in _FREEZE.findall(v) if r.replace(".", "", 1).isdigit()]
    return out


def _as_input(token: str) -> Path | None:
    """The existing path a token names, directly or as a shipped mask name; None if it names none."""
    from lm_eval_lingreg.errors import LingregError
    from lm_eval_lingreg.region_io import resolve

    path = Path(token).expanduser()
    try:
        if path.exists():
            return path
    except OSError:  # a name too long for the file system names no file; the command judges the value itself
        return None
    try:
        return resolve(token)
    except (LingregError, OSError, ValueError):
        return None


def inputs_of(args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """(path, whole folder?) for everything the command reads."""
    found: list[tuple[Path, bool]] = []
    for name in INPUT_ARGS:
        for token in _tokens(getattr(args, name, None)):
            path = _as_input(token)
            if path is not None:
                found.append((path, name in WHOLE and path.is_dir()))
    found += [(p, True) for p in _always_read() if p.exists()]  # the bundled model among them, read when --pretrained is left out
    if getattr(args, "baseline", None) and args.command != "reproduce":
        found += [(p, False) for p in map(Path, _tokens(args.baseline)[:1]) if p.exists()]
    if getattr(args, "paths", None) and args.command in ("table", "compare", "check", "plot", "baseline"):
        from lm_eval_lingreg.errors import LingregError
        from lm_eval_lingreg.results import find_results

        try:
            found += [(p, False) for p in find_results(args.paths)]
        except LingregError:
            pass  # the command names that problem itself
    return found


def _always_read() -> list[Path]:
    """What defaults read whatever the arguments say: the shipped masks, tasks and baselines, and the bundled model's cache."""
    from lm_eval_lingreg.bundled import model_dir
    from lm_eval_lingreg.resources import baselines_dir, masks_dir, tasks_dir

    return [masks_dir(), tasks_dir(), baselines_dir(), model_dir()]


def _path(value: object) -> Path | None:
    return Path(value) if isinstance(value, (str, os.PathLike)) and str(value) else None


def outputs_of(args: argparse.Namespace) -> list[Path]:
    outs = [p for name in OUTPUT_ARGS if (p := _path(getattr(args, name, None))) is not None]
    if args.command == "reproduce" and (p := _path(getattr(args, "baseline", None))) is not None:
        outs.append(p)
    return outs


def _report_inputs(args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """`reproduce` writes its report and baseline from the experiment folders under --out: those are read whole."""
    from lm_eval_lingreg import experiments

    out = _path(getattr(args, "out", None))
    return [(out / name, True) for name in experiments.NAMES if out is not None and (out / name).exists()]


def check_io(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, an output that is, holds, or (for folders read whole) lies inside an input."""
    outs = outputs_of(args)
    if not outs:
        return
    ins = inputs_of(args)
    for out in outs:
        _check_one(out, ins)
    if args.command == "reproduce":  # the report and baseline, not the results folder that holds the experiments
        report = [p for p in (_path(getattr(args, "doc", None)), _path(getattr(args, "baseline", None))) if p is not None]
        for out in report:
            _check_one(out, _report_inputs(args))


def _check_one(out: Path, ins: list[tuple[Path, bool]]) -> None:
    from lm_eval_lingreg.errors import OutputError

    if not out.name or out.name in (".", ".."):
        return  # not an output name at all: the command itself says so
    o = out.expanduser().resolve()
    for path, whole in ins:
        p = path.resolve()
        if o == p:
            raise OutputError(f"{out} is one of the inputs ({path}); writing there would destroy it: name another output (--overwrite does not change this)")
        if o in p.parents:
            raise OutputError(f"{out} holds one of the inputs ({path}); replacing it would destroy that: name another output")
        if whole and p in o.parents and (o.exists() or o.is_symlink()):
            raise OutputError(f"{out} is one of the inputs (a file of {path}); writing there would destroy it: name another output")
        if whole and p in o.parents:
            raise OutputError(f"{out} lies inside {path}, which this command reads as a whole; writing there would change an input: name an output elsewhere")
