"""Per-tensor selection: core Top/Bottom/Random of S = sum |s_l|, monolingual regions, random controls."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import scope_shapes
from lm_eval_lingreg.errors import RegionError
from lm_eval_lingreg.selection import select_core, select_monolingual, select_random


def test_core_selection_follows_the_definition():
    scores = {
        "ar": {"w": torch.tensor([[5.0, -1.0], [0.0, 2.0]]), "v": torch.tensor([1.0, 2.0, 3.0, 4.0])},
        "zh": {"w": torch.tensor([[-1.0, 3.0], [0.5, 0.0]]), "v": torch.tensor([-4.0, 0.0, 0.0, 0.0])},
    }
    get = lambda lang, name: scores[lang][name]  # noqa: E731
    top = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "top")
    # S(w) = [[6, 4], [0.5, 2]] -> top 2 = {0, 1};  S(v) = [5, 2, 3, 4] -> {0, 3}
    assert top.indices["w"].tolist() == [0, 1] and top.indices["v"].tolist() == [0, 3]
    bottom = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "bottom")
    assert bottom.indices["w"].tolist() == [2, 3] and bottom.indices["v"].tolist() == [1, 2]
    rnd = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "random", seed=1)
    assert [i.numel() for i in rnd.indices.values()] == [2, 2] and rnd == select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "random", seed=1)
    assert top.metadata["kind"] == "core-top" and top.metadata["languages"] == ["ar", "zh"]


def test_monolingual_region_excludes_other_languages_top_k():
    scores = {
        "ar": {"v": torch.tensor([9.0, 8.0, 7.0, 0.0, 0.0, 0.0])},
        "zh": {"v": torch.tensor([9.0, 0.0, 0.0, 8.0, 7.0, 0.0])},
        "ko": {"v": torch.tensor([0.0, 8.0, 0.0, 7.0, 0.0, 9.0])},
    }
    get = lambda lang, name: scores[lang][name]  # noqa: E731
    ar = select_monolingual(get, ["v"], "ar", ["ar", "zh", "ko"], 0.5)
    assert ar.indices["v"].tolist() == [2]  # ar top3 {0,1,2} minus zh top3 {0,3,4} minus ko top3 {1,3,5}
    with pytest.raises(RegionError, match="at least one other"):
        select_monolingual(get, ["v"], "ar", ["ar"], 0.5)


def test_ratio_outside_unit_interval_is_rejected(tiny_model):
    with pytest.raises(RegionError, match="ratio"):
        select_random(scope_shapes(tiny_model), 1.5)


def test_random_selection_is_per_tensor_and_seeded(tiny_model):
    shapes = scope_shapes(tiny_model)
    a, b = select_random(shapes, 0.01, seed=7), select_random(shapes, 0.01, seed=7)
    assert a == b
    for name, shape in shapes.items():
        assert a.indices[name].numel() == int(0.01 * torch.Size(shape).numel())


def test_all_zero_scores_are_refused():
    zero = {"w": torch.zeros(4, 4)}
    with pytest.raises(RegionError, match="all zero"):
        select_core(lambda lang, name: zero[name], ["w"], ["ar", "zh"], 0.25)
    with pytest.raises(RegionError, match="all zero"):
        select_monolingual(lambda lang, name: zero[name], ["w"], "ar", ["ar", "zh"], 0.25)


def test_bottom_monolingual_control_is_built_the_same_way_from_bottom_k():
    scores = {
        "ar": {"v": torch.tensor([0.0, 1.0, 2.0, 9.0, 9.0, 9.0])},
        "zh": {"v": torch.tensor([0.0, 9.0, 9.0, 1.0, 2.0, 9.0])},
        "ko": {"v": torch.tensor([9.0, 1.0, 9.0, 2.0, 9.0, 0.0])},
    }
    get = lambda lang, name: scores[lang][name]  # noqa: E731
    ar = select_monolingual(get, ["v"], "ar", ["ar", "zh", "ko"], 0.5, which="bottom")
    assert ar.indices["v"].tolist() == [2]  # ar bottom3 {0,1,2} minus zh bottom3 {0,3,4} minus ko bottom3 {1,3,5}
    assert ar.metadata["kind"] == "monolingual-bottom"
    from lm_eval_lingreg.selection import select_monolingual_all

    every = select_monolingual_all(get, ["v"], ["ar", "zh", "ko"], 0.5, which="bottom")
    assert every["ar"] == ar and set(every) == {"ar", "zh", "ko"}
    with pytest.raises(RegionError, match="top or bottom"):
        select_monolingual(get, ["v"], "ar", ["ar", "zh"], 0.5, which="random")
