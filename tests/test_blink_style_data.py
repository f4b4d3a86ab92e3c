"""BLINK-style training questions from real datasets, each builder on a small tree in its native layout made
here: exact answers checked against planted ground truth, BLINK's format, the leakage guard, `fit`'s reader."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vkvtrain.data.blink import parse_answer
from vkvtrain.data.blink_points import locate_question_points
from vkvtrain.data.blink_questions import (RELATIVE_DEPTH, RELATIVE_DEPTH_CHOICES, SEMANTIC_CORRESPONDENCE,
                                           VISUAL_CORRESPONDENCE, blink_prompt, point_choices)
from vkvtrain.data.blink_rows import write_questions
from vkvtrain.data.blink_style import build_blink_style
from vkvtrain.data.blink_style.hpatches import hpatches_questions
from vkvtrain.data.blink_style.leakage import ImageHashIndex, hamming, perceptual_hash
from vkvtrain.data.blink_style.middlebury import middlebury_questions, read_pfm
from vkvtrain.data.blink_style.spair import spair_questions
from vkvtrain.data.markers import draw_markers
from vkvtrain.data.synthetic_blink import synthetic_blink_questions
from vkvtrain.data.training import REVISION_PLACEHOLDER, DataSource, load_rows, to_example
from vkvtrain.errors import DatasetError

W, H = 480, 360
HOMOGRAPHIES = {  # image 1 -> image k, 0-based pixel-centre coordinates
    2: np.array([[1.05, 0.02, -12.0], [0.01, 0.98, 6.0], [2e-5, 1e-5, 1.0]]),
    3: np.array([[0.9, -0.05, 30.0], [0.04, 0.93, 10.0], [-1e-5, 3e-5, 1.0]]),
}


def _coordinate_image(seed: int) -> np.ndarray:
    """(H, W, 3): R and G encode a pixel's own column and row, B is random texture."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:H, 0:W]
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (H // 8, W // 8), dtype=np.uint8))
                         .resize((W, H), Image.Resampling.NEAREST))
    return np.stack([np.round(255 * (cols + 0.5) / W), np.round(255 * (rows + 0.5) / H), texture], -1).astype(np.uint8)


