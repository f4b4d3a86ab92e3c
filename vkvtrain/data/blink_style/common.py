"""Shared pieces of the BLINK-style builders: seeded streams, resizing, candidate placement, question assembly.

Distractor rule (every correspondence builder): the wrong candidates are ``n_choices - 1`` points of the
second image, each at least ``min_sep`` (a fraction of the image's longer side) from the answer and from
each other and at least ``margin`` of each side from the border; a builder passes the points they are drawn
from (other annotated keypoints, or random points ranked by texture). The answer's letter is drawn
uniformly from the seeded stream of its question, the distractors fill the other letters in order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from vkvtrain.data.blink import LETTERS, BlinkQuestion, Point
from vkvtrain.data.blink_questions import blink_prompt, point_choices
from vkvtrain.data.markers import draw_markers

Rng = np.random.Generator


def item_rng(seed: int, subtask_id: int, item: int) -> Rng:
    """The stream of one question: independent of how many questions or which other subtasks are built."""
    return np.random.default_rng([seed, subtask_id, item])


def resized(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` scaled (Lanczos) so its longer side is at most ``max_side``; normalised points are unchanged."""
    W, H = image.size
    scale = max_side / max(W, H)
    if scale >= 1:
        return image.convert("RGB")
    return image.convert("RGB").resize((max(1, round(W * scale)), max(1, round(H * scale))),
                                       Image.Resampling.LANCZOS)


def texture(image: Image.Image) -> np.ndarray:
    """(H, W) local texture: the grey-level standard deviation over a window of ~3% of the shorter side."""
    grey = np.asarray(image.convert("L"), np.float64)
    size = max(3, round(0.03 * min(grey.shape)) | 1)
    mean = ndi.uniform_filter(grey, size)
    return np.sqrt(np.clip(ndi.uniform_filter(grey * grey, size) - mean * mean, 0, None))


def textured_points(rng: Rng, image: Image.Image, n: int, margin: float, candidates: int = 32) -> list[Point]:
    """``n`` random points (normalised, ``margin`` from each side) ranked by texture, most textured first,
    drawn from ``candidates`` uniform samples."""
    tex = texture(image)
    H, W = tex.shape
    pts = [(float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin))) for _ in range(candidates)]
    pts.sort(key=lambda p: -tex[min(int(p[1] * H), H - 1), min(int(p[0] * W), W - 1)])
    return pts[:n]


def separated(answer: Point, pool: Sequence[Point], n: int, min_sep: float, size: tuple[int, int]) -> list[Point]:
    """The first ``n`` points of ``pool`` at least ``min_sep`` x the longer side from ``answer`` and from each
    other (in pixels of an image of ``size`` (W, H)); fewer when the pool runs out."""
    W, H = size
    chosen: list[Point] = []
    limit = min_sep * max(W, H)
    for p in pool:
        if all(np.hypot((p[0] - q[0]) * W, (p[1] - q[1]) * H) >= limit for q in [answer, *chosen]):
            chosen.append(p)
            if len(chosen) == n:
                break
    return chosen


def correspondence_question(
    rng: Rng, idx: str, sub_task: str, question: str, images: tuple[Image.Image, Image.Image], ref: Point,
    answer: Point, distractors: Sequence[Point], explanation: str,
) -> BlinkQuestion:
    """A BLINK correspondence question: REF drawn on the first image, the answer and distractors (shuffled
    to letters A..) on the second, BLINK's choices "Point A".. and the "(X)" answer."""
    k = int(rng.integers(0, len(distractors) + 1))
    candidates = [*distractors[:k], answer, *distractors[k:]]
    first, marks_1 = draw_markers(images[0], {"REF": ref})
    second, marks_2 = draw_markers(images[1], {LETTERS[i]: p for i, p in enumerate(candidates)})
    choices = point_choices(len(candidates))
    return BlinkQuestion(
        idx=idx, sub_task=sub_task, question=question, prompt=blink_prompt(question, choices), choices=choices,
        images=[first, second], answer=LETTERS[k], points={"image_1": marks_1, "image_2": marks_2},
        explanation=explanation,
    )
