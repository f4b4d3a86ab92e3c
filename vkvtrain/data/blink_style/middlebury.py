"""Relative_Depth questions from Middlebury stereo scenes with ground-truth disparity.

Native layout (Middlebury 2014 / 2021 scene folders, e.g. ``Motorcycle-perfect``)::

    <root>/<scene>/im0.png       left view
    <root>/<scene>/disp0.pfm     its ground-truth disparity in pixels (PFM; inf = unknown)

Depth is focal x baseline / (disparity + doffs), so of two points the one with the larger disparity is
closer to the camera, whatever the calibration. Question ``i`` uses scene ``i mod n_scenes``; A and B are
random pixels of im0 (10% margin, at least ``min_sep`` of the longer side apart) with known disparity, a
locally smooth disparity (5x5 neighbourhood within 2% of its value: no occlusion edge) and disparities
differing by at least ``min_ratio`` (default 15%), so the answer is unambiguous. Answer: "A is closer" when
disparity(A) > disparity(B). Markers A and B are drawn on im0 scaled to ``max_side``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from vkvtrain.data.blink import LETTERS, BlinkQuestion
from vkvtrain.data.blink_questions import (
    RELATIVE_DEPTH,
    RELATIVE_DEPTH_CHOICES,
    blink_prompt,
)
from vkvtrain.data.blink_style.common import item_rng, resized
from vkvtrain.data.blink_style.leakage import ImageHashIndex
from vkvtrain.data.markers import draw_markers
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """<root>/
  <scene>/im0.png       left view
  <scene>/disp0.pfm     ground-truth disparity of im0 (PFM, inf = unknown)"""

SUBTASK = "Relative_Depth"


def read_pfm(path: Path) -> np.ndarray:
    """(H, W) float32 of a greyscale PFM file (rows stored bottom-up; a negative scale = little-endian)."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header != b"Pf":
            raise DatasetError(f"{path} is not a greyscale PFM file (header {header[:8]!r}, expected b'Pf')")
        try:
            width, height = (int(v) for v in f.readline().split())
            scale = float(f.readline().strip())
        except ValueError as err:
            raise DatasetError(f"{path}: malformed PFM header ({err})") from err
        data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4")
    if data.size != width * height:
        raise DatasetError(f"{path}: PFM holds {data.size} values, its header says {width}x{height}")
    return np.flipud(data.reshape(height, width)).astype(np.float32)


def middlebury_scenes(root: str | Path) -> list[Path]:
    """Scene folders (with im0.png and disp0.pfm) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Middlebury: directory {str(root)!r} is missing. Expected the native layout:\n{LAYOUT}")
    scenes = []
    for scene in sorted(p for p in root.iterdir() if p.is_dir()):
        have = [(scene / name).is_file() for name in ("im0.png", "disp0.pfm")]
        if any(have) and not all(have):
            missing = "im0.png" if not have[0] else "disp0.pfm"
            raise DatasetError(f"Middlebury: {scene / missing} is missing. Expected:\n{LAYOUT}")
        if all(have):
            scenes.append(scene)
    if not scenes:
        raise DatasetError(f"Middlebury: no scene folder with im0.png and disp0.pfm under {root}. Expected:\n{LAYOUT}")
    return scenes


@lru_cache(maxsize=2)
def _scene(path: Path) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """(im0, disparity (H, W), usable (H, W) bool: known and locally smooth)."""
    image = load_image(path / "im0.png")
    disp = read_pfm(path / "disp0.pfm")
    if disp.shape != (image.size[1], image.size[0]):
        raise DatasetError(f"Middlebury: {path / 'disp0.pfm'} is {disp.shape[::-1]}, im0.png is {image.size}")
    known = np.isfinite(disp) & (disp > 0)
    filled = np.where(known, disp, 0.0)
    lo = ndi.minimum_filter(np.where(known, disp, np.inf), size=5)
    hi = ndi.maximum_filter(filled, size=5)
    smooth = known & (hi - lo <= 0.02 * np.where(known, disp, 1.0)) & ndi.binary_erosion(known, np.ones((5, 5)))
    return image, disp, smooth


def middlebury_questions(
    root: str | Path, n: int, seed: int = 0, split: str = "train", max_side: int = 1024, min_sep: float = 0.15,
    min_ratio: float = 1.15, blink_index: ImageHashIndex | None = None, stats: dict[str, int] | None = None,
) -> Iterator[BlinkQuestion]:
    """``n`` Relative_Depth questions from the Middlebury scenes under ``root`` (module docstring).

    blink_index: scenes whose im0 a local BLINK copy shows are dropped (``stats["dropped_scenes"]``);
    stats also gets ``skipped`` (draws without two usable points).
    """
    stats = stats if stats is not None else {}
    stats.update(dropped_scenes=0, skipped=0)
    scenes = middlebury_scenes(root)
    if blink_index is not None:
        kept = [s for s in scenes if not blink_index.matches(load_image(s / "im0.png"))]
        stats["dropped_scenes"] = len(scenes) - len(kept)
        scenes = kept
        if not scenes:
            raise DatasetError("Middlebury: every scene matches an image of the local BLINK copy; nothing is left")
    made = attempt = 0
    while made < n:
        if attempt >= 4 * n + len(scenes):
            raise DatasetError(f"Middlebury: only {made} of {n} questions could be placed under {root}")
        scene = scenes[attempt % len(scenes)]
        rng = item_rng(seed, 2, attempt)
        attempt += 1
        image, disp, usable = _scene(scene)
        H, W = disp.shape
        m = (int(0.1 * H), int(0.1 * W))
        rows, cols = np.nonzero(usable[m[0]: H - m[0], m[1]: W - m[1]])
        if len(rows) < 2:
            stats["skipped"] += 1
            continue
        picks = rng.choice(len(rows), size=min(64, len(rows)), replace=False)
        pts = [(int(rows[i]) + m[0], int(cols[i]) + m[1]) for i in picks]
        pair = next(((a, b) for ai, a in enumerate(pts) for b in pts[ai + 1:]
                     if np.hypot(a[0] - b[0], a[1] - b[1]) >= min_sep * max(H, W)
                     and max(disp[a], disp[b]) >= min_ratio * min(disp[a], disp[b])), None)
        if pair is None:
            stats["skipped"] += 1
            continue
        (ra, ca), (rb, cb) = pair
        a, b = ((ca + 0.5) / W, (ra + 0.5) / H), ((cb + 0.5) / W, (rb + 0.5) / H)
        marked, marks = draw_markers(resized(image, max_side), {"A": a, "B": b})
        answer = 0 if disp[ra, ca] > disp[rb, cb] else 1
        made += 1
        choices = list(RELATIVE_DEPTH_CHOICES)
        yield BlinkQuestion(
            idx=f"{split}_{SUBTASK}_{made}", sub_task=SUBTASK, question=RELATIVE_DEPTH,
            prompt=blink_prompt(RELATIVE_DEPTH, choices), choices=choices, images=[marked], answer=LETTERS[answer],
            points={"image_1": marks},
            explanation=f"Middlebury {scene.name}: disparity at A {disp[ra, ca]:.2f} px, at B {disp[rb, cb]:.2f} px "
                        "(the larger disparity is closer)",
        )
