"""Figures: real image files, atomically written, for every plot kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_lingreg.dimensions import dimension_counts
from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.plots import plot_curves, plot_dimensions, plot_heatmap, plot_region_density
from lm_eval_lingreg.results import load_runs

from helpers import region_on_dims

REGIONS = Path(__file__).resolve().parent / "data" / "results" / "regions"


def test_dimension_plot_svg(tiny_model, tmp_path):
    plot_dimensions(dimension_counts(region_on_dims(tiny_model)), tmp_path / "d.svg", top=3)
    assert "<svg" in (tmp_path / "d.svg").read_text()[:500]


def test_heatmap_and_density_are_images(tmp_path):
    plot_heatmap(load_runs([REGIONS]), tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    from lm_eval_lingreg.region_io import load_region

    region = load_region("mono-ar-1")
    plot_region_density(region, tmp_path / "d.png")
    data = (tmp_path / "d.png").read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 5000
    with pytest.raises(ReportError, match="nothing to plot"):
        plot_heatmap(load_runs([REGIONS / "base"]), tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "h.png"]


def test_training_curves(tmp_path):
    summary = {"target": "ko", "curves": {"none": [{"step": 0, "perplexity": {"ko": 9.0, "en": 5.0}}, {"step": 2, "perplexity": {"ko": 8.0, "en": 5.5}}]}}
    plot_curves(summary, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
