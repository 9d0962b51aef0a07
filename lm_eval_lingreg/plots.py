"""Every figure the package draws (matplotlib, Agg backend; PNG, SVG or PDF by the file's suffix)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.outputs import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # labels are data (run labels, metric names): `$x^$` is text, not a formula to parse
    matplotlib.rcParams["text.parse_math"] = False

    return plt


def plot_heatmap(runs: Sequence[Any], path: str | os.PathLike, metric: str = "token_perplexity", ratio_to: str = "base") -> None:
    """Languages x conditions, log10 of the ratio to the base run (the difference, for the generation and translation metrics)."""
    import numpy as np

    from lm_eval_lingreg.report import build_table, summary_label
    from lm_eval_lingreg.results import MEAN_METRICS

    plt = _pyplot()
    diff = metric in MEAN_METRICS
    df = build_table(runs, metric, ratio_to).drop(index=summary_label(metric, True))
    df = df[[c for c in df.columns if c != ratio_to]]
    if not len(df.columns):
        raise ReportError(f"nothing to plot: every run is the {ratio_to!r} run; give the ablated runs too")
    with np.errstate(divide="ignore", invalid="ignore"):
        data = df.to_numpy(dtype=float) if diff else np.log10(df.to_numpy(dtype=float))
    finite = data[np.isfinite(data)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(df.columns)), 0.32 * len(df.index) + 2))
    im = ax.imshow(np.clip(np.nan_to_num(data, nan=np.nan, posinf=vmax, neginf=-vmax), -vmax, vmax), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(df.columns)), df.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(df.index)), df.index, fontsize=8)
    for (i, j), v in np.ndenumerate(data):
        if not np.isfinite(v):
            ax.text(j, i, "inf" if v > 0 else "n/a", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=f"{metric} - {ratio_to}" if diff else f"log10({metric} / {ratio_to})")
    ax.set_title(f"{metric}: {'difference' if diff else 'ratio'} to {ratio_to}")
    fig.tight_layout()
    save_figure(fig, path)


def plot_ratios(runs: Sequence[Any], path: str | os.PathLike, metric: str = "token_perplexity", ratio_to: str = "base", level: float = 0.95) -> None:
    """Each run's ratio to the base run per language, with its paired bootstrap interval (log scale); the difference
    on a linear scale for the generation and translation metrics."""
    from lm_eval_lingreg.report import build_table, summary_label
    from lm_eval_lingreg.results import MEAN_METRICS

    plt = _pyplot()
    diff = metric in MEAN_METRICS
    df = build_table(runs, metric, ratio_to, ci=level).drop(index=summary_label(metric, True))
    cols = [c for c in df.columns if c != ratio_to]
    if not cols:
        raise ReportError(f"nothing to plot: every run is the {ratio_to!r} run; give the ablated runs too")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(df.index) + 2), 4))
    for k, c in enumerate(cols):
        cells = [(i, v) for i, v in enumerate(df[c]) if hasattr(v, "lo")]
        xs = [i + (k - (len(cols) - 1) / 2) * 0.8 / max(1, len(cols)) for i, _ in cells]
        ys = [v.value for _, v in cells]
        err = [[v.value - v.lo for _, v in cells], [v.hi - v.value for _, v in cells]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3, capsize=2, label=c)
    ax.axhline(0.0 if diff else 1.0, color="grey", lw=0.8)
    if not diff:
        ax.set_yscale("log")
    ax.set_xticks(range(len(df.index)), [i.split("(")[-1].rstrip(")") if "(" in i else i for i in df.index], fontsize=8)
    ax.set_ylabel(f"{metric} {'-' if diff else '/'} {ratio_to} ({level:.0%} interval)")
    ax.set_title(f"{metric}: {'difference' if diff else 'ratio'} to {ratio_to} per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_region_density(region: Any, path: str | os.PathLike) -> None:
    """Share of each (layer, module) tensor that the region selects, as a heatmap."""
    import numpy as np

    from lm_eval_lingreg.regions import summarize

    rows = [r for r in summarize(region) if r["layer"] is not None]
    if not rows:
        raise ReportError("the region has no per-layer tensors to plot")
    plt = _pyplot()
    layers = sorted({r["layer"] for r in rows})
    modules = list(dict.fromkeys(r["module"] for r in rows))
    grid = np.full((len(layers), len(modules)), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), modules.index(r["module"])] = 100 * r["share"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(modules), 0.3 * len(layers) + 2))
    im = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="% of the tensor selected")
    ax.set_title(str(region.metadata.get("kind") or "region") + f" ({region.num_selected:,} entries)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_dimensions(dc: Any, path: str | os.PathLike, top: int = 10, title: str | None = None) -> None:
    """Entries per hidden dimension (all of them, top ones labelled) and a layer x top-dims heatmap."""
    plt = _pyplot()
    total = dc.total.numpy()
    best = dc.ranked(top)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [1, 1.2]})
    ax1.bar(range(dc.hidden), total, width=1.0, color="#4c72b0")
    ax1.axhline(float(dc.total.double().mean()), color="#dd8452", lw=1, ls="--", label="mean over dimensions")
    for d in best[: min(top, 8)]:
        ax1.annotate(str(d), (d, total[d]), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
    ax1.set_xlabel("hidden dimension")
    ax1.set_ylabel("region entries")
    ax1.set_xlim(-1, dc.hidden)
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(title or "Region entries per hidden dimension (norm entries + rows written + columns read)")
    per_layer = dc.counts.sum(0)[:, best].numpy()  # [layers, top]
    im = ax2.imshow(per_layer, aspect="auto", cmap="viridis", interpolation="nearest")
    ax2.set_xticks(range(len(best)), [str(d) for d in best])
    ax2.set_xlabel(f"top {len(best)} dimensions")
    ax2.set_ylabel("layer")
    fig.colorbar(im, ax=ax2, label="region entries")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_curves(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Held-out perplexity over training steps, one panel per watched language, one line per condition."""
    plt = _pyplot()
    curves = summary["curves"]
    langs = list(next(iter(curves.values()))[0]["perplexity"])
    fig, axes = plt.subplots(1, len(langs), figsize=(3.6 * len(langs), 3.4), squeeze=False)
    for ax, iso in zip(axes[0], langs, strict=True):
        for cond, pts in curves.items():
            ax.plot([p["step"] for p in pts], [p["perplexity"][iso] for p in pts], marker="o", ms=3, label=cond)
        ax.set_yscale("log")
        ax.set_title(f"{iso}{' (trained)' if iso == summary['target'] else ''}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("held-out token perplexity")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_tradeoff(points: Sequence[tuple[str, str, float, float]], path: str | os.PathLike, title: str = "Steering: success against meaning") -> None:
    """One point per condition, `(label, family, share in the wanted language, chrF against its text)`, coloured by family."""
    plt = _pyplot()
    if not points:
        raise ReportError("nothing to plot: no condition has results")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = list(dict.fromkeys(f for _, f, _, _ in points))
    for i, fam in enumerate(families):
        mine = [(lab, x, y) for lab, f, x, y in points if f == fam]
        ax.scatter([x for _, x, _ in mine], [y for _, _, y in mine], label=fam, color=f"C{i}", s=30)
        for lab, x, y in mine:
            ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("share of outputs in the wanted language (steer_success)")
    ax.set_ylabel("chrF against the wanted language's text (steer_chrf)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
