"""BLINK data: the synthetic generator's planted answers, the local-folder loader and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from shared_data import SHARED_DATA

from vkvtrain.data.blink import BLINK_SUBTASKS, check_subtasks, load_blink, parse_answer
from vkvtrain.data.synthetic_blink import (
    synthetic_blink,
    synthetic_blink_questions,
    write_synthetic_blink,
)
from vkvtrain.errors import DatasetError

# (images, choices) per subtask, as in the hub data.
FORMAT = {
    "Art_Style": (3, 2), "Counting": (1, 4), "Forensic_Detection": (4, 4), "Functional_Correspondence": (2, 4),
    "IQ_Test": (1, 4), "Jigsaw": (3, 2), "Multi-view_Reasoning": (2, 2), "Object_Localization": (1, 2),
    "Relative_Depth": (1, 2), "Relative_Reflectance": (1, 3), "Semantic_Correspondence": (2, 4),
    "Spatial_Relation": (1, 2), "Visual_Correspondence": (2, 4), "Visual_Similarity": (3, 2),
}


@pytest.fixture(scope="module")
def questions():
    return synthetic_blink_questions(12, seed=3, image_size=64)


def _px(img, xy) -> np.ndarray:
    a = np.asarray(img).astype(int)
    h, w = a.shape[:2]
    return a[min(int(xy[1] * h), h - 1), min(int(xy[0] * w), w - 1)]


def test_all_subtasks_in_blink_format(questions) -> None:
    assert {q.sub_task for q in questions} == set(BLINK_SUBTASKS)
    for q in questions:
        assert (len(q.images), q.n_choices) == FORMAT[q.sub_task], q.sub_task
        assert q.answer in q.letters
        assert q.prompt.startswith(q.question + "\nSelect from the following choices.\n(A) ")
        assert q.idx.startswith(f"val_{q.sub_task}_")
    answers = {}
    for q in questions:
        answers.setdefault(q.sub_task, set()).add(q.answer)
    assert all(len(v) > 1 for v in answers.values())  # gold letters are shuffled, not constant


def test_deterministic_and_independent_of_other_subtasks() -> None:
    a = synthetic_blink_questions(3, seed=5)
    b = synthetic_blink_questions(3, seed=5, subtasks=["Jigsaw"])
    c = synthetic_blink_questions(3, seed=6, subtasks=["Jigsaw"])
    ja = [q for q in a if q.sub_task == "Jigsaw"]
    assert [q.answer for q in ja] == [q.answer for q in b]
    assert all(np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0])) for x, y in zip(ja, b))
    assert not all(np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0])) for x, y in zip(b, c))


def test_planted_answers(questions) -> None:
    by = lambda name: [q for q in questions if q.sub_task == name]  # noqa: E731
    for q in by("Counting"):
        a = np.asarray(q.images[0]).astype(int)
        blue = (a[..., 2] > 150) & (a[..., 0] < 100)
        assert str(ndimage.label(blue)[1]) == q.choices[q.answer_index]
    for q in by("Visual_Correspondence"):
        ref = _px(q.images[0], q.points["image_1"]["REF"])
        marks = q.points["image_2"]
        same = [bool(np.array_equal(_px(q.images[1], marks[c]), ref)) for c in q.letters]
        assert same[q.answer_index]
    for q in by("Relative_Reflectance"):
        ga, gb = (_px(q.images[0], q.points["image_1"][k]).mean() for k in "AB")
        expected = "About the same" if ga == gb else ("A is darker" if ga < gb else "B is darker")
        assert q.choices[q.answer_index] == expected
    for q in by("Spatial_Relation"):
        a = np.asarray(q.images[0]).astype(int)
        red = np.argwhere((a[..., 0] > 150) & (a[..., 2] < 100))[:, 1].mean()
        blue = np.argwhere((a[..., 2] > 150) & (a[..., 0] < 100))[:, 1].mean()
        assert q.choices[q.answer_index] == ("yes" if red < blue else "no")
    for q in by("Visual_Similarity"):
        ref, i2, i3 = (np.asarray(im).astype(int) for im in q.images)
        d = [np.abs(ref - i2).mean(), np.abs(ref - i3).mean()]
        assert int(np.argmin(d)) == q.answer_index
    for q in by("Multi-view_Reasoning"):
        a, b = (np.asarray(im) for im in q.images)
        s = a.shape[1]
        right = any(np.array_equal(a[:, k:], b[:, : s - k]) for k in range(1, s // 2))
        assert q.choices[q.answer_index] == ("right" if right else "left")


def test_local_parquet_round_trip(tmp_path: Path) -> None:
    qs = synthetic_blink_questions(2, seed=1, subtasks=["Visual_Correspondence", "Counting"])
    write_synthetic_blink(tmp_path, 2, seed=1, subtasks=["Visual_Correspondence", "Counting"])
    back = load_blink(["Counting", "Visual_Correspondence"], "val", root=tmp_path)
    assert [q.idx for q in back] == [q.idx for q in qs if q.sub_task == "Counting"] + [
        q.idx for q in qs if q.sub_task == "Visual_Correspondence"
    ]
    byidx = {q.idx: q for q in qs}
    for q in back:
        o = byidx[q.idx]
        assert (q.answer, q.prompt, q.choices, q.points) == (o.answer, o.prompt, o.choices, o.points)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(q.images, o.images))


def test_hub_snapshot_and_save_to_disk_layouts(tmp_path: Path) -> None:
    import datasets

    dd = synthetic_blink(2, seed=0, subtasks=["Jigsaw", "Art_Style"])
    (tmp_path / "Jigsaw").mkdir()
    dd["Jigsaw"].to_parquet(str(tmp_path / "Jigsaw" / "val-00000-of-00001.parquet"))
    datasets.DatasetDict({"val": dd["Art_Style"]}).save_to_disk(str(tmp_path / "Art_Style"))
    qs = load_blink(["Jigsaw", "Art_Style"], root=tmp_path)
    assert [q.sub_task for q in qs] == ["Jigsaw"] * 2 + ["Art_Style"] * 2
    assert len(qs[0].images) == 3 and qs[0].answer in "AB"


def test_missing_subtask_split_and_field(tmp_path: Path) -> None:
    write_synthetic_blink(tmp_path, 1, subtasks=["Counting"])
    with pytest.raises(DatasetError, match="Jigsaw.*does not exist"):
        load_blink(["Jigsaw"], root=tmp_path)
    with pytest.raises(DatasetError, match=r"counting does not exist \(found \['Counting'\]\)"):
        load_blink(["counting"], root=tmp_path)  # a local folder names its subtasks: the near miss is shown
    with pytest.raises(DatasetError, match="unknown BLINK subtask.*counting"):
        check_subtasks(["counting"])  # the hub has BLINK's 14 only
    with pytest.raises(DatasetError, match="no 'test' split"):
        load_blink(["Counting"], "test", root=tmp_path)
    with pytest.raises(DatasetError, match="unknown BLINK split"):
        load_blink(["Counting"], "train", root=tmp_path)
    ds = synthetic_blink(1, subtasks=["Jigsaw"])["Jigsaw"].remove_columns(["prompt", "image_4"])
    (tmp_path / "Jigsaw").mkdir()
    ds.to_parquet(str(tmp_path / "Jigsaw" / "val.parquet"))
    with pytest.raises(DatasetError, match=r"\['image_4', 'prompt'\]"):
        load_blink(["Jigsaw"], root=tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_blink(["Counting"], root=tmp_path / "nowhere")


def test_corrupt_image_names_the_question(tmp_path: Path) -> None:
    import datasets

    from vkvtrain.errors import ImageLoadError

    ds = synthetic_blink(2, subtasks=["Counting"])["Counting"].cast_column("image_1", datasets.Image(decode=False))
    cells = list(ds["image_1"])
    cells[1] = {"bytes": cells[1]["bytes"][: len(cells[1]["bytes"]) // 2], "path": None}  # cut short
    ds = ds.remove_columns("image_1").add_column("image_1", cells, feature=datasets.Image())
    (tmp_path / "Counting").mkdir()
    ds.to_parquet(str(tmp_path / "Counting" / "val.parquet"))
    idx = ds["idx"][1]
    with pytest.raises(ImageLoadError, match=rf"BLINK question '{idx}', field image_1: the image is corrupt"):
        load_blink(["Counting"], root=tmp_path)
    assert len(load_blink(["Counting"], root=tmp_path, limit=1)) == 1  # the intact question still loads


def test_answer_field_parsing() -> None:
    assert parse_answer("(C)") == "C" and parse_answer("B") == "B"
    assert parse_answer("hidden") is None and parse_answer("") is None and parse_answer(None) is None


ANSWER_KEY = SHARED_DATA / "blink_benchmark" / "val_answers.json"


@pytest.mark.skipif(not ANSWER_KEY.exists(), reason="optional: the real BLINK val answer key is not on this machine")
def test_real_val_answer_key_counts() -> None:
    key = json.loads(ANSWER_KEY.read_text())
    counts: dict[str, int] = {}
    for idx, ans in key.items():
        sub = idx[len("val_"):].rsplit("_", 1)[0]
        counts[sub] = counts.get(sub, 0) + 1
        assert parse_answer(ans) is not None, (idx, ans)
    assert counts == {
        "Art_Style": 117, "Counting": 120, "Forensic_Detection": 132, "Functional_Correspondence": 130,
        "IQ_Test": 150, "Jigsaw": 150, "Multi-view_Reasoning": 133, "Object_Localization": 122,
        "Relative_Depth": 124, "Relative_Reflectance": 134, "Semantic_Correspondence": 139,
        "Spatial_Relation": 143, "Visual_Correspondence": 172, "Visual_Similarity": 135,
    }
    assert sum(counts.values()) == 1901
