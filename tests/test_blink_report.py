"""Per-subtask scores, macro vs micro on a hand-computed example, and the three output files."""

from __future__ import annotations

import json

import pytest

from vkvtrain.evaluation.report import markdown, summarize, write_outputs


def _rec(sub: str, answer: str | None, prediction: str | None) -> dict:
    return {"idx": f"{sub}_{id(object())}", "sub_task": sub, "answer": answer, "prediction": prediction,
            "correct": prediction is not None and prediction == answer, "response": prediction, "scores": None}


def test_macro_vs_micro_hand_computed() -> None:
    # Art_Style: 3 of 4 right (0.75), one invalid. Counting: 1 of 1 right (1.0). Jigsaw: 0 of 5 right.
    recs = (
        [_rec("Art_Style", "A", "A")] * 3 + [_rec("Art_Style", "B", None)]
        + [_rec("Counting", "C", "C")]
        + [_rec("Jigsaw", "A", "B")] * 5
    )
    r = summarize(recs)
    assert r["subtasks"]["Art_Style"] == pytest.approx(
        {"accuracy": 0.75, "n": 4, "invalid": 0.25, "n_correct": 3, "n_invalid": 1, "n_unscored": 0}
    )
    assert r["subtasks"]["Jigsaw"]["accuracy"] == 0.0 and r["subtasks"]["Jigsaw"]["invalid"] == 0.0
    assert r["macro"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)  # 0.5833
    assert r["micro"] == pytest.approx(4 / 10)
    assert list(r["subtasks"]) == ["Art_Style", "Counting", "Jigsaw"]  # BLINK order


def test_hidden_answers_are_not_scored() -> None:
    r = summarize([_rec("Counting", None, "A"), _rec("Counting", "A", "A")])
    assert r["subtasks"]["Counting"]["n"] == 1 and r["subtasks"]["Counting"]["n_unscored"] == 1
    assert r["micro"] == 1.0
    r = summarize([_rec("Counting", None, "A")])
    assert r["macro"] is None and r["micro"] is None


def test_writes_three_files_with_strict_json(tmp_path) -> None:
    recs = [_rec("Art_Style", "A", "A"), _rec("Art_Style", "B", "A")]
    res = summarize(recs)
    res["latent"] = {"layer_selection": "2", "layers": [0, 1, 2], "subtasks": {"Art_Style": {
        "layer": 2, "n": 2, "n_heldout": 0, "output_accuracy": 0.5, "probe_accuracy": 1.0, "gap_all": 0.5,
        "gap_wrong": float("nan"), "per_layer": {"gap_wrong": [float("nan")] * 3}}}}
    write_outputs(tmp_path, res, recs)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["subtasks"]["Art_Style"]["accuracy"] == 0.5
    assert loaded["latent"]["subtasks"]["Art_Style"]["gap_wrong"] is None  # NaN -> null
    lines = (tmp_path / "responses.jsonl").read_text().splitlines()
    assert [json.loads(x)["prediction"] for x in lines] == ["A", "A"]
    md = (tmp_path / "results.md").read_text()
    assert "| Art_Style | 2 | 50.0 | 0.0 |" in md and "macro (official)" in md and "| Art_Style | 2 | 2 | 50.0 | 100.0 | 50.0 | - |" in md
    assert md == markdown(res)
    assert "No held-out questions" not in md
    res["latent"]["layer_selection"] = "heldout"
    res["latent"]["subtasks"]["Art_Style"].update(layer=None, probe_accuracy=None, gap_all=None)
    assert "No held-out questions to choose a layer on in: Art_Style." in markdown(res)


def test_wandb_tables_offline(tmp_path, monkeypatch) -> None:
    import wandb

    from vkvtrain.evaluation.report import log_wandb
    from vkvtrain.wandb_offline import find_run_file, history

    monkeypatch.setenv("WANDB_MODE", "offline")
    res = summarize([_rec("Art_Style", "A", "A"), _rec("Counting", "B", "A"), _rec("Counting", "B", "B")])
    run = wandb.init(project="blink-test", mode="offline", dir=str(tmp_path), settings=wandb.Settings(silent=True))
    log_wandb(res, run)
    run.finish()
    (row,) = history(find_run_file(tmp_path))
    assert row["blink/macro"] == 0.75 and row["blink/micro"] == pytest.approx(2 / 3)
    assert row["blink/subtasks/_type"] == "table-file" and row["blink/subtasks/nrows"] == 2
    table_file = next(tmp_path.glob("wandb/offline-run-*/files/" + row["blink/subtasks/path"]))
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["subtask", "n", "accuracy", "invalid"]
    assert table["data"] == [["Art_Style", 1, 1.0, 0.0], ["Counting", 2, 0.5, 0.0]]
