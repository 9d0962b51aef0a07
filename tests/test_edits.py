"""The one weight-edit primitive: saved entries are restored bit for bit, newest first; nothing else is held."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters
from lm_eval_lingreg.edits import SavedEntries

from helpers import assert_unchanged, snapshot


def test_overlapping_edits_restore_to_the_first_values(tiny_model):
    before = snapshot(tiny_model)
    params = named_parameters(tiny_model)
    name = "model.layers.0.mlp.up_proj.weight"
    saved = SavedEntries(tiny_model)
    for k in range(3):  # the same entries edited three times
        saved.save(name, params[name], torch.tensor([0, 5, 9]))
        params[name].data.view(-1)[[0, 5, 9]] = float(k + 10)
    assert saved.num_entries == 9 and not saved.verify()
    saved.restore()
    assert_unchanged(tiny_model, before)
    saved.restore()  # idempotent: nothing left to restore
    assert_unchanged(tiny_model, before)


def test_keep_restores_repeatedly_and_verify_checks_bits(tiny_model):
    params = named_parameters(tiny_model)
    name = "model.layers.1.self_attn.q_proj.weight"
    saved = SavedEntries.of(tiny_model, {name: torch.tensor([1, 2, 3]), "model.layers.0.mlp.up_proj.weight": torch.tensor([], dtype=torch.int64)})
    assert saved.num_entries == 3 and saved.nbytes == 3 * (4 + 4)  # int32 index + fp32 value
    for _ in range(2):
        params[name].data.view(-1)[2] += 1
        assert not saved.verify()
        saved.restore(keep=True)
        assert saved.verify()


def test_zero_grads_only_touches_saved_entries(tiny_model):
    params = named_parameters(tiny_model)
    name = "model.layers.0.mlp.down_proj.weight"
    params[name].grad = torch.ones_like(params[name])
    SavedEntries.of(tiny_model, {name: torch.tensor([0, 7])}).zero_grads()
    g = params[name].grad.view(-1)
    assert g[0] == 0 and g[7] == 0 and int((g == 0).sum()) == 2


def test_two_perturbations_restored_in_any_order_leave_the_model_exact_or_are_refused():
    from lm_eval_lingreg.errors import EditOrderError
    from lm_eval_lingreg.interventions import perturb
    from lm_eval_lingreg.perturbation import parse_spec

    from helpers import make_tiny, snapshot

    model = make_tiny("llama")
    before = snapshot(model)
    a = perturb(model, parse_spec("layer=0:dim=3:op=mul:value=4"))
    b = perturb(model, parse_spec("layer=0:dim=3:op=add:value=1"))  # the same entries again
    with pytest.raises(EditOrderError, match="restore the later one first"):
        a.restore()
    b.restore()
    a.restore()
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    # disjoint edits come off in any order
    a = perturb(model, parse_spec("layer=0:dim=3:op=mul:value=4"))
    b = perturb(model, parse_spec("layer=1:dim=5:op=mul:value=4"))
    a.restore()
    b.restore()
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
