"""Synthetic BLINK-format questions with exact answers, for tests, tiny runs and BLINK-style training sets.

Every question follows the hub schema (see :mod:`vkvtrain.data.blink`): same subtask names, image slots,
number of choices, choice wording, ``prompt`` layout ("<question>\\nSelect from the following choices.\\n
(A) ...") and ``"(A)"``-style answers, plus a ``points`` field (JSON) carrying the coordinates of every
marked point, which the real data only draws into the pixels. Points are marked as BLINK marks them
(:func:`vkvtrain.data.markers.draw_markers`: red rings, white on Relative_Reflectance, labels in white on
black boxes), and Visual_Correspondence, Relative_Depth and Relative_Reflectance ask BLINK's own question
text (:mod:`vkvtrain.data.blink_questions`). At 64 px the markers cover a larger share of the image than on
BLINK's photos; their coordinates are exact at any size.

How close each subtask is to the original:

- close to the original task (same visual question, simple rendered scenes): Art_Style (stripe texture +
  palette as "style"), Visual_Similarity (near-duplicate vs different scene), Counting (count the discs),
  Jigsaw (which patch fills the black hole), Multi-view_Reasoning (two crops of one wide scene: did the
  camera move left or right), Object_Localization (tight vs shifted box), Relative_Reflectance (two flat
  grey regions), Spatial_Relation (is the square left of the disc), Visual_Correspondence (same scene
  translated; which candidate point is the REF point).
- stand-ins (same format, a simpler question in place of one that needs real photos or reasoning):
  Forensic_Detection (three blocky images and one smooth one, "real" = smooth), Functional_Correspondence
  (mirrored, recoloured copy; the mirrored point is the answer), IQ_Test (dots 1, 2, 3 -> which option
  panel shows 4), Relative_Depth (depth = height in a ground-plane gradient: the lower point is closer),
  Semantic_Correspondence (one object re-placed and rescaled on a new background).

API: :func:`synthetic_blink` -> ``datasets.DatasetDict`` keyed by subtask; :func:`synthetic_blink_questions`
-> ``list[BlinkQuestion]`` without the arrow round trip; :func:`write_synthetic_blink` writes
``root/<Subtask>/<split>.parquet`` that :func:`vkvtrain.data.blink.load_blink` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from vkvtrain.data.blink import (
    BLINK_SUBTASKS,
    LETTERS,
    BlinkQuestion,
    Point,
    check_subtasks,
)
from vkvtrain.data.blink_questions import (
    RELATIVE_DEPTH,
    RELATIVE_DEPTH_CHOICES,
    RELATIVE_REFLECTANCE,
    RELATIVE_REFLECTANCE_CHOICES,
    VISUAL_CORRESPONDENCE,
    blink_prompt,
    point_choices,
)
from vkvtrain.data.blink_rows import blink_features, questions_to_rows
from vkvtrain.data.markers import WHITE, MarkerStyle, draw_markers
from vkvtrain.errors import DatasetError

__all__ = ["GENERATORS", "questions_to_rows", "synthetic_blink", "synthetic_blink_questions", "write_synthetic_blink"]

Rng = np.random.Generator
_ORDINAL = ("first", "second", "third", "fourth")


class _Item:
    """One generated question before it becomes a row or a BlinkQuestion."""

    def __init__(
        self,
        question: str,
        images: list[Image.Image],
        choices: list[str],
        answer: int,
        points: dict[str, dict[str, Point]] | None = None,
    ) -> None:
        self.question, self.images, self.choices, self.answer, self.points = question, images, choices, answer, points


# ----------------------------------------------------------------------------- drawing helpers
def _smooth_scene(rng: Rng, size: int, cells: int = 4) -> np.ndarray:
    """(size, size, 3) uint8 smooth random colour field (a bicubic-upsampled cells x cells noise)."""
    low = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC))


def _blocky_scene(rng: Rng, size: int, cells: int = 8) -> np.ndarray:
    low = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.NEAREST))


def _stripes(size: int, angle: float, freq: float, phase: float, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    return (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)


def _to_pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)), "RGB")


def _shuffle(rng: Rng, correct: Any, wrong: list[Any]) -> tuple[list[Any], int]:
    """Place ``correct`` at a random index among ``wrong``; returns (options, answer index)."""
    k = int(rng.integers(0, len(wrong) + 1))
    return wrong[:k] + [correct] + wrong[k:], k


def _distinct_points(rng: Rng, n: int, lo: float = 0.15, hi: float = 0.85, min_dist: float = 0.2) -> list[Point]:
    pts: list[Point] = []
    while len(pts) < n:
        p = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in pts):
            pts.append(p)
    return pts


# ----------------------------------------------------------------------------- subtasks
def _art_style(rng: Rng, s: int) -> _Item:
    def style() -> tuple[float, float, np.ndarray, np.ndarray]:
        return float(rng.uniform(0, np.pi)), float(rng.uniform(2, 6)), rng.integers(0, 256, 3), rng.integers(0, 256, 3)

    a = style()
    b = style()
    while abs(a[0] - b[0]) < 0.6:
        b = style()
    ref = _stripes(s, *a[:2], float(rng.uniform(0, 6.3)), a[2], a[3])
    same = _stripes(s, *a[:2], float(rng.uniform(0, 6.3)), a[2], a[3])
    other = _stripes(s, *b[:2], float(rng.uniform(0, 6.3)), b[2], b[3])
    (i2, i3), ans = _shuffle(rng, same, [other])
    return _Item(
        "Which image shares the same style as the reference image?",
        [_to_pil(ref), _to_pil(i2), _to_pil(i3)],
        ["the second image", "the third image"],
        ans,
    )


def _visual_similarity(rng: Rng, s: int) -> _Item:
    ref = _smooth_scene(rng, s)
    near = np.clip(ref.astype(int) + rng.integers(-12, 13, ref.shape), 0, 255)
    far = _smooth_scene(rng, s)
    (i2, i3), ans = _shuffle(rng, near, [far])
    return _Item(
        "Which image is most similar to the reference image?",
        [_to_pil(ref), _to_pil(i2), _to_pil(i3)],
        ["the second image", "the third image"],
        ans,
    )


def _counting(rng: Rng, s: int) -> _Item:
    k = int(rng.integers(1, 7))
    img = _to_pil(np.full((s, s, 3), 235, np.uint8))
    d = ImageDraw.Draw(img)
    r = max(2, s // 14)
    for x, y in _distinct_points(rng, k, 0.12, 0.88, min_dist=2.6 * r / s):
        d.ellipse([x * s - r, y * s - r, x * s + r, y * s + r], fill=(30, 60, 200))
    others = [v for v in range(max(0, k - 3), k + 4) if v != k]
    wrong = sorted(rng.choice(others, 3, replace=False).tolist())
    opts = sorted([k, *wrong])
    return _Item("How many blue discs are in the image?", [img], [str(v) for v in opts], opts.index(k))


def _forensic(rng: Rng, s: int) -> _Item:
    real = _smooth_scene(rng, s)
    fakes = [_blocky_scene(rng, s) for _ in range(3)]
    imgs, ans = _shuffle(rng, real, fakes)
    return _Item(
        "Which image is most likely to be a real photograph?",
        [_to_pil(a) for a in imgs],
        [f"the {o} image" for o in _ORDINAL],
        ans,
    )


def _correspondence_item(
    rng: Rng,
    img1: np.ndarray,
    img2: np.ndarray,
    ref: Point,
    target: Point,
    question: str,
) -> _Item:
    """Mark REF in image_1 and four candidates (one = ``target``) in image_2."""
    def far(p: Point) -> bool:
        return (p[0] - target[0]) ** 2 + (p[1] - target[1]) ** 2 > 0.2**2

    wrong = [p for p in _distinct_points(rng, 8, 0.1, 0.9, 0.18) if far(p)]
    cands, ans = _shuffle(rng, target, wrong[:3])
    while len(cands) < 4:  # rare: too few far-away random points
        cands.append(_distinct_points(rng, 1)[0])
    a, marks_1 = draw_markers(_to_pil(img1), {"REF": ref})
    b, marks_2 = draw_markers(_to_pil(img2), {LETTERS[i]: p for i, p in enumerate(cands)})
    return _Item(question, [a, b], point_choices(4), ans, {"image_1": marks_1, "image_2": marks_2})


def _visual_correspondence(rng: Rng, s: int) -> _Item:
    big = _smooth_scene(rng, 2 * s, cells=8)
    dx, dy = (int(v) for v in rng.integers(-s // 4, s // 4 + 1, 2))
    o = s // 2
    img1 = big[o : o + s, o : o + s]
    img2 = big[o + dy : o + dy + s, o + dx : o + dx + s]
    ref = (float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65)))
    target = (ref[0] - dx / s, ref[1] - dy / s)
    return _correspondence_item(rng, img1, img2, ref, target, VISUAL_CORRESPONDENCE)


def _semantic_correspondence(rng: Rng, s: int) -> _Item:
    obj = _smooth_scene(rng, s // 2)
    scale = float(rng.uniform(0.8, 1.2))
    osz = int(s // 2 * scale)
    obj2 = np.asarray(_to_pil(obj).resize((osz, osz), Image.Resampling.BILINEAR))
    img1, img2 = _smooth_scene(rng, s) // 3, _smooth_scene(rng, s) // 3
    x1, y1 = (int(v) for v in rng.integers(0, s - s // 2 + 1, 2))
    x2, y2 = (int(v) for v in rng.integers(0, s - osz + 1, 2))
    img1[y1 : y1 + s // 2, x1 : x1 + s // 2] = obj
    img2[y2 : y2 + osz, x2 : x2 + osz] = obj2
    u, v = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))  # point within the object
    ref = ((x1 + u * (s // 2)) / s, (y1 + v * (s // 2)) / s)
    target = ((x2 + u * osz) / s, (y2 + v * osz) / s)
    return _correspondence_item(
        rng, img1, img2, ref, target,
        "Humans can find corresponding points for different objects in the same category. A point is "
        "annotated on the first image, labeled with REF. Which point on the second image corresponds to it?",
    )


def _functional_correspondence(rng: Rng, s: int) -> _Item:
    img1 = _smooth_scene(rng, s)
    img2 = (255 - img1[:, ::-1]).copy()
    ref = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)))
    target = (1.0 - ref[0], ref[1])
    return _correspondence_item(
        rng, img1, img2, ref, target,
        "Humans can find functionally corresponding parts of objects. A point is annotated on the first "
        "image, labeled with REF. Which point on the second image plays the same role?",
    )


def _iq_test(rng: Rng, s: int) -> _Item:
    img = _to_pil(np.full((s, s, 3), 255, np.uint8))
    d = ImageDraw.Draw(img)
    r = max(1, s // 40)

    def dots(n: int, x0: float, y0: float, w: float) -> None:
        for j in range(n):
            cx = (x0 + w * (j + 0.5) / max(n, 1)) * s
            d.ellipse([cx - r, y0 * s - r, cx + r, y0 * s + r], fill="black")

    for i, n in enumerate((1, 2, 3)):
        dots(n, i / 3, 0.25, 1 / 3)
    opts, ans = _shuffle(rng, 4, [int(v) for v in rng.choice([1, 2, 3, 5, 6], 3, replace=False)])
    for i, n in enumerate(opts):
        dots(n, i / 4, 0.75, 1 / 4)
        d.text(((i / 4 + 0.1) * s, 0.85 * s), LETTERS[i], fill="black")
    return _Item(
        "Which option panel continues the pattern of the top row?",
        [img],
        [f"the {o} option" for o in _ORDINAL],
        ans,
    )


def _jigsaw(rng: Rng, s: int) -> _Item:
    scene = _smooth_scene(rng, s)
    p = s // 3
    x, y = (int(v) for v in rng.integers(0, s - p + 1, 2))
    piece = scene[y : y + p, x : x + p].copy()
    holed = scene.copy()
    holed[y : y + p, x : x + p] = 0
    other = _smooth_scene(rng, s)[:p, :p]
    (i2, i3), ans = _shuffle(rng, piece, [other])
    return _Item(
        "Given the first image with a black square missing, can you tell which one of the second image or "
        "the third image is the missing part? Imagine which image would be more appropriate to place in the "
        "missing spot.",
        [_to_pil(holed), _to_pil(i2), _to_pil(i3)],
        ["the second image", "the third image"],
        ans,
    )


def _multi_view(rng: Rng, s: int) -> _Item:
    wide = _smooth_scene(rng, 2 * s, cells=8)[: s]
    shift = int(rng.integers(s // 6, s // 3))
    x0 = int(rng.integers(0, s - shift))
    right = bool(rng.integers(0, 2))
    xa, xb = (x0, x0 + shift) if right else (x0 + shift, x0)
    img1, img2 = wide[:, xa : xa + s], wide[:, xb : xb + s]
    return _Item(
        "The images are frames from a video. The video is shooting a static scene. The camera is either "
        "moving clockwise (left) or counter-clockwise (right) around the object. The first image is from the "
        "beginning of the video and the second image is from the end. Is the camera moving left or right "
        "when shooting the video?",
        [_to_pil(img1), _to_pil(img2)],
        ["left", "right"],
        1 if right else 0,
    )


def _object_localization(rng: Rng, s: int) -> _Item:
    img = _to_pil(_smooth_scene(rng, s) // 2 + 100)
    d = ImageDraw.Draw(img)
    w = int(rng.integers(s // 5, s // 3))
    x, y = (int(v) for v in rng.integers(s // 8, s - w - s // 8, 2))
    d.rectangle([x, y, x + w, y + w], fill=(200, 30, 30))
    off = w // 2 + 2
    good = (x - 1, y - 1, x + w + 1, y + w + 1)
    sx, sy = (off if rng.integers(0, 2) else -off), (off if rng.integers(0, 2) else -off)
    bad = (good[0] + sx, good[1] + sy, good[2] + sx, good[3] + sy)
    boxes, ans = _shuffle(rng, good, [bad])
    for i, (b, c) in enumerate(zip(boxes, ("yellow", "cyan"))):
        d.rectangle(b, outline=c, width=1)
        d.text((b[0] + 1, b[1] + 1), LETTERS[i], fill=c)
    return _Item(
        "A bounding box is an annotated rectangle surrounding an object. The edges of bounding boxes should "
        "touch the outermost pixels of the object that is being labeled. Given the two bounding boxes on the "
        "image, labeled by A and B, which bounding box more accurately localizes and encloses the red square?",
        [img],
        ["Box A", "Box B"],
        ans,
    )


def _two_points(rng: Rng) -> tuple[Point, Point]:
    a, b = _distinct_points(rng, 2, 0.15, 0.85, 0.3)
    while abs(a[1] - b[1]) < 0.2:
        a, b = _distinct_points(rng, 2, 0.15, 0.85, 0.3)
    return a, b


def _relative_depth(rng: Rng, s: int) -> _Item:
    yy = np.linspace(60, 220, s)[:, None, None] * np.ones((1, s, 3))
    a, b = _two_points(rng)
    img, marks = draw_markers(_to_pil(np.clip(yy + rng.integers(-10, 11, (s, s, 3)), 0, 255)), {"A": a, "B": b})
    return _Item(RELATIVE_DEPTH, [img], list(RELATIVE_DEPTH_CHOICES), 0 if a[1] > b[1] else 1, {"image_1": marks})


def _relative_reflectance(rng: Rng, s: int) -> _Item:
    a, b = _two_points(rng)
    case = int(rng.integers(0, 3))
    ga = int(rng.integers(40, 110)) if case == 0 else int(rng.integers(150, 220))
    gb = int(rng.integers(40, 110)) if case == 1 else (int(rng.integers(150, 220)) if case == 0 else ga)
    arr = np.full((s, s, 3), 128, np.uint8)
    top_a = a[1] < b[1]
    mid = int((a[1] + b[1]) / 2 * s)
    arr[:mid], arr[mid:] = (ga, gb) if top_a else (gb, ga)
    img, marks = draw_markers(_to_pil(arr), {"A": a, "B": b}, MarkerStyle.for_image(s, s, ring_color=WHITE))
    return _Item(RELATIVE_REFLECTANCE, [img], list(RELATIVE_REFLECTANCE_CHOICES), case, {"image_1": marks})


def _spatial_relation(rng: Rng, s: int) -> _Item:
    img = _to_pil(np.full((s, s, 3), 230, np.uint8))
    d = ImageDraw.Draw(img)
    r = s // 8
    sq, dc = _distinct_points(rng, 2, 0.2, 0.8, 0.35)
    while abs(sq[0] - dc[0]) < 0.25:
        sq, dc = _distinct_points(rng, 2, 0.2, 0.8, 0.35)
    d.rectangle([sq[0] * s - r, sq[1] * s - r, sq[0] * s + r, sq[1] * s + r], fill=(220, 30, 30))
    d.ellipse([dc[0] * s - r, dc[1] * s - r, dc[0] * s + r, dc[1] * s + r], fill=(30, 30, 220))
    return _Item("Is the red square to the left of the blue disc?", [img], ["yes", "no"], 0 if sq[0] < dc[0] else 1)


GENERATORS: dict[str, Callable[[Rng, int], _Item]] = {
    "Art_Style": _art_style,
    "Counting": _counting,
    "Forensic_Detection": _forensic,
    "Functional_Correspondence": _functional_correspondence,
    "IQ_Test": _iq_test,
    "Jigsaw": _jigsaw,
    "Multi-view_Reasoning": _multi_view,
    "Object_Localization": _object_localization,
    "Relative_Depth": _relative_depth,
    "Relative_Reflectance": _relative_reflectance,
    "Semantic_Correspondence": _semantic_correspondence,
    "Spatial_Relation": _spatial_relation,
    "Visual_Correspondence": _visual_correspondence,
    "Visual_Similarity": _visual_similarity,
}
assert set(GENERATORS) == set(BLINK_SUBTASKS)


def _items(n_per_subtask: int, seed: int, subtasks: Sequence[str] | None, image_size: int, split: str
           ) -> Iterator[tuple[str, str, _Item]]:
    if n_per_subtask < 1:
        raise DatasetError(f"n_per_subtask must be >= 1, got {n_per_subtask}")
    if image_size < 16:
        raise DatasetError(f"image_size must be >= 16 pixels, got {image_size}")
    for k, name in enumerate(check_subtasks(subtasks)):
        # One stream per subtask: the questions of a subtask do not depend on which others are asked for.
        rng = np.random.default_rng([seed, BLINK_SUBTASKS.index(name)])
        for i in range(n_per_subtask):
            yield name, f"{split}_{name}_{i + 1}", GENERATORS[name](rng, image_size)


def synthetic_blink_questions(
    n_per_subtask: int,
    seed: int = 0,
    subtasks: Sequence[str] | None = None,
    image_size: int = 64,
    split: str = "val",
) -> list[BlinkQuestion]:
    """``n_per_subtask`` synthetic questions per subtask (default all 14), deterministic in ``seed``."""
    return [
        BlinkQuestion(
            idx=idx,
            sub_task=name,
            question=it.question,
            prompt=blink_prompt(it.question, it.choices),
            choices=list(it.choices),
            images=it.images,
            answer=LETTERS[it.answer],
            points=it.points,
            explanation="synthetic",
        )
        for name, idx, it in _items(n_per_subtask, seed, subtasks, image_size, split)
    ]


def synthetic_blink(
    n_per_subtask: int,
    seed: int = 0,
    subtasks: Sequence[str] | None = None,
    image_size: int = 64,
    split: str = "val",
) -> Any:
    """Synthetic BLINK as a ``datasets.DatasetDict`` keyed by subtask name (hub schema + ``points``)."""
    qs = synthetic_blink_questions(n_per_subtask, seed, subtasks, image_size, split)
    out = {}
    for name in check_subtasks(subtasks):
        rows = questions_to_rows([q for q in qs if q.sub_task == name])
        out[name] = datasets.Dataset.from_dict(rows, features=blink_features())
    return datasets.DatasetDict(out)


def write_synthetic_blink(
    root: str | Path,
    n_per_subtask: int,
    seed: int = 0,
    subtasks: Sequence[str] | None = None,
    image_size: int = 64,
    split: str = "val",
) -> Path:
    """Write ``root/<Subtask>/<split>.parquet`` for each subtask; returns ``root``."""
    return write_questions(root, synthetic_blink_questions(n_per_subtask, seed, subtasks, image_size, split), split)


def write_questions(root: str | Path, questions: Sequence[BlinkQuestion], split: str) -> Path:
    """Write ``questions`` as ``root/<sub_task>/<split>.parquet`` (hub schema + ``points``), a folder that
    ``load_blink(root=...)``, ``evaluate --data.root`` and a recipe's training source read; returns ``root``."""
    root = Path(root)
    for name in dict.fromkeys(q.sub_task for q in questions):
        rows = questions_to_rows([q for q in questions if q.sub_task == name])
        ds = datasets.Dataset.from_dict(rows, features=blink_features())
        (root / name).mkdir(parents=True, exist_ok=True)
        # The arrow table carries the features (Image columns) in its schema metadata.
        pq.write_table(ds.data.table, root / name / f"{split}.parquet")
    return root
