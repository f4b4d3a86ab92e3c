"""A malformed gold answer or an empty subtask is an error naming it, or, opted in, a skip that results list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.cli import main
from vkvtrain.data.blink import load_blink, read_blink
from vkvtrain.data.synthetic_blink import synthetic_blink
from vkvtrain.errors import DatasetError
from vkvtrain.evaluation.report import summarize

CONFIG = str(Path(__file__).resolve().parents[1] / "eval" / "blink.yaml")


def _write(root: Path, answers: dict[str, list[str]], split: str = "val") -> Path:
    """One parquet per subtask with the given gold answer strings (an empty list writes a 0-row subtask)."""
    for name, golds in answers.items():
        ds = synthetic_blink(max(len(golds), 1), seed=0, subtasks=[name], image_size=32, split=split)[name]
        ds = ds.select(range(len(golds))).map(lambda row, i: {"answer": golds[i]}, with_indices=True)
        (root / name).mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / name / f"{split}.parquet"))
    return root


# Counting has 4 choices (A-D): every string that is not one of them, in either spelling lmms-eval's gold
# answers use, is malformed on val.
MALFORMED = ["(Z)", "Z", "", "(E)", "E", "(b)", "hidden", "(A)(B)", "A or B", "(1)"]


@pytest.mark.parametrize("gold", MALFORMED)
def test_malformed_gold_answer_is_an_error_naming_the_question(tmp_path: Path, gold: str) -> None:
    _write(tmp_path, {"Counting": ["(A)", gold, "C"]})
    with pytest.raises(DatasetError, match=r"'val_Counting_2' \(Counting, val\): gold answer .* is not one of its 4 "
                                           r"choices \(A\), \(B\), \(C\), \(D\).*data.skip_malformed"):
        load_blink(["Counting"], root=tmp_path)
    load = read_blink(["Counting"], root=tmp_path, skip_malformed=True)
    assert [q.idx for q in load.questions] == ["val_Counting_1", "val_Counting_3"]
    assert [(s["subtask"], s["idx"]) for s in load.skipped] == [("Counting", "val_Counting_2")]


def test_well_formed_and_hidden_answers_load(tmp_path: Path) -> None:
    _write(tmp_path, {"Counting": ["(A)", "B", " (C) ", "D"]})
    assert [q.answer for q in load_blink(["Counting"], root=tmp_path)] == ["A", "B", "C", "D"]
    _write(tmp_path, {"Counting": ["hidden", ""]}, split="test")
    assert [q.answer for q in load_blink(["Counting"], "test", root=tmp_path)] == [None, None]


def test_empty_subtask_is_an_error_naming_it(tmp_path: Path) -> None:
    _write(tmp_path, {"Counting": ["(A)"], "Jigsaw": []})
    with pytest.raises(DatasetError, match="BLINK subtask Jigsaw \\(val\\) holds no questions.*macro"):
        load_blink(["Counting", "Jigsaw"], root=tmp_path)
    load = read_blink(["Counting", "Jigsaw"], root=tmp_path, skip_malformed=True)
    assert load.subtasks == ["Counting"] and [s["subtask"] for s in load.skipped] == ["Jigsaw"]
    _write(tmp_path, {"Jigsaw": ["(Q)"]})  # a subtask with nothing well-formed left is empty too
    load = read_blink(["Counting", "Jigsaw"], root=tmp_path, skip_malformed=True)
    assert load.subtasks == ["Counting"] and [s["idx"] for s in load.skipped] == ["val_Jigsaw_1", None]
    assert "Jigsaw (val) holds no well-formed questions" in load.skipped[1]["reason"]
    rec = {"idx": "a", "sub_task": "Counting", "answer": "A", "prediction": "A", "correct": True}
    with pytest.raises(DatasetError, match=r"no answered questions in subtask\(s\) \['Jigsaw'\]"):
        summarize([rec], ["Counting", "Jigsaw"])
    with pytest.raises(DatasetError, match=r"\['Counting'\] that were not loaded"):
        summarize([rec, {**rec, "sub_task": "Jigsaw"}], ["Jigsaw"])


def test_evaluate_errors_by_default_and_lists_opt_in_skips(tmp_path: Path, capsys) -> None:
    root = _write(tmp_path / "blink", {"Counting": ["(A)", "(Z)", "(C)"], "Art_Style": ["(B)", "(A)"], "Jigsaw": []})
    args = ["evaluate", CONFIG, "--model", "tiny://llava_onevision", "--data.root", str(root), "--mode", "likelihood",
            "--data.subtasks", "[Counting, Art_Style, Jigsaw]", "--probes.enabled", "false", "--progress", "false"]
    assert main([*args, "--output_dir", str(tmp_path / "strict")]) == 2
    assert "'val_Counting_2' (Counting, val): gold answer '(Z)'" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    assert main([*args, "--output_dir", str(tmp_path / "skip"), "--data.skip_malformed", "true"]) == 0
    res = json.loads((tmp_path / "skip" / "results.json").read_text())
    assert [(s["subtask"], s["idx"]) for s in res["skipped"]] == [("Counting", "val_Counting_2"), ("Jigsaw", None)]
    assert list(res["subtasks"]) == ["Art_Style", "Counting"] and res["subtasks"]["Counting"]["n"] == 2
    assert res["macro"] == pytest.approx((res["subtasks"]["Art_Style"]["accuracy"] + res["subtasks"]["Counting"]["accuracy"]) / 2)
    md = (tmp_path / "skip" / "results.md").read_text()
    assert "Skipped (data.skip_malformed): 2" in md and "Jigsaw (whole subtask)" in md and "val_Counting_2" in md
