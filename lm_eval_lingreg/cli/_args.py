"""Argument helpers shared by the `lingreg` commands: validated types and the common option groups."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.errors import UsageError

PRETRAINED_HELP = f"HF model dir or hub id (default: the bundled {DEFAULT_MODEL})"


def _short(text: str) -> str:
    """A value as an error message shows it: at most 40 characters."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text):,} characters)"


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not a whole number") from exc
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def nonneg_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not a whole number") from exc
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**63 - 1."""
    n = nonneg_int(text)
    if n >= 2**63:
        raise argparse.ArgumentTypeError(f"must be below 2**63, got {text[:30]}")
    return n


def finite_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not a number") from exc
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_short(text)}")
    return x


def nonneg_float(text: str) -> float:
    x = finite_float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {_short(text)}")
    return x


def positive_float(text: str) -> float:
    x = finite_float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {_short(text)}")
    return x


def ratio(text: str) -> float:
    x = finite_float(text)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {_short(text)} (for 1% pass 0.01)")
    return x


def counts(text: str) -> tuple[int, ...]:
    """Comma-separated positive whole numbers, e.g. sample counts `50,100,200`."""
    try:
        return tuple(positive_int(x.strip()) for x in text.split(",") if x.strip())
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts like 50,100,200 ({e})") from e


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression ({e})") from e
    return text


def limit(text: str) -> int | None:
    """Documents per language: a positive number or 'all'."""
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"must be a positive number of documents or 'all', got {_short(text)}") from exc


def model_options(p: argparse.ArgumentParser, dtype: str = "float32", device_map: bool = False) -> None:
    """--pretrained, --device, --dtype (and --device-map): how every command that loads a model loads it."""
    from lm_eval_lingreg.loading import DTYPES

    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available, else CPU), cpu, cuda, cuda:<n> or mps")
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=DTYPES,
        help=f"weights' precision (default {dtype}; auto: bfloat16 where the device computes it natively, else float32)",
    )
    if device_map:
        p.add_argument(
            "--device-map",
            default=None,
            type=device_map_arg,
            help="spread a model too big for one device over GPUs, CPU and disk (accelerate): auto, balanced, sequential, or a JSON "
            'object {module: device} (a GPU index, "cpu" or "disk"), e.g. \'{"model.layers.1": "disk", ...}\'; overrides --device',
        )


#: Named device maps (accelerate computes the placement).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def device_map_arg(text: str) -> str | dict[str, int | str]:
    """A named device map, or a JSON object {module name: GPU index, "cpu", "disk" or "cuda:<n>"}."""
    import json

    if text in DEVICE_MAPS:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(f"use {', '.join(DEVICE_MAPS)} or a JSON object {{module: device}}, got {_short(text)}")
    for module, device in value.items():
        if isinstance(device, bool) or not (
            isinstance(device, int) and device >= 0 or isinstance(device, str) and re.fullmatch(r"cpu|disk|cuda(:\d+)?|\d+", device)
        ):
            raise argparse.ArgumentTypeError(f"device map entry {module!r}: {device!r} is not a GPU index, 'cpu', 'disk' or 'cuda:<n>'")
    return {module: int(device) if str(device).isdigit() else device for module, device in value.items()}


def dense_option(p: argparse.ArgumentParser) -> None:
    """--max-dense-gb: the cap on a region written one byte per entry."""
    from lm_eval_lingreg.region_io import MAX_DENSE_GB

    p.add_argument(
        "--max-dense-gb",
        type=positive_float,
        default=MAX_DENSE_GB,
        help=f".pt and official outputs hold one byte per covered entry: refuse more than this many GB (default {MAX_DENSE_GB:g})",
    )


def resolve_preset(args: argparse.Namespace, defaults: Mapping[str, Any], preset: Mapping[str, Any]) -> None:
    """Fill in each option of `defaults` not given on the command line (None): explicit flags win over the
    preset, the preset over the defaults."""
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))


def label_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")


def labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        where, sep, label = item.partition("=")
        if not sep or not where or not label:
            raise UsageError(f"--label {item!r}: expected PATH=LABEL (e.g. --label out/run1=mul4:L1-N2100)")
        out[where] = label
    return out


def check_output(args: argparse.Namespace, out: str, *more_inputs: str, **target: object):
    """`check_writable(out, **target)`, then refuse an output that is the model folder being read (or holds it),
    or one of `more_inputs`, whatever `--overwrite` says."""
    from lm_eval_lingreg.outputs import check_not_input, check_writable

    checked = check_writable(out, **target)
    check_not_input(out, [p for p in (args.pretrained, *more_inputs) if p and Path(p).exists()])
    return checked


def load(args: argparse.Namespace):
    """(model, tokenizer) as the model options say."""
    from lm_eval_lingreg.loading import load_model

    return load_model(args.pretrained, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None))


def wrapper(args: argparse.Namespace, batch_size: str = "1"):
    """A `LingregLM` (lm-eval wrapper, unchanged model) as the model options say."""
    from lm_eval_lingreg.loading import resolve_device, resolve_dtype
    from lm_eval_lingreg.models import LingregLM

    device_map = getattr(args, "device_map", None)
    device = resolve_device(args.device)
    extra = {"parallelize": True, "device_map": device_map} if device_map else {"device": device}
    return LingregLM(pretrained=args.pretrained, dtype=resolve_dtype(args.dtype, device), batch_size=batch_size, **extra)


def emit(text: str, output: str | None) -> None:
    """Print `text`, or write it atomically to `output`."""
    if output:
        from lm_eval_lingreg.outputs import write_text

        write_text(output, text if text.endswith("\n") else text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)
