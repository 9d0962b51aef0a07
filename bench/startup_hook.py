"""Start-up cost of the `.pth` hook: `python -c pass` with and without the package installed.

Builds two throw-away venvs from the same interpreter, installs the wheel (no dependencies)
into one, and alternates timed runs of `python -c pass` in both. Also reports the hook's
own import time from `-X importtime`.

    python bench/startup_hook.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(d), str(REPO)], check=True)
        (wheel,) = d.glob("*.whl")
        pythons = {}
        for name in ("without", "with"):
            venv.create(d / name, with_pip=False)
            pythons[name] = str(d / name / "bin" / "python")
        subprocess.run([sys.executable, "-m", "pip", "--python", pythons["with"], "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
        times: dict[str, list[float]] = {k: [] for k in pythons}
        for _ in range(args.runs):
            for name, py in pythons.items():
                t0 = time.perf_counter()
                subprocess.run([py, "-c", "pass"], check=True)
                times[name].append(time.perf_counter() - t0)
        trace = subprocess.run([pythons["with"], "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
    hook_us = sum(int(line.split("|")[1]) for line in trace.splitlines() if "lm_eval_lingreg" in line)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    figures = {
        "runs": args.runs,
        "median_ms": med,
        "ratio_with_over_without": med["with"] / med["without"],
        "hook_import_self_us": hook_us,
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
