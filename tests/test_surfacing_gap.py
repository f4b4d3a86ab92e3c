"""SurfacingGap: planted shares, a brute-force oracle, summed states, and its wiring in evaluate_blink."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vkvtrain.data.synthetic_blink import synthetic_blink_questions
from vkvtrain.evaluation import blink as blink_eval
from vkvtrain.evaluation.blink import evaluate_blink, is_heldout
from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
from vkvtrain.evaluation.scoring import Answer
from vkvtrain.probes.surfacing_gap import SurfacingGap


def test_planted_probe_right_output_wrong() -> None:
    # subtask 0: 8 questions, output wrong on 6, probe right on all -> 6/8 of all, 6/6 of wrong.
    # subtask 1: 4 questions, output right on all -> gap 0, gap_wrong undefined (NaN).
    m = SurfacingGap(num_subtasks=3, num_layers=2)
    ids = torch.tensor([0] * 8 + [1] * 4)
    out_ok = torch.tensor([True, True] + [False] * 6 + [True] * 4)
    probe = torch.ones(12, 2, dtype=torch.bool)
    probe[:, 1] = False  # layer 1 probe always wrong
    m.update(ids, out_ok, probe)
    r = m.compute()
    assert r["gap_all"][0].tolist() == [0.75, 0.0]
    assert r["gap_wrong"][0].tolist() == [1.0, 0.0]
    assert r["gap_all"][1].tolist() == [0.0, 0.0]
    assert all(math.isnan(x) for x in r["gap_wrong"][1].tolist())
    assert r["output_accuracy"][:2].tolist() == [0.25, 1.0]
    assert math.isnan(float(r["output_accuracy"][2]))  # no question of subtask 2


def test_matches_brute_force_and_states_are_fixed_size() -> None:
    rng = np.random.default_rng(0)
    S, L, N = 4, 5, 300
    ids = rng.integers(0, S, N)
    ok = rng.random(N) < 0.4
    probe = rng.random((N, L)) < 0.6
    m = SurfacingGap(S, L)
    for chunk in np.array_split(np.arange(N), 7):
        m.update(torch.tensor(ids[chunk]), torch.tensor(ok[chunk]), torch.tensor(probe[chunk]))
        assert m.probe_right_output_wrong.shape == (S, L) and m.total.shape == (S,)
    r = m.compute()
    for s in range(S):
        sel = ids == s
        both = (probe[sel] & ~ok[sel, None]).sum(0)
        np.testing.assert_allclose(r["gap_all"][s].numpy(), both / sel.sum(), rtol=1e-6)
        np.testing.assert_allclose(r["gap_wrong"][s].numpy(), both / (~ok[sel]).sum(), rtol=1e-6)
        np.testing.assert_allclose(r["probe_accuracy"][s].numpy(), probe[sel].mean(0), rtol=1e-6)


def test_states_reduce_by_sum() -> None:
    # Two "processes" merged the way torchmetrics syncs them equal one metric that saw everything.
    a, b, whole = SurfacingGap(2, 3), SurfacingGap(2, 3), SurfacingGap(2, 3)
    x = (torch.tensor([0, 1, 1]), torch.tensor([False, False, True]), torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]]).bool())
    y = (torch.tensor([0, 0]), torch.tensor([False, True]), torch.tensor([[0, 1, 1], [1, 1, 1]]).bool())
    a.update(*x)
    b.update(*y)
    whole.update(*x)
    whole.update(*y)
    assert all(a._reductions[k] is torch.sum or getattr(a._reductions[k], "__name__", "") == "dim_zero_sum" for k in a._defaults)
    a.merge_state(b)
    for k, v in whole.compute().items():
        torch.testing.assert_close(a.compute()[k], v, equal_nan=True)


def test_bad_shapes_fail_clearly() -> None:
    m = SurfacingGap(2, 3)
    with pytest.raises(ValueError, match="probe_correct"):
        m.update(torch.tensor([0]), torch.tensor([True]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="subtask_ids"):
        m.update(torch.tensor([2]), torch.tensor([True]), torch.ones(1, 3, dtype=torch.bool))


class _FakeMLM:
    num_layers = 3
    name = "fake"


def _planted(monkeypatch: pytest.MonkeyPatch, probe_fn, output_right_fn) -> None:
    """Replace the model calls: the output picks the gold choice iff output_right_fn(q); probe per probe_fn(q)."""

    def fake_scores(mlm, chunk, protocol, on_prefill=None):
        if on_prefill is not None:
            on_prefill(SimpleNamespace(spans=None), None)
        out = []
        for q in chunk:
            s = [0.0] * q.n_choices
            pick = q.answer_index if output_right_fn(q) else (q.answer_index + 1) % q.n_choices
            s[pick] = 1.0
            out.append(Answer(scores=s))
        return out

    def fake_probe(chunk, spans, cache, layers):
        return [probe_fn(q) if blink_eval.probe_kind(q) else None for q in chunk]

    monkeypatch.setattr(blink_eval, "score_choices", fake_scores)
    monkeypatch.setattr(blink_eval, "probe_correct_batch", fake_probe)


def test_evaluate_reports_planted_gap_at_fixed_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    qs = synthetic_blink_questions(6, seed=1, subtasks=["Art_Style", "Visual_Similarity", "Counting"])
    wrong_art = {q.idx for q in qs if q.sub_task == "Art_Style"} - {"val_Art_Style_1", "val_Art_Style_2"}
    _planted(
        monkeypatch,
        probe_fn=lambda q: torch.tensor([False, True, True]),
        output_right_fn=lambda q: q.idx not in wrong_art,
    )
    records, res = evaluate_blink(_FakeMLM(), qs, EvalConfig(mode="likelihood", probes=ProbeConfig(probe_layer=1)), progress=False)
    art = res["latent"]["subtasks"]["Art_Style"]
    assert art["layer"] == 1 and art["n"] == 6
    assert art["gap_all"] == pytest.approx(4 / 6) and art["gap_wrong"] == 1.0
    assert art["per_layer"]["gap_all"][0] == 0.0  # layer 0 probe planted wrong
    assert res["latent"]["subtasks"]["Visual_Similarity"]["gap_all"] == 0.0
    assert "Counting" not in res["latent"]["subtasks"]  # no probe defined
    assert res["subtasks"]["Art_Style"]["accuracy"] == pytest.approx(2 / 6)


def test_heldout_layer_is_chosen_on_heldout_questions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Held-out questions: probe right only at layer 0. Evaluated ones: right only at layer 2.
    # The chosen layer must be 0 (a max over the evaluated questions would pick 2).
    qs = synthetic_blink_questions(40, seed=2, subtasks=["Visual_Similarity"])
    frac = 0.3
    held = [q for q in qs if is_heldout(q.idx, frac)]
    assert 0 < len(held) < len(qs)
    _planted(
        monkeypatch,
        probe_fn=lambda q: torch.tensor([True, False, False]) if is_heldout(q.idx, frac) else torch.tensor([False, False, True]),
        output_right_fn=lambda q: False,
    )
    _, res = evaluate_blink(_FakeMLM(), qs, EvalConfig(mode="likelihood", probes=ProbeConfig(probe_layer="heldout", heldout_fraction=frac)), progress=False)
    vs = res["latent"]["subtasks"]["Visual_Similarity"]
    assert vs["layer"] == 0
    assert vs["n"] == len(qs) - len(held) and vs["n_heldout"] == len(held)
    assert vs["gap_all"] == 0.0 and vs["per_layer"]["gap_all"][2] == 1.0


def test_fixed_probe_layer_must_exist_and_be_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    from vkvtrain.errors import RecipeError

    qs = synthetic_blink_questions(1, seed=0, subtasks=["Art_Style"])
    _planted(monkeypatch, probe_fn=lambda q: torch.tensor([True]), output_right_fn=lambda q: True)
    with pytest.raises(RecipeError, match="layer 7 does not exist"):
        evaluate_blink(_FakeMLM(), qs, EvalConfig(mode="likelihood", probes=ProbeConfig(probe_layer=7)), progress=False)
    with pytest.raises(RecipeError, match="not among probes.layers"):
        evaluate_blink(_FakeMLM(), qs, EvalConfig(mode="likelihood", probes=ProbeConfig(layers=[0], probe_layer=2)), progress=False)
