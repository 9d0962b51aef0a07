"""Region entries per hidden dimension, and activation statistics."""

from __future__ import annotations

from lm_eval_lingreg.dimensions import dimension_counts, mean_abs_activations

from helpers import region_on_dims


def test_dimension_counts_are_exact(tiny_model):
    dc = dimension_counts(region_on_dims(tiny_model))
    assert dc.hidden == 32
    assert dc.ranked(2) == [7, 3]
    row = dc.row(7)
    assert (row["total"], row["norm"], row["read"], row["write"]) == (8, 1, 2, 5)
    assert row["top_layers"] == {0: 6, 1: 2}
    assert dc.row(3)["write"] == 1 and int(dc.total.sum()) == 9
    # every dimension has the same number of entries: one per norm, one column per reader, one row per writer
    n_norms = 2 if "Llama" in type(tiny_model).__name__ else 4
    assert dc.entries_per_dim == 2 * (n_norms + (32 + 16 + 16 + 64 + 64) + (32 + 64))


def test_activation_statistics_rank_every_dimension(tiny_model, tok):
    acts = mean_abs_activations(tiny_model, tok, ["All human beings are born free.", "人人生而自由"])
    assert acts["tokens"] > 0 and sorted(acts["rank"]) == list(range(1, 33)) and len(acts["per_layer"]) == 3
    assert acts["rank"][acts["top"][0]] == 1
