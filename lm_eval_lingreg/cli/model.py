"""`lingreg prepare`, `apply`, `params`, `demo`: the model itself, an ablated copy, its parameter names, the main job."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.cli import _args

if TYPE_CHECKING:
    import torch

    from lm_eval_lingreg.regions import Region


def cmd_prepare(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.bundled import prepare

    print(prepare(force=args.force))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.edits import offloaded_entries_set
    from lm_eval_lingreg.outputs import save_model
    from lm_eval_lingreg.region_io import file_sha256, held_value, load_region, resolve
    from lm_eval_lingreg.regions import apply

    path = resolve(args.mask)
    region = load_region(path)
    out = _args.check_output(args, args.out, path, directory=True, overwrite=args.overwrite)
    model, tokenizer = _args.load(args)
    here, away = _split_offloaded(region, model, args.mask_value)
    saved = apply(here, model, args.mask_value)
    entries = saved.num_entries + sum(int(i.numel()) for i in away.values())
    info = {
        "pretrained": args.pretrained or f"{DEFAULT_MODEL} (bundled)",
        "mask": str(args.mask),
        "mask_sha256": file_sha256(path),
        "mask_value": held_value(args.mask_value, region, model),  # as the weights hold it, not as typed
        "entries_changed": entries,
        "mask_metadata": region.metadata,
        "lm_eval_lingreg": __version__,
    }
    with offloaded_entries_set(model, away, args.mask_value):  # written as save_pretrained loads them, a tensor at a time
        save_model(model, tokenizer, out, {"lingreg_ablation.json": info}, overwrite=args.overwrite)
    print(f"wrote {out} ({entries} entries set to {info['mask_value']})")
    print(out.resolve())
    return 0


def _split_offloaded(region: Region, model: torch.nn.Module, value: float) -> tuple[Region, dict[str, torch.Tensor]]:
    """(the region on the weights in memory, {name: indices} on the weights a device map offloads), all checked
    against the model before anything changes."""
    from lm_eval_lingreg.anatomy import named_parameters
    from lm_eval_lingreg.edits import offloaded
    from lm_eval_lingreg.errors import RegionMismatchError
    from lm_eval_lingreg.regions import Region, check_value

    held = offloaded(model)
    away = {n: i for n, i in region.indices.items() if n in held and i.numel()}
    if not away:
        return region, {}
    params = named_parameters(model)
    wrong = [f"{n} (mask {region.shapes[n]}, model {tuple(params[n].shape)})" for n in away if tuple(params[n].shape) != region.shapes[n]]
    if wrong:
        raise RegionMismatchError(f"the mask does not fit this model: {len(wrong)} shape mismatch(es): {wrong[0]}; use a region extracted from this model")
    check_value(value, [params[n] for n in away])
    here = Region({n: i for n, i in region.indices.items() if n not in away}, region.shapes, region.metadata)
    return here, away


def cmd_params(args: argparse.Namespace) -> int:
    import re

    from tabulate import tabulate

    from lm_eval_lingreg.anatomy import model_slots, named_parameters

    pattern = re.compile(args.filter) if args.filter else None
    model, _ = _args.load(args)
    slots, hidden = model_slots(model)
    where = {"norm": "norm entry d", "read": "column d (reads)", "write": "row d (writes)"}
    rows = [
        [n, "x".join(map(str, p.shape)), where[slots[n].role] if n in slots else ""]
        for n, p in named_parameters(model).items()
        if pattern is None or pattern.search(n)
    ]
    if not rows:
        from lm_eval_lingreg.errors import UsageError

        raise UsageError(f"--filter {args.filter!r} matches no parameter of this model; names look like {next(iter(named_parameters(model)), '?')!r}")
    print(tabulate(rows, headers=["parameter", "shape", f"hidden dim d (hidden size {hidden})"], tablefmt="github"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.evaluation import demo
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.outputs import atomic_path

    langs = parse_languages(args.langs)
    bundled = args.pretrained in (None, "", DEFAULT_MODEL)
    masks = [m for m in (args.masks if args.masks is not None else ("core" if bundled else "")).split(",") if m]
    _args.check_output(args, args.output_path, *masks, directory=True, overwrite=args.overwrite, owned_by="lingreg demo")
    with atomic_path(args.output_path, directory=True, overwrite=args.overwrite, owned_by="lingreg demo") as tmp:
        table = demo(lambda: _args.wrapper(args, args.batch_size), masks, langs, args.ratio, args.seed, args.limit, tmp)
    print(table)
    print(f"results JSON per condition under {args.output_path}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lm_eval_lingreg.evaluation import DEFAULT_LIMIT

    s = sub.add_parser("prepare", help="convert the bundled model once; print its local path as the last line")
    s.add_argument("--force", action="store_true", help="convert again even if cached")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("apply", help="write an ablated model as a standard HF checkpoint (safetensors), e.g. for vLLM")
    s.add_argument("--mask", required=True, help="region file, official-layout directory, or shipped mask name")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--mask-value", type=_args.finite_float, default=0.0, help="value written to the selected entries (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    _args.model_options(s, device_map=True)
    s.set_defaults(func=cmd_apply)

    s = sub.add_parser("params", help="parameter names and shapes, and where a hidden dimension sits in each")
    s.add_argument("--filter", type=_args.regex, default=None, help="regex on parameter names, e.g. 'layers\\.1\\.'")
    _args.model_options(s)
    s.set_defaults(func=cmd_params, device="cpu")

    s = sub.add_parser("demo", help="main job: base vs the core region and a seeded random control on the 30 languages")
    s.add_argument(
        "--masks",
        default=None,
        help="comma-separated masks (paths or shipped names) to evaluate beside the random control (default: 'core' for the bundled model, none otherwise)",
    )
    s.add_argument("--langs", default="all", help="comma-separated ISO codes or 'all' (default)")
    s.add_argument("--ratio", type=_args.ratio, default=0.01, help="share of entries per tensor (default 0.01)")
    s.add_argument("--seed", type=_args.seed, default=0)
    s.add_argument(
        "--limit",
        type=_args.limit,
        default=DEFAULT_LIMIT,
        help=f"documents per language, or 'all' for the 31 (default {DEFAULT_LIMIT}; 'all' takes about 3x longer)",
    )
    s.add_argument("--batch-size", type=_args.positive_int, default=1)
    s.add_argument("--output-path", default="lingreg-demo", help="where results JSON go (default ./lingreg-demo; a rerun replaces its own earlier output)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder that an earlier demo did not write")
    _args.model_options(s, device_map=True)
    s.set_defaults(func=cmd_demo)
