"""Uncertainty over documents: paired bootstrap intervals for metric values, ratios to a base run, and their
geometric mean over languages.

A language's perplexity is a ratio of sums over its documents (exp of summed negative log-likelihood over summed
tokens), so the bootstrap resamples documents with replacement and recomputes the sums. A ratio between two runs
is *paired*: both runs scored the same documents, so the same resampled documents are used for both. The geometric
mean over languages resamples each language's documents independently. Intervals are percentile intervals on the
log scale; everything is seeded.

The generation and translation metrics are means over outputs (a share, or mean chrF): their bootstrap
resamples outputs and recomputes the mean; a comparison with a base run is the paired difference
(run - base, same prompts), and the summary over languages is the mean of the per-language values or
differences. Those intervals are on the metric's own scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.results import MEAN_METRICS, SIZES, Documents, Items, Run, safe_exp

LEVEL = 0.95
SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point value and its bootstrap interval."""

    value: float
    lo: float
    hi: float

    def excludes(self, x: float) -> bool:
        return not (self.lo <= x <= self.hi)

    @property
    def width(self) -> float:
        """hi / lo: how many times wider the upper end is than the lower (1 = no uncertainty)."""
        return self.hi / self.lo if self.lo > 0 else math.inf


def check_level(level: float) -> float:
    """A confidence level given as 0.95 or 95."""
    given = level
    level = level / 100 if level > 1 else level
    if not (0 < level < 1 and math.isfinite(level)):
        raise ReportError(f"confidence level {given:g}: give a fraction below 1 (e.g. 0.95) or a percentage above 1 and below 100 (e.g. 95)")
    return level


def _log_value(ll: np.ndarray, size: np.ndarray, metric: str) -> np.ndarray:
    """log of the metric from summed log-likelihoods and sizes: log-perplexity, or log bits per byte."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nats = -ll / size
        return np.log(nats / math.log(2)) if metric == "bits_per_byte" else nats


def _arrays(docs: Documents, metric: str, run: Run | None = None, iso: str = "") -> tuple[np.ndarray, np.ndarray]:
    if not docs.has(metric):
        where = f"{run.label} ({iso})" if run is not None else "this run"
        raise ReportError(f"{where} has no per-document {SIZES[metric]}: {metric} intervals need a lingreg wrapper's run (plain `hf` does not count tokens)")
    return np.asarray(docs.loglikelihood, dtype=np.float64), np.asarray(docs.sizes[SIZES[metric]], dtype=np.float64)


def _percentiles(logs: np.ndarray, point: float, level: float) -> Interval:
    finite = logs[~np.isnan(logs)]
    lo, hi = np.percentile(finite, [100 * (1 - level) / 2, 100 * (1 + level) / 2]) if finite.size else (math.nan, math.nan)
    return Interval(*(safe_exp(x) for x in (point, lo, hi)))


def _draws(rng: np.random.Generator, n_docs: int, samples: int) -> np.ndarray:
    return rng.integers(0, n_docs, size=(samples, n_docs))


def documents_of(run: Run, iso: str) -> Documents:
    if iso not in run.documents:
        raise ReportError(
            f"{run.label} has no per-document scores for {iso} ({run.path}); intervals need them: lingreg commands record them, "
            "and `lm_eval` writes them with --log_samples"
        )
    return run.documents[iso]


def _paired(base: Run, run: Run, iso: str, metric: str) -> tuple[np.ndarray, ...]:
    b, r = documents_of(base, iso), documents_of(run, iso)
    if b.doc_id != r.doc_id:
        raise ReportError(
            f"{run.label} and {base.label} scored different {iso} documents ({len(r.doc_id)} vs {len(b.doc_id)}); a paired ratio needs the same ones"
        )
    return (*_arrays(b, metric, base, iso), *_arrays(r, metric, run, iso))


def items_of(run: Run, row: str, metric: str) -> np.ndarray:
    """One run's per-output values of a generation/translation metric for one language or pair."""
    it: Items | None = run.items.get(row)
    if it is None or metric not in it.values:
        raise ReportError(
            f"{run.label} has no per-output {metric} values for {row} ({run.path}); intervals need them: lingreg commands record them, "
            "and `lm_eval` writes them with --log_samples"
        )
    return np.asarray(it.values[metric], dtype=np.float64)


def _paired_items(base: Run, run: Run, row: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    b, r = base.items.get(row), run.items.get(row)
    vb, vr = items_of(base, row, metric), items_of(run, row, metric)
    if b.doc_id != r.doc_id:
        raise ReportError(
            f"{run.label} and {base.label} answered different {row} prompts ({len(r.doc_id)} vs {len(b.doc_id)}); a paired difference needs the same ones"
        )
    return vb, vr


def _plain(draws: np.ndarray, point: float, level: float) -> Interval:
    lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2]) if draws.size else (math.nan, math.nan)
    return Interval(point, float(lo), float(hi))


