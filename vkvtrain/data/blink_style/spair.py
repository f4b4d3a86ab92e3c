"""Semantic_Correspondence questions from SPair-71k: a source keypoint is REF, its annotated partner the answer.

Read with :class:`vkvtrain.data.perception.spair.SPair71k` (native layout in its docstring), split ``trn``
by default. Question ``i`` uses pair ``i mod n_pairs`` and keypoint ``j`` drawn from its seeded stream: REF =
source keypoint j, answer = target keypoint j (both annotated, so exact). Distractors: the pair's other target
keypoints (other parts of the same object, as BLINK's are), in a seeded random order, at least ``min_sep`` of
the target image's longer side from the answer and each other; when fewer than three qualify, random points
inside the target's bounding box fill up under the same rule; a pair that still lacks them is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from vkvtrain.data.blink import BlinkQuestion, Point
from vkvtrain.data.blink_questions import SEMANTIC_CORRESPONDENCE
from vkvtrain.data.blink_style.common import (
    correspondence_question,
    item_rng,
    resized,
    separated,
)
from vkvtrain.data.blink_style.leakage import ImageHashIndex
from vkvtrain.data.perception.spair import SPair71k
from vkvtrain.errors import DatasetError

SUBTASK = "Semantic_Correspondence"


def _normalised(kp: np.ndarray, size: tuple[int, int]) -> Point:
    """Pixel keypoint (x, y), pixel centres at integer coordinates, -> normalised point."""
    return float((kp[0] + 0.5) / size[0]), float((kp[1] + 0.5) / size[1])


def spair_questions(
    root: str | Path, n: int, seed: int = 0, split: str = "train", spair_split: str = "trn", max_side: int = 1024,
    min_sep: float = 0.05, blink_index: ImageHashIndex | None = None, stats: dict[str, int] | None = None,
) -> Iterator[BlinkQuestion]:
    """``n`` Semantic_Correspondence questions from SPair-71k pairs of ``spair_split`` (module docstring).

    blink_index: pairs with an image that a local BLINK copy shows are dropped (``stats["dropped_pairs"]``);
    stats also gets ``skipped`` (pairs without a keypoint and three separated distractors).
    """
    stats = stats if stats is not None else {}
    stats.update(dropped_pairs=0, skipped=0)
    data = SPair71k(root, split=spair_split)
    leaked: set[int] = set()
    made = attempt = 0
    while made < n:
        if attempt >= 2 * n + len(data) or len(leaked) == len(data):
            raise DatasetError(f"SPair-71k: only {made} of {n} questions could be made from {root} ({spair_split}); "
                               f"{stats['skipped']} pairs had too few separated keypoints, "
                               f"{stats['dropped_pairs']} matched the BLINK copy")
        index = attempt % len(data)
        rng = item_rng(seed, 1, attempt)
        attempt += 1
        if index in leaked:
            continue
        pair = data[index]
        if blink_index is not None and (blink_index.matches(pair.source) or blink_index.matches(pair.target)):
            leaked.add(index)
            stats["dropped_pairs"] += 1
            continue
        src_kps, trg_kps = pair.source_kps.numpy(), pair.target_kps.numpy()
        if len(src_kps) == 0:
            stats["skipped"] += 1
            continue
        j = int(rng.integers(len(src_kps)))
        ref, answer = _normalised(src_kps[j], pair.source.size), _normalised(trg_kps[j], pair.target.size)
        W, H = pair.target.size
        others = [_normalised(trg_kps[i], pair.target.size) for i in rng.permutation(len(trg_kps)) if i != j]
        x0, y0, x1, y1 = pair.target_bbox.tolist()
        inside = [(float(rng.uniform(x0, x1) + 0.5) / W, float(rng.uniform(y0, y1) + 0.5) / H) for _ in range(64)]
        distractors = separated(answer, others + inside, 3, min_sep, (W, H))
        if len(distractors) < 3:
            stats["skipped"] += 1
            continue
        made += 1
        yield correspondence_question(
            rng, f"{split}_{SUBTASK}_{made}", SUBTASK, SEMANTIC_CORRESPONDENCE,
            (resized(pair.source, max_side), resized(pair.target, max_side)), ref, answer, distractors,
            f"SPair-71k {spair_split} pair {pair.pair_id} ({pair.category}): keypoint {j} of the source is REF, "
            "the same keypoint of the target is the answer",
        )
