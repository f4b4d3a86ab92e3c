"""Visual_Correspondence questions from HPatches: exact correspondences through the sequences' homographies.

Native layout (hpatches-sequences-release)::

    <root>/<sequence>/1.ppm .. 6.ppm     i_* sequences change the lighting, v_* the viewpoint
    <root>/<sequence>/H_1_2 .. H_1_6     3x3 homography (text, row-major) mapping image 1 pixels to image k

Question ``i`` uses pair ``i mod n_pairs`` (image 1 and image k of a sequence, in sorted order; a second round
re-uses pairs with new points). REF: the most textured of 32 random points of image 1 (8% margin) whose
image under H_1_k lies inside image k (5% margin); the answer is that image, exactly. Distractors: the most
textured random points of image k at least ``min_sep`` of its longer side from the answer and each other
(the rule of :mod:`vkvtrain.data.blink_style.common`). Both images are scaled to ``max_side`` before the
markers are drawn; the coordinates are normalised, so the scaling does not move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from vkvtrain.data.blink import BlinkQuestion, Point
from vkvtrain.data.blink_questions import VISUAL_CORRESPONDENCE
from vkvtrain.data.blink_style.common import (
    correspondence_question,
    item_rng,
    resized,
    separated,
    textured_points,
)
from vkvtrain.data.blink_style.leakage import ImageHashIndex
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """hpatches-sequences-release/
  <sequence>/1.ppm .. 6.ppm        (i_* illumination, v_* viewpoint sequences)
  <sequence>/H_1_2 .. H_1_6        (3x3 homography, image 1 -> image k, whitespace-separated text)"""

SUBTASK = "Visual_Correspondence"


@dataclass(frozen=True)
class HPatchesPair:
    """Image 1 and image ``k`` of ``sequence`` with the homography H (3, 3) from image 1 to image k (pixels)."""

    sequence: str
    k: int
    first: Path
    second: Path
    homography: np.ndarray


def read_homography(path: Path) -> np.ndarray:
    """(3, 3) float homography from an HPatches ``H_1_k`` text file."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as err:
        raise DatasetError(f"HPatches: {path} is not a 3x3 matrix of numbers ({err}). Expected:\n{LAYOUT}") from err
    if values.size != 9:
        raise DatasetError(f"HPatches: {path} holds {values.size} numbers, not a 3x3 homography. Expected:\n{LAYOUT}")
    return values.reshape(3, 3)


def hpatches_pairs(root: str | Path, exclude: tuple[str, ...] = ()) -> list[HPatchesPair]:
    """Every (image 1, image k) pair of every sequence under ``root`` (sorted), sequences in ``exclude`` left out."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"HPatches: directory {str(root)!r} is missing. Expected the native layout:\n{LAYOUT}")
    pairs = []
    sequences = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude)
    for seq in sequences:
        first = seq / "1.ppm"
        if not first.is_file():
            raise DatasetError(f"HPatches: {first} is missing. Expected:\n{LAYOUT}")
        for k in range(2, 7):
            second, h_file = seq / f"{k}.ppm", seq / f"H_1_{k}"
            if second.is_file() != h_file.is_file():
                missing = h_file if second.is_file() else second
                raise DatasetError(f"HPatches: {missing} is missing (its pair partner exists). Expected:\n{LAYOUT}")
            if second.is_file():
                pairs.append(HPatchesPair(seq.name, k, first, second, read_homography(h_file)))
    if not pairs:
        raise DatasetError(f"HPatches: no sequence with image pairs under {root}. Expected:\n{LAYOUT}")
    return pairs


def project(h: np.ndarray, xy: Point, size_1: tuple[int, int], size_k: tuple[int, int]) -> Point:
    """Normalised point ``xy`` of image 1 (size ``size_1`` = (W, H)) mapped by ``h`` into image k (``size_k``).

    H acts on 0-based pixel-centre coordinates (pixel (0, 0) centred at (0, 0), as in OpenCV); normalised
    coordinates put that centre at (0.5 / W, 0.5 / H).
    """
    p = h @ np.array([xy[0] * size_1[0] - 0.5, xy[1] * size_1[1] - 0.5, 1.0])
    return float((p[0] / p[2] + 0.5) / size_k[0]), float((p[1] / p[2] + 0.5) / size_k[1])


@lru_cache(maxsize=4)
def _image(path: Path) -> Image.Image:
    return load_image(path)


def _visible_ref(rng: np.random.Generator, pair: HPatchesPair, first: Image.Image) -> tuple[Point, Point] | None:
    """(REF in image 1, its exact image in image k), normalised; None when no candidate maps inside image k.

    ``first`` (image 1, any scale) ranks the candidates by texture; the mapping uses the original sizes.
    """
    for ref in textured_points(rng, first, 32, margin=0.08):
        x, y = project(pair.homography, ref, _image(pair.first).size, _image(pair.second).size)
        if 0.05 <= x <= 0.95 and 0.05 <= y <= 0.95:
            return ref, (x, y)
    return None


def hpatches_questions(
    root: str | Path, n: int, seed: int = 0, split: str = "train", max_side: int = 1024, min_sep: float = 0.12,
    exclude_sequences: tuple[str, ...] = (), blink_index: ImageHashIndex | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[BlinkQuestion]:
    """``n`` Visual_Correspondence questions from the HPatches tree at ``root`` (see module docstring).

    blink_index: drop every sequence with an image that a local BLINK copy shows (counted in
    ``stats["dropped_sequences"]``). stats: filled with ``skipped`` (pairs with no visible REF) too.
    """
    stats = stats if stats is not None else {}
    stats.update(dropped_sequences=0, skipped=0)
    pairs = hpatches_pairs(root, exclude_sequences)
    if blink_index is not None:
        leaked = set()
        for seq in sorted({p.sequence for p in pairs}):
            images = sorted((Path(root) / seq).glob("*.ppm"))
            if any(blink_index.matches(load_image(path)) for path in images):
                leaked.add(seq)
        stats["dropped_sequences"] = len(leaked)
        pairs = [p for p in pairs if p.sequence not in leaked]
        if not pairs:
            raise DatasetError("HPatches: every sequence matches an image of the local BLINK copy; nothing is left")
    made = attempt = 0
    while made < n:
        if attempt >= 2 * n + len(pairs):
            raise DatasetError(f"HPatches: only {made} of {n} questions could be placed under {root} "
                               f"({stats['skipped']} pairs had no point visible in both images)")
        pair = pairs[attempt % len(pairs)]
        rng = item_rng(seed, 0, attempt)
        attempt += 1
        first, second = resized(_image(pair.first), max_side), resized(_image(pair.second), max_side)
        found = _visible_ref(rng, pair, first)
        if found is None:
            stats["skipped"] += 1
            continue
        ref, answer = found
        distractors = separated(answer, textured_points(rng, second, 32, margin=0.05), 3, min_sep, second.size)
        if len(distractors) < 3:
            stats["skipped"] += 1
            continue
        made += 1
        yield correspondence_question(
            rng, f"{split}_{SUBTASK}_{made}", SUBTASK, VISUAL_CORRESPONDENCE, (first, second), ref, answer,
            distractors,
            f"HPatches {pair.sequence}, image 1 -> image {pair.k}: REF ({ref[0]:.4f}, {ref[1]:.4f}) maps by "
            f"H_1_{pair.k} to ({answer[0]:.4f}, {answer[1]:.4f})",
        )
