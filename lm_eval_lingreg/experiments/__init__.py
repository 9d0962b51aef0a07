"""The paper's experiments on one loaded model, each as `run(lm, plan, out)` and `section(out) -> markdown`.

- `regions`: findings 1 and 3, core / bottom / random regions and monolingual regions through the harness;
- `dimensions`: finding 2, the hidden dimensions the core region concentrates on, and perturbation scans;
- `forgetting`: finding 4, further pre-training with the core region frozen;
- `evaluation`: the BOS convention, intervals against the number of documents, bfloat16 against float32;
- `protocol`: the official scoring protocol beside the default one, and how many samples are enough;
- `methods`: other published definitions of a region (Wanda, magnitude, LAPE, super weights) beside the core region;
- `language`: which language comes out of a model with a region removed: continuation and translation tasks;
- `steering`: steering the output language with DiffMean vectors, LAPE neurons and monolingual regions.

Each experiment writes its raw results under `<out>/<name>/` with an `experiment.json` record (plan,
timings, command), so its page can be rewritten from the results alone. `reproduce` composes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.outputs import write_json

#: The paper's findings, in the order `lingreg reproduce` runs them.
PAPER = ("regions", "dimensions", "forgetting")
#: Every experiment `--only` accepts: the paper's, `evaluation` (how far the numbers can be trusted) and `protocol`
#: (the official scoring protocol beside the default; also `lingreg reproduce --paper-protocol`) and `methods` (other
#: definitions of a region side by side) and `language` (the language of generated text, and translation) and `steering`
#: (steering the output language).
NAMES = (*PAPER, "evaluation", "protocol", "methods", "language", "steering")
RECORD = "experiment.json"


def module(name: str):
    """The experiment module called `name`."""
    import importlib

    if name not in NAMES:
        raise UsageError(f"unknown experiment {name!r}; choose from {', '.join(NAMES)}")
    return importlib.import_module(f"lm_eval_lingreg.experiments.{name}")


def write_record(out: Path, name: str, plan: dict[str, Any], seconds: dict[str, float], command: str) -> dict[str, Any]:
    record = {"experiment": name, "plan": plan, "seconds": {k: round(v, 1) for k, v in seconds.items()}, "command": command}
    write_json(out / RECORD, record)
    return record


def read_json(path: Path, what: str = "results file") -> Any:
    """A JSON file an experiment wrote, read strictly (a regular file, unique keys, bounded numbers): never a
    blocking read of a FIFO, never a guess; an error names the file."""
    from lm_eval_lingreg.strict import loads_json, read_text

    hint = "; rerun the experiment without --from-results"
    return loads_json(read_text(path, UsageError, what), UsageError, str(path), hint=hint)


def runs_by_label(folder: Path) -> dict[str, Any]:
    """{label: run} of the results files under `folder`."""
    from lm_eval_lingreg.results import load_runs

    return {r.label: r for r in load_runs([folder])}


def fmt_interval(v: Any, digits: int = 2) -> str:
    """A value, or an interval as `value [lo, hi]`, with `digits` decimals; NaN as "-"."""
    if hasattr(v, "lo"):
        return f"{fmt_interval(v.value, digits)} [{fmt_interval(v.lo, digits)}, {fmt_interval(v.hi, digits)}]"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def read_record(out: Path) -> dict[str, Any]:
    path = out / RECORD
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"no {path}: run the experiment first (without --from-results)")
    record = read_json(path, "experiment record")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in (("plan", dict), ("seconds", dict), ("command", str))):
        raise UsageError(f"{path} is not an experiment record (plan, seconds, command); rerun the experiment without --from-results")
    return record


def convention_note(results: Path, name: str, page: str, minutes: int) -> str:
    """One sentence on the token convention of a page's harness runs: the current default, or lm-eval's own (older runs)."""
    from lm_eval_lingreg.results import load_runs

    convention = load_runs([results])[0].convention
    if convention == "context":
        return "Token perplexity counts the documents' own tokens, with BOS as context (`rolling_bos=context`, the default).\n"
    return (
        f"These runs used lm-eval's own token convention (`{convention}`: p(BOS | BOS) scored too, task version 1.0), not the current "
        "default `rolling_bos=context`. On the unchanged model that convention raises token perplexity by x1.23 (median over 10 "
        "languages) and moved the ratios of the shipped regions by at most 8% (docs/EVALUATION.md); every ratio below compares runs "
        f"of the same convention. `lingreg reproduce --only {name} --out docs/results --doc docs/{page} --overwrite` "
        f"measures it again with the current default (about {minutes} min on 2 cores).\n"
    )


def demote(markdown: str) -> str:
    """Headings one level down, to nest a page inside a larger report."""
    return "\n".join(("#" + line) if line.startswith("#") else line for line in markdown.splitlines()) + "\n"
