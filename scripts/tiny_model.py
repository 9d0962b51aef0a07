"""Write a tiny random model of one causal-LM family, with a byte-level tokenizer, as a normal Hugging Face folder:
the configs the tests use (2 layers, hidden size 32; the mixture-of-experts ones have 4 experts, top-2), so that the
guide's commands run here in seconds.

    python scripts/tiny_model.py qwen3_moe tiny-moe
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import FAMILIES, make_tiny, tiny_tokenizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists; name a new folder")
    make_tiny(args.family, args.seed).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    print(out.resolve())


if __name__ == "__main__":
    main()
