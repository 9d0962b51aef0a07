"""Dataset loading and per-document metrics for the lingreg_ppl_<iso> tasks."""

from __future__ import annotations

import logging
import re
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data" / "udhr"


class _QuietCustomDataset(logging.Filter):
    """lm-eval warns once per task that `custom_dataset` tasks take --metadata kwargs; ours take none."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("lingreg_ppl_") and "Custom kwargs can be passed" in msg)


logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDataset())


def load_udhr(lang: str, **_: object):
    """The UDHR sections of one language as a `datasets.DatasetDict` with a test split."""
    import datasets

    path = DATA_DIR / f"{lang}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"no UDHR data for language {lang!r} at {path}; rebuild with "
            "scripts/build_udhr_data.py or reinstall lm-eval-lingreg"
        )
    return datasets.load_dataset("json", data_files={"test": str(path)})


def process_results(doc: dict, results: list) -> dict:
    """bits/byte, byte and word perplexity as lm-eval computes them, plus token perplexity.

    Token perplexity needs the number of predicted tokens, which only the lingreg model
    wrappers report (attached to the log-likelihood); with other models it is left out.
    """
    (loglikelihood,) = results
    text = doc["text"]
    n_bytes = len(text.encode("utf-8"))
    n_words = len(re.split(r"\s+", text.strip()))
    out = {
        "bits_per_byte": (loglikelihood, n_bytes),
        "byte_perplexity": (loglikelihood, n_bytes),
        "word_perplexity": (loglikelihood, n_words),
    }
    n_tokens = getattr(loglikelihood, "n_tokens", None)
    if n_tokens:
        out["token_perplexity"] = (float(loglikelihood), n_tokens)
    return out


def weighted_perplexity(items: list[tuple[float, int]]) -> float:
    """exp(-sum(ll) / sum(weight)), as lm-eval's, but inf instead of an OverflowError.

    Ablated models (and word perplexity on unsegmented scripts) easily exceed 1e308.
    """
    import math

    lls, weights = zip(*items)
    try:
        return math.exp(-sum(lls) / sum(weights))
    except OverflowError:
        return math.inf
