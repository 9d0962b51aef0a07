"""`lingreg steer-vector`: a residual steering vector from one language to another (DiffMean), for `vector=` perturbations
and lm-eval's own `steered` model."""

from __future__ import annotations

import argparse
import shlex
import sys

from lm_eval_lingreg.cli import _args


def cmd_steer_vector(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.anatomy import hidden_size, model_name
    from lm_eval_lingreg.errors import UsageError
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.outputs import check_writable
    from lm_eval_lingreg.perturbation import Perturbation
    from lm_eval_lingreg.steering import diffmean, export_steered, save_vectors

    codes = [parse_languages([code]) for code in (args.source, args.target)]
    if any(len(c) != 1 for c in codes):
        raise UsageError(f"--from {args.source} --to {args.target}: a steering vector goes from one language to one other; give one code each, e.g. en and fr")
    args.source, args.target = codes[0][0], codes[1][0]
    if args.source == args.target:
        raise UsageError(f"--from and --to are both {args.source}: a steering vector goes from one language to another")
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out}: steering vectors are written as .safetensors; name it <name>.safetensors")
    if args.steered:
        if Path(args.steered).absolute() == Path(args.out).absolute():
            raise UsageError("--out and --steered name the same file; give each its own")
        if not args.steered.endswith((".pt", ".pth")):
            raise UsageError(f"--steered {args.steered}: lm-eval's steered model reads .pt files; name it <name>.pt")
    elif args.alpha is not None:
        raise UsageError("--alpha is the coefficient written into the --steered file; give --steered too")
    check_writable(args.out)  # both outputs, before the model is read
    if args.steered:
        check_writable(args.steered)
    if args.steered and args.alpha is not None and abs(args.alpha) > 3.4e38:
        raise UsageError(f"--alpha {args.alpha:g} overflows float32 (largest 3.403e+38); use a smaller coefficient")
    layers = None if args.layers in (None, "all") else Perturbation.from_dict({"layers": args.layers.replace(",", "+"), "dim": 0, "op": "zero"}).layers
    model, tokenizer = _args.load(args)
    info: dict = {}
    source = args.data or "eld"
    print(f"measuring {args.source} -> {args.target} on {args.samples} sentences per language ({source})", file=sys.stderr)
    vectors = diffmean(model, tokenizer, args.source, args.target, layers=layers, samples=args.samples, info=info, data=args.data)
    metadata = {
        "method": "diffmean",
        "source": args.source,
        "target": args.target,
        "samples": args.samples,
        "calibration": f"{source} sentences, BOS position left out",
        "tokens": info["tokens"],
        "model": model_name(model),
        "command": _command(args),
        "lingreg_version": __version__,
    }
    save_vectors(vectors, args.out, metadata)
    rows = ", ".join(f"L{la} {float(v.norm()):.3g}" for la, v in vectors.items())
    print(f"vector norms: {rows} (hidden size {hidden_size(model)})")
    print(f"wrote {args.out}")
    if args.steered:
        alpha = 4.0 if args.alpha is None else args.alpha
        export_steered(vectors, args.steered, alpha, model)
        print(f"wrote {args.steered} (lm_eval --model steered --model_args pretrained=...,steer_path={args.steered}; coefficient {alpha:g})")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that makes these vectors again."""
    words = ["lingreg", "steer-vector", "--from", args.source, "--to", args.target, "--samples", str(args.samples)]
    for flag, value in (("--layers", args.layers), ("--data", args.data), ("--pretrained", args.pretrained), ("--dtype", args.dtype), ("--out", args.out)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("steer-vector", help="a residual steering vector from one language to another (DiffMean), per layer")
    s.add_argument("--from", dest="source", required=True, help="the language to steer away from (ISO code, e.g. en)")
    s.add_argument("--to", dest="target", required=True, help="the language to steer towards (ISO code, e.g. fr)")
    s.add_argument("--layers", default=None, help="layers to measure: 2,3 or 0-3 or all (default all)")
    s.add_argument("--samples", type=_args.positive_int, default=64, help="calibration sentences per language (default 64)")
    s.add_argument(
        "--data",
        default=None,
        help="calibration text: 'eld' (default, offline), a directory of <iso>.txt/.jsonl, a file, or datasets:<path> (as `lingreg score --data`)",
    )
    s.add_argument("--out", required=True, help="the vectors, .safetensors (use with vector=<file>:value=<alpha>)")
    s.add_argument("--steered", default=None, help="also write lm-eval's `steered` model file (.pt)")
    s.add_argument("--alpha", type=_args.finite_float, default=None, help="the coefficient written into --steered (default 4)")
    _args.model_options(s)
    s.set_defaults(func=cmd_steer_vector)
