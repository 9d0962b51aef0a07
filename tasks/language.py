"""Datasets and per-sample metrics of the generation (`lingreg_gen_<iso>`), translation
(`lingreg_mt_<src>_<tgt>`) and steering (`lingreg_steer_<src>_<tgt>`) tasks. The documents come from `lm_eval_lingreg.udhr`, the metrics from
`lm_eval_lingreg.confusion` (definitions there, and in docs/guide/language.md).
"""

from __future__ import annotations

import logging
from collections import Counter


class _QuietCustomDataset(logging.Filter):
    """lm-eval warns once per task that `custom_dataset` tasks take --metadata kwargs; ours take none."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(("lingreg_gen_", "lingreg_mt_", "lingreg_steer_")) and "Custom kwargs can be passed" in msg)


logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDataset())


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_generation(lang: str, **_: object):
    from lm_eval_lingreg.udhr import generation_docs

    return _dataset(generation_docs(lang))


def load_translation(src: str, tgt: str, **_: object):
    from lm_eval_lingreg.udhr import translation_docs

    return _dataset(translation_docs(src, tgt))


def load_steering(src: str, tgt: str, **_: object):
    from lm_eval_lingreg.udhr import steering_docs

    return _dataset(steering_docs(src, tgt))


def process_steering(doc: dict, results: list) -> dict:
    """Did the output come out in the wanted language (`steer_success`), how close is it to that language's
    text of the same article (`steer_chrf`, the reference cut to the output's length), and both at once
    (`steer_score`: the chrF of an output in the wanted language, 0 for any other)."""
    m, score = _continuation(doc["tgt"], doc["reference"], results[0])
    return {
        "steer_success": m["lang_fidelity"],
        "steer_chrf": score,
        "steer_score": score if m["lang_fidelity"] else 0.0,
        "detected_lang": m["detected_lang"],
        "detected_confidence": m["detected_confidence"],
    }


def process_generation(doc: dict, results: list) -> dict:
    """A continuation's language and its chrF against the real continuation, cut to the output's length."""
    m, score = _continuation(doc["lang"], doc["reference"], results[0])
    return {**m, "chrf": score}


def _continuation(lang: str, reference: str, raw: str) -> tuple[dict, float]:
    """(language metrics of the output against `lang`, its chrF against `reference` cut to the output's length)."""
    from lm_eval_lingreg.confusion import chrf, language_metrics
    from lm_eval_lingreg.langid import clean

    output = clean(raw)
    return language_metrics(lang, output), chrf(output.strip(), reference[: max(1, len(output.strip()))])


def process_translation(doc: dict, results: list) -> dict:
    """A translation's language and its chrF against the reference translation (first line of the output)."""
    from lm_eval_lingreg.confusion import chrf, language_metrics
    from lm_eval_lingreg.langid import clean

    output = clean(results[0]).strip().split("\n", 1)[0].strip()
    m = language_metrics(doc["tgt"], output)
    return {
        "mt_chrf": chrf(output, doc["reference"]),
        "mt_fidelity": m["lang_fidelity"],
        "detected_lang": m["detected_lang"],
        "detected_confidence": m["detected_confidence"],
    }


def most_common(items: list[str]) -> str:
    """The language most outputs were identified as (ties: the first seen)."""
    return Counter(items).most_common(1)[0][0] if items else ""
