"""`lingreg reproduce`: every experiment end to end on the bundled model (CI-sized), and pages rewritten from results alone."""

from __future__ import annotations

import pytest

from helpers import REPO, lingreg

RULES = REPO / "baselines" / "rules-bundled.yaml"


@pytest.mark.slow
def test_reproduce_quick_end_to_end(bundled_model_dir, tmp_path):
    out, doc = tmp_path / "repro", tmp_path / "docs" / "REPRODUCTION.md"
    proc = lingreg("reproduce", "--quick", "--out", out, "--doc", doc, "--device", "cpu")
    assert proc.returncode == 0
    text = doc.read_text()
    for heading in ("finding 2", "finding 4", "Monolingual regions", "Core region vs bottom and random", "Wall time"):
        assert heading in text, heading
    assert "Expectations (`baselines/rules-bundled.yaml`" in text and " of 18 hold" in text
    for fig in ("dims-core-top-1.png", "forget-curves.png"):
        assert (doc.parent / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    # the raw results are ordinary lm-eval results: the other report commands read them
    assert lingreg("check", out / "regions", "--rules", RULES).returncode == 0
    again = tmp_path / "again.md"
    assert lingreg("reproduce", "--quick", "--out", out, "--doc", again, "--from-results").returncode == 0
    assert again.read_text() == text  # rewritten from the saved results alone, identically


def test_docs_pages_regenerate_from_the_saved_results(tmp_path):
    """docs/ is made by `lingreg reproduce --only <experiment> --from-results`: the shipped pages match their results."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(REPO / "docs" / "results", results)
    for name, page in (("dimensions", "DIMENSIONS.md"),):
        doc = tmp_path / page
        assert lingreg("reproduce", "--only", name, "--out", results, "--doc", doc, "--from-results").returncode == 0
        assert doc.read_text().replace(str(results), "docs/results") == (REPO / "docs" / page).read_text()


def test_unknown_experiment_is_one_clear_error(tmp_path):
    proc = lingreg("reproduce", "--only", "regionz", "--out", tmp_path)
    assert proc.returncode == 2 and "unknown experiment 'regionz'" in proc.stderr