def _mean_draws(rng: np.random.Generator, values: np.ndarray, samples: int) -> np.ndarray:
    return values[_draws(rng, values.size, samples)].mean(1)


def _means(runs: Sequence[Run], rows: Sequence[str], metric: str, level: float, samples: int, seed: int, paired: bool) -> Interval:
    """Mean over rows of a run's means (paired=False), or of run - base differences (paired=True, runs = (run, base))."""
    rng = np.random.default_rng(seed)
    points, draws = [], []
    for row in rows:
        if paired:
            vb, vr = _paired_items(runs[1], runs[0], row, metric)
            idx = _draws(rng, vb.size, samples)
            points.append(float(vr.mean() - vb.mean()))
            draws.append(vr[idx].mean(1) - vb[idx].mean(1))
        else:
            v = items_of(runs[0], row, metric)
            points.append(float(v.mean()))
            draws.append(_mean_draws(rng, v, samples))
    if not points:
        raise ReportError("no language to average over")
    return _plain(np.mean(draws, axis=0), float(np.mean(points)), level)


def value_interval(run: Run, iso: str, metric: str, level: float = LEVEL, samples: int = SAMPLES, seed: int = 0) -> Interval:
    """The metric of one language in one run, with its bootstrap interval over documents (outputs)."""
    if metric in MEAN_METRICS:
        return _means([run], [iso], metric, level, samples, seed, paired=False)
    ll, size = _arrays(documents_of(run, iso), metric, run, iso)
    idx = _draws(np.random.default_rng(seed), ll.size, samples)
    point = float(_log_value(ll.sum(), size.sum(), metric))
    return _percentiles(_log_value(ll[idx].sum(1), size[idx].sum(1), metric), point, level)


def ratio_interval(run: Run, base: Run, iso: str, metric: str, level: float = LEVEL, samples: int = SAMPLES, seed: int = 0) -> Interval:
    """run / base for one language, paired over the same documents (run - base for means over outputs)."""
    if metric in MEAN_METRICS:
        return _means([run, base], [iso], metric, level, samples, seed, paired=True)
    llb, nb, llr, nr = _paired(base, run, iso, metric)
    idx = _draws(np.random.default_rng(seed), llb.size, samples)
    point = float(_log_value(llr.sum(), nr.sum(), metric) - _log_value(llb.sum(), nb.sum(), metric))
    logs = _log_value(llr[idx].sum(1), nr[idx].sum(1), metric) - _log_value(llb[idx].sum(1), nb[idx].sum(1), metric)
    return _percentiles(logs, point, level)


def geomean_ratio_interval(run: Run, base: Run, langs: Sequence[str], metric: str, level: float = LEVEL, samples: int = SAMPLES, seed: int = 0) -> Interval:
    """Geometric mean over languages of run / base, each language's documents resampled independently
    (the mean of run - base for means over outputs)."""
    if metric in MEAN_METRICS:
        return _means([run, base], langs, metric, level, samples, seed, paired=True)
    rng = np.random.default_rng(seed)
    points, draws = [], []
    for iso in langs:
        llb, nb, llr, nr = _paired(base, run, iso, metric)
        idx = _draws(rng, llb.size, samples)
        points.append(float(_log_value(llr.sum(), nr.sum(), metric) - _log_value(llb.sum(), nb.sum(), metric)))
        draws.append(_log_value(llr[idx].sum(1), nr[idx].sum(1), metric) - _log_value(llb[idx].sum(1), nb[idx].sum(1), metric))
    if not points:
        raise ReportError("no language to average over")
    return _percentiles(np.mean(draws, axis=0), float(np.mean(points)), level)


def mean_value_interval(run: Run, langs: Sequence[str], metric: str, level: float = LEVEL, samples: int = SAMPLES, seed: int = 0) -> Interval:
    """Arithmetic mean over languages of the metric (the `lingreg_ppl` group's summary), with its interval."""
    if metric in MEAN_METRICS:
        return _means([run], langs, metric, level, samples, seed, paired=False)
    rng = np.random.default_rng(seed)
    points, draws = [], []
    for iso in langs:
        ll, size = _arrays(documents_of(run, iso), metric, run, iso)
        idx = _draws(rng, ll.size, samples)
        points.append(safe_exp(float(_log_value(ll.sum(), size.sum(), metric))))
        with np.errstate(over="ignore"):
            draws.append(np.exp(_log_value(ll[idx].sum(1), size[idx].sum(1), metric)))
    point, dist = float(np.mean(points)), np.mean(draws, axis=0)
    lo, hi = np.percentile(dist, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(point, float(lo), float(hi))
