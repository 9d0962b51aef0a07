"""`lingreg`: the command-line interface.

    lingreg prepare                       convert the bundled model once; print its path last
    lingreg apply --mask M --out DIR      write an ablated model as a standard HF checkpoint
    lingreg demo                          base vs core and random 1% regions on the 30 languages
    lingreg score --langs ar,es,... --out scores/     per-language importance (torchrun-able; --preset paper)
    lingreg import-scores DUMP --lang ar --out scores/ scores written by the official code
    lingreg extract core|monolingual ...  regions from score files
    lingreg mask info|compare|convert ... inspect, compare and convert region files
    lingreg params [--filter REGEX]       parameter names, shapes and residual-stream roles
    lingreg dims MASK --top 10            hidden dimensions a region concentrates on
    lingreg experts MONO... --out r.md    mixture of experts: routing share and region spread per language and expert
    lingreg scan --layer 1 --op mul --value 4 --dims top:20,random:20   rank dimensions by effect
    lingreg generate --prompt P --compare base,mask=core,...            greedy outputs side by side
    lingreg steer-vector --from en --to fr --out v.safetensors          a steering vector per layer (DiffMean)
    lingreg train --lang ko --freeze core:0.05 --steps 300 --out ckpt/   further pre-training, region frozen (--preset paper)
    lingreg forget --lang ko --conditions none,core:0.05,random:0.05 -o forget/   the forgetting experiment
    lingreg table out/ [--ratio-to base] [--format markdown|csv|latex|html|json]  leaderboard tables
    lingreg compare out/ --baseline B     side by side with published or reference values
    lingreg check out/ [--baseline B] [--rules R]   regression gate: exit 0 pass, 1 regression, 2 bad input
    lingreg plot out/ -o heatmap.png      languages x conditions, log ratio to base
    lingreg baseline out/ -o B.json       a reference baseline file from runs of this tool
    lingreg reproduce [--quick]           the paper's experiments on the bundled model, with a report
    lingreg tasks --pairs fr-de -o mytasks/   translation tasks for pairs beyond English<->X (lm_eval --include_path)

Every command that loads a model takes --pretrained, --device (auto: CUDA when available) and --dtype.
Exit status 2 means bad input; the `error:` line names the problem and the fix. LINGREG_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import os
import sys

# Imports are made where they are used: Ctrl-C while they run (torch takes seconds) is then caught by `main`.


def build_parser():  # -> argparse.ArgumentParser
    import argparse

    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.cli import dims, experts, model, regions, report, reproduce, steer, tasks, train

    p = argparse.ArgumentParser(prog="lingreg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lm-eval-lingreg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (model, regions, dims, experts, steer, train, report, reproduce, tasks):
        group.add_parsers(sub)
    return p


def _setup_logging(verbose: bool, quiet: bool) -> None:
    """Our progress messages (logging, INFO) on stderr as plain lines; other libraries' only when verbose."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    ours = logging.getLogger("lm_eval_lingreg")
    ours.handlers[:] = [handler]
    ours.propagate = False
    ours.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class Terminated(BaseException):
    """SIGTERM or SIGHUP (`kill`, `timeout`, a closed terminal, CI cancelling): unwinds like Ctrl-C, so outputs are cleaned up."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _build_parser_deferring_ctrl_c():  # -> argparse.ArgumentParser | None
    """The parser, or None when Ctrl-C came while it was built. Building it imports torch (seconds), whose extension
    code must not see a KeyboardInterrupt (raised inside a pybind11 callback it aborts the process): the interrupt is
    only noted while the imports run, and answered once they are done."""
    import signal

    noted: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        parser = build_parser()
    except KeyboardInterrupt:
        return None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return None if noted else parser


def main(argv: list[str] | None = None) -> int:
    import signal

    try:  # a terminal or pipe that cannot show a character (PYTHONIOENCODING=ascii) gets an escape, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):
        pass

    parser = _build_parser_deferring_ctrl_c()
    if parser is None:
        print("interrupted before the command started; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    from lm_eval_lingreg import progress

    progress.configure(enabled=not args.quiet, harness_bars=args.verbose)  # one bar over a whole evaluation; lm-eval's own with -v
    handlers = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            handlers[sig] = signal.signal(sig, _terminate)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        return _run(args)
    finally:
        progress.configure(enabled=False)  # a library caller in the same process gets no bars it did not ask for
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _os_error(e: BaseException) -> str:
    """An operating-system error in one line: the file, what went wrong, and for a full disk what to do."""
    import errno

    if not isinstance(e, OSError) or not e.strerror:
        return f"{type(e).__name__}: {_one_line(e)}"
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    where = f"{e.filename}: " if e.filename else "writing the output: " if full else ""
    return f"{where}{e.strerror}" + ("; free some space, or write elsewhere" if full else "")


def _run(args) -> int:  # args: argparse.Namespace
    import traceback

    from lm_eval_lingreg.errors import LingregError

    debug = os.environ.get("LINGREG_DEBUG", "") not in ("", "0")
    try:
        from lm_eval_lingreg.cli._io import check_io

        check_io(args)
        return args.func(args)
    except BrokenPipeError:  # `lingreg ... | head`: the reader left; not an error
        try:  # silence the final flush of the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (KeyboardInterrupt, Terminated) as e:
        print("interrupted; outputs are written atomically, so nothing half-written was left", file=sys.stderr)
        return 128 + (e.args[0] if isinstance(e, Terminated) else 2)
    except LingregError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("error: out of memory; use fewer samples, documents or a smaller batch, or a machine with more memory", file=sys.stderr)
        return 2
    except (OSError, RecursionError) as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, reported in one line unless debugging
        if debug:
            traceback.print_exc()
        print(
            f"error: unexpected {type(e).__name__}: {_one_line(e)[:500]} (this is a bug in lm-eval-lingreg; LINGREG_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