def _warp(image: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Image k of image 1 under ``h`` (nearest neighbour through the inverse map; outside = black)."""
    rows, cols = np.mgrid[0:H, 0:W]
    src = np.linalg.inv(h) @ np.stack([cols.ravel(), rows.ravel(), np.ones(H * W)])
    x, y = np.rint(src[0] / src[2]).astype(int), np.rint(src[1] / src[2]).astype(int)
    ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    out = np.zeros_like(image).reshape(-1, 3)
    out[ok] = image[y[ok], x[ok]]
    return out.reshape(image.shape)


def _hpatches(root: Path) -> Path:
    for seq, seed in (("v_planted", 0), ("i_planted", 1)):
        folder = root / seq
        folder.mkdir(parents=True)
        first = _coordinate_image(seed)
        Image.fromarray(first).save(folder / "1.ppm")
        for k, h in HOMOGRAPHIES.items():
            h = h if seq.startswith("v_") else np.eye(3)
            Image.fromarray(_warp(first, h)).save(folder / f"{k}.ppm")
            (folder / f"H_1_{k}").write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in h) + "\n")
    return root


def _px(image: Image.Image, xy: tuple[float, float]) -> np.ndarray:
    w, h = image.size
    return np.asarray(image)[int(xy[1] * h), int(xy[0] * w)].astype(float)


def _separation(points: list[tuple[float, float]], size: tuple[int, int]) -> float:
    w, h = size
    return min(np.hypot((a[0] - b[0]) * w, (a[1] - b[1]) * h) / max(w, h)
               for i, a in enumerate(points) for b in points[i + 1:])


def test_hpatches_answers_are_the_homography_images_of_ref(tmp_path: Path) -> None:
    root = _hpatches(tmp_path / "hpatches-sequences-release")
    qs = list(hpatches_questions(root, n=8, seed=0))
    assert len(qs) == 8 and {re.search(r"HPatches (\w+)", q.explanation).group(1) for q in qs} == {"v_planted",
                                                                                                     "i_planted"}
    for q in qs:
        assert q.sub_task == "Visual_Correspondence" and q.question == VISUAL_CORRESPONDENCE
        assert q.choices == point_choices(4) and q.prompt == blink_prompt(VISUAL_CORRESPONDENCE, q.choices)
        assert parse_answer(f"({q.answer})") == q.answer
        ref, answer = q.points["image_1"]["REF"], q.points["image_2"][q.answer]
        # the colour at the answer encodes where in image 1 it came from: REF (8-bit and nearest-pixel rounding)
        source = _px(q.images[1], answer)[:2] / 255
        assert np.allclose(source, ref, atol=0.012), (q.explanation, source, ref)
        assert _separation(list(q.points["image_2"].values()), q.images[1].size) >= 0.12 - 1e-9
        # the markers drawn are BLINK's: the localiser reads them back (hard-edged red blocks of this planted
        # image pull a ring's centre by up to ~2 px; smooth backgrounds are held to 1 px in test_markers)
        located = locate_question_points(q, use_cache=False)
        assert located.points is not None
        assert all(np.allclose(located.points[f][k], xy, atol=2.5 / W) for f in q.points for k, xy in q.points[f].items())
    assert len({q.answer for q in qs}) > 1
    again = list(hpatches_questions(root, n=8, seed=0))
    other = list(hpatches_questions(root, n=8, seed=1))
    assert [q.points for q in again] == [q.points for q in qs]
    assert [q.points for q in other] != [q.points for q in qs]


def test_hpatches_layout_errors(tmp_path: Path) -> None:
    root = _hpatches(tmp_path / "h")
    (root / "v_planted" / "H_1_3").unlink()
    with pytest.raises(DatasetError, match=r"H_1_3 is missing"):
        list(hpatches_questions(root, n=1))
    with pytest.raises(DatasetError, match="is missing. Expected the native layout"):
        list(hpatches_questions(tmp_path / "absent", n=1))


def _spair(root: Path) -> list[dict]:
    rng = np.random.default_rng(3)
    pairs = []
    for p in range(2):
        for name in (f"src{p}.jpg", f"trg{p}.jpg"):
            (root / "JPEGImages" / "cat").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / "cat" / name)
        src = rng.uniform([40, 40], [W - 40, H - 40], (7, 2)).round()
        trg = rng.uniform([60, 50], [W - 60, H - 50], (7, 2)).round()
        ann = {"src_imname": f"src{p}.jpg", "trg_imname": f"trg{p}.jpg", "category": "cat",
               "src_kps": src.tolist(), "trg_kps": trg.tolist(), "src_bndbox": [30, 30, W - 30, H - 30],
               "trg_bndbox": [50, 40, W - 50, H - 40]}
        (root / "PairAnnotation" / "trn").mkdir(parents=True, exist_ok=True)
        (root / "PairAnnotation" / "trn" / f"{p:06d}-src{p}-trg{p}:cat.json").write_text(json.dumps(ann))
        pairs.append(ann)
    return pairs


def test_spair_ref_and_answer_are_one_annotated_keypoint(tmp_path: Path) -> None:
    anns = _spair(tmp_path / "SPair-71k")
    qs = list(spair_questions(tmp_path / "SPair-71k", n=6, seed=0))
    assert len(qs) == 6
    for i, q in enumerate(qs):
        ann = anns[i % 2]
        assert q.question == SEMANTIC_CORRESPONDENCE and q.choices == point_choices(4)
        j = int(re.search(r"keypoint (\d+)", q.explanation).group(1))
        ref, answer = q.points["image_1"]["REF"], q.points["image_2"][q.answer]
        assert np.allclose(ref, ((ann["src_kps"][j][0] + 0.5) / W, (ann["src_kps"][j][1] + 0.5) / H))
        assert np.allclose(answer, ((ann["trg_kps"][j][0] + 0.5) / W, (ann["trg_kps"][j][1] + 0.5) / H))
        wrong = [xy for letter, xy in q.points["image_2"].items() if letter != q.answer]
        trg = {((x + 0.5) / W, (y + 0.5) / H) for x, y in ann["trg_kps"]}
        x0, y0, x1, y1 = ann["trg_bndbox"]
        # distractors: other keypoints first; filled up with points inside the target box
        assert all(xy in trg or (x0 / W <= xy[0] <= (x1 + 1) / W and y0 / H <= xy[1] <= (y1 + 1) / H) for xy in wrong)
        assert _separation([answer, *wrong], (W, H)) >= 0.05 - 1e-9


def _pfm(path: Path, disparity: np.ndarray) -> None:
    """Greyscale little-endian PFM (rows bottom-up), written by hand from the format's definition."""
    h, w = disparity.shape
    path.write_bytes(f"Pf\n{w} {h}\n-1.0\n".encode() + np.flipud(disparity).astype("<f4").tobytes())


def test_middlebury_closer_point_has_the_larger_disparity(tmp_path: Path) -> None:
    scene = tmp_path / "middlebury" / "Planted-perfect"
    scene.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(scene / "im0.png")
    disparity = np.full((H, W), 12.0, np.float32)
    disparity[:, W // 2:] = 40.0  # the right half is closer
    disparity[: H // 4] = np.inf  # unknown
    _pfm(scene / "disp0.pfm", disparity)
    assert np.array_equal(read_pfm(scene / "disp0.pfm"), disparity)
    qs = list(middlebury_questions(tmp_path / "middlebury", n=10, seed=0))
    assert len(qs) == 10 and len({q.answer for q in qs}) == 2
    for q in qs:
        assert q.question == RELATIVE_DEPTH and q.choices == list(RELATIVE_DEPTH_CHOICES)
        d = {k: disparity[int(y * H), int(x * W)] for k, (x, y) in q.points["image_1"].items()}
        assert np.isfinite(list(d.values())).all() and d["A"] != d["B"]
        assert q.choices[q.answer_index] == ("A is closer" if d["A"] > d["B"] else "B is closer")
    with pytest.raises(DatasetError, match="not a greyscale PFM"):
        (scene / "disp0.pfm").write_bytes(b"PF\n1 1\n-1\n" + bytes(12))
        read_pfm(scene / "disp0.pfm")


def test_perceptual_hash_sees_through_markers_resizing_and_jpeg() -> None:
    a, b = (Image.fromarray(_coordinate_image(s)) for s in (5, 6))
    marked, _ = draw_markers(a.resize((380, 285)), {"REF": (0.4, 0.5)})
    buffer = io.BytesIO()
    marked.save(buffer, format="JPEG", quality=70)
    assert hamming(perceptual_hash(a), perceptual_hash(Image.open(buffer))) <= 6
    assert hamming(perceptual_hash(a), perceptual_hash(b)) > 10


def test_leakage_guard_drops_what_a_local_blink_copy_shows(tmp_path: Path) -> None:
    root = _hpatches(tmp_path / "hpatches")
    blink = tmp_path / "BLINK"
    shown = Image.open(root / "v_planted" / "3.ppm").resize((400, 300))
    question = synthetic_blink_questions(1, subtasks=["Visual_Correspondence"])[0]
    question.images[1] = draw_markers(shown, {"A": (0.3, 0.3), "B": (0.6, 0.6)})[0]
    write_questions(blink / "Visual_Correspondence" / "val.parquet", [question], image_format="jpeg")
    out = build_blink_style(tmp_path / "built", hpatches=str(root), n_per_subtask=4, exclude_blink=str(blink))
    report = json.loads((out / "build.json").read_text())
    assert report["subtasks"]["Visual_Correspondence"]["dropped_sequences"] == 1
    assert report["blink_images_indexed"] == 2
    rows = load_rows(DataSource(source=str(out), split="train", image_columns=["image_1", "image_2"],
                                question_field="prompt", answer_field="answer"))
    assert len(rows) == 4 and all("i_planted" in e for e in rows["explanation"])
    index = ImageHashIndex.from_blink(blink)
    assert index.matches(Image.open(root / "v_planted" / "3.ppm"))
    assert not index.matches(Image.open(root / "i_planted" / "1.ppm"))


def test_blinkstyle_source_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vkvtrain.data.blink_style as blink_style

    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    hp = _hpatches(tmp_path / "hpatches")
    mb = tmp_path / "middlebury" / "S"
    mb.mkdir(parents=True)
    Image.fromarray(_coordinate_image(7)).save(mb / "im0.png")
    disparity = np.tile(np.linspace(5, 50, W, dtype=np.float32), (H, 1))
    _pfm(mb / "disp0.pfm", disparity)
    spec = DataSource(source=f"blinkstyle://real?hpatches={hp}&middlebury={mb.parent}&n_per_subtask=3&seed=2",
                      split="train", image_columns=["image_1", "image_2", "image_3", "image_4"],
                      question_field="prompt", answer_field="answer", task_field="sub_task",
                      choices_field="choices", points_field="points")
    rows = load_rows(spec)
    assert sorted(rows["sub_task"]) == ["Relative_Depth"] * 3 + ["Visual_Correspondence"] * 3
    example = to_example(rows[0], spec, 0)
    assert example.answer in ("(A)", "(B)", "(C)", "(D)") and example.points and example.choices
    monkeypatch.setattr(blink_style, "build_blink_style", lambda *a, **k: pytest.fail("built again"))
    assert len(load_rows(spec)) == 6
    with pytest.raises(DatasetError, match="hpatches='/absent' .* is not a directory"):
        load_rows(DataSource(source="blinkstyle://real?hpatches=/absent", split="train"))
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['n'\]"):
        load_rows(DataSource(source=f"blinkstyle://real?hpatches={hp}&n=3", split="train"))
    with pytest.raises(DatasetError, match="needs at least one source"):
        build_blink_style(tmp_path / "none")


def test_placeholder_blink_revision_is_refused_before_any_download() -> None:
    spec = DataSource(source="BLINK-Benchmark/BLINK", subset="Art_Style", split="val", revision=REVISION_PLACEHOLDER,
                      image_columns=["image_1"], question_field="prompt")
    with pytest.raises(DatasetError, match="placeholder 'PIN-A-BLINK-COMMIT': pin the commit"):
        load_rows(spec)
