"""Point coordinates of BLINK questions read from their pixels: per question, cached, counted when not found,
and the latent point probes run on a local BLINK folder without coordinates exactly as with them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.data.blink import IMAGE_FIELDS, load_blink
from vkvtrain.data.blink_points import expected_markers, fill_points, locate_question_points, ring_colors
from vkvtrain.data.blink_rows import blink_features, questions_to_rows
from vkvtrain.data.markers import MarkerStyle, label_box
from vkvtrain.data.synthetic_blink import synthetic_blink_questions

POINT_SUBTASKS = ["Visual_Correspondence", "Semantic_Correspondence", "Functional_Correspondence",
                  "Relative_Depth", "Relative_Reflectance"]
SIZE = 480


@pytest.fixture(scope="module")
def marked():
    """Synthetic point-marked questions at a BLINK-like size, with their true points."""
    return synthetic_blink_questions(3, seed=11, subtasks=POINT_SUBTASKS, image_size=SIZE)


def _erase_label(q, field: str, label: str):
    """``q`` with the label box of ``label`` on ``field`` painted over in the image's mean colour."""
    i = IMAGE_FIELDS.index(field)
    image = q.images[i].copy()
    w, h = image.size
    x, y = q.points[field][label]
    box = label_box(label, (x * w, y * h), MarkerStyle.for_image(w, h), (w, h))
    pixels = np.asarray(image).copy()
    pixels[box[1]: box[3], box[0]: box[2]] = pixels.reshape(-1, 3).mean(0).astype(np.uint8)
    images = list(q.images)
    images[i] = Image.fromarray(pixels)
    return dataclasses.replace(q, images=images)


def test_expected_markers_per_subtask(marked) -> None:
    by = {q.sub_task: q for q in marked}
    assert expected_markers(by["Visual_Correspondence"]) == {"image_1": ["REF"], "image_2": ["A", "B", "C", "D"]}
    assert expected_markers(by["Relative_Depth"]) == {"image_1": ["A", "B"]}
    assert ring_colors("Relative_Reflectance")[0] == "white" and ring_colors("Relative_Depth") == ("red",)
    counting = synthetic_blink_questions(1, subtasks=["Counting"])[0]
    assert expected_markers(counting) is None
    assert locate_question_points(counting, use_cache=False).points is None


def test_located_points_match_the_drawn_ones_and_are_cached(marked, tmp_path: Path) -> None:
    bare = [dataclasses.replace(q, points=None) for q in marked]
    filled, report = fill_points(bare, tmp_path)
    assert set(report) == set(POINT_SUBTASKS)
    assert all(v["located"] == v["questions"] == 3 and v["not_found"] == 0 and v["from_cache"] == 0
               for v in report.values())
    for q, truth in zip(filled, marked):
        assert q.points is not None and set(q.points) == set(truth.points)
        for field, marks in truth.points.items():
            assert set(q.points[field]) == set(marks)
            for label, (x, y) in marks.items():
                fx, fy = q.points[field][label]
                assert abs(fx - x) * SIZE <= 1.0 and abs(fy - y) * SIZE <= 1.0
    assert len(list(tmp_path.glob("*.json"))) == len(marked)
    again, report = fill_points(bare, tmp_path)
    assert all(v["from_cache"] == 3 for v in report.values())
    assert [q.points for q in again] == [q.points for q in filled]
    # the key is the pixels: an image changed by one pixel is searched afresh
    changed = bare[0].images[0].copy()
    changed.putpixel((0, 0), (1, 2, 3))
    assert not locate_question_points(dataclasses.replace(bare[0], images=[changed, *bare[0].images[1:]]),
                                      tmp_path).cached
    # questions that carry points, and subtasks without markers, pass through uncounted
    kept, report = fill_points([marked[0], *synthetic_blink_questions(1, subtasks=["Jigsaw"])], tmp_path)
    assert report == {} and kept[0].points == marked[0].points


def test_missing_markers_are_counted_never_guessed(marked, tmp_path: Path) -> None:
    q = next(q for q in marked if q.sub_task == "Visual_Correspondence")
    damaged = dataclasses.replace(_erase_label(q, "image_2", "C"), points=None)
    filled, report = fill_points([damaged], tmp_path)
    assert filled[0].points is None
    entry = report["Visual_Correspondence"]
    assert (entry["questions"], entry["located"], entry["not_found"]) == (1, 0, 1)
    assert entry["problems"][q.idx] == "image_2: C not found"
    cached = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert cached == {"points": None, "problem": "image_2: C not found"}


def _write_without_points(root: Path, questions) -> None:
    import datasets

    for name in sorted({q.sub_task for q in questions}):
        rows = questions_to_rows([q for q in questions if q.sub_task == name])
        ds = datasets.Dataset.from_dict(rows, features=blink_features()).remove_columns(["points"])
        (root / name).mkdir(parents=True)
        ds.to_parquet(str(root / name / "val.parquet"))


def test_latent_probes_on_a_local_folder_without_points_equal_the_run_with_them(marked, tiny_mlm, tmp_path) -> None:
    from vkvtrain.evaluation.blink import evaluate_blink
    from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
    from vkvtrain.evaluation.report import write_outputs

    corr = [q for q in marked if q.sub_task.endswith("Correspondence")]
    damaged = dataclasses.replace(_erase_label(corr[0], "image_1", "REF"), idx="val_Visual_Correspondence_99")
    _write_without_points(tmp_path / "blink", [*corr, damaged])
    local = load_blink(["Visual_Correspondence", "Semantic_Correspondence", "Functional_Correspondence"],
                       root=tmp_path / "blink")
    assert all(q.points is None for q in local)
    mlm = tiny_mlm("llava_onevision")
    options = EvalConfig(mode="likelihood", probes=ProbeConfig(layers=[0, -1], probe_layer=0,
                                                               marker_cache=str(tmp_path / "cache")))
    records, results = evaluate_blink(mlm, local, options, progress=False)
    truth, _ = evaluate_blink(mlm, corr, options, progress=False)
    by_idx = {r["idx"]: r for r in records}
    for ref in truth:
        got = by_idx[ref["idx"]]
        assert got["probe_correct"] == ref["probe_correct"]
        for field, marks in ref["points"].items():
            for label, (x, y) in marks.items():
                assert np.allclose(got["points"][field][label], (x, y), atol=1.0 / SIZE)
    assert "points" not in by_idx[damaged.idx] and "probe_correct" not in by_idx[damaged.idx]
    assert results["markers"]["Visual_Correspondence"]["not_found"] == 1
    assert results["markers"]["Semantic_Correspondence"] == {"questions": 3, "located": 3, "not_found": 0,
                                                            "from_cache": 0, "problems": {}}
    assert results["latent"]["subtasks"]["Visual_Correspondence"]["n"] == 3
    out = write_outputs(tmp_path / "out", results, records)
    lines = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert sum("points" in line for line in lines) == len(corr)
    assert "| Visual_Correspondence | 4 | 3 | 1 |" in (out / "results.md").read_text()
    off = EvalConfig(mode="likelihood", probes=ProbeConfig(layers=[0], probe_layer=0, locate_markers=False))
    records, results = evaluate_blink(mlm, local, off, progress=False)
    assert "markers" not in results and all("probe_correct" not in r for r in records)
