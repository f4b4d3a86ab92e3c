"""BLINK-style training questions on real photos with exact answers, in BLINK's own format.

Same question text, choice wording ("Point A"...), prompt layout and "(A)" answers as BLINK, markers drawn
with :func:`vkvtrain.data.markers.draw_markers`, the exact coordinates in ``points``. Sources (each read in
its native layout, see the module):

| subtask | source | ground truth | module |
|---|---|---|---|
| Visual_Correspondence | HPatches sequences | homographies H_1_k | :mod:`.hpatches` |
| Semantic_Correspondence | SPair-71k (split ``trn``) | annotated keypoint pairs | :mod:`.spair` |
| Relative_Depth | Middlebury stereo scenes | ground-truth disparity | :mod:`.middlebury` |

Leakage: BLINK built Visual_Correspondence from HPatches and Semantic_Correspondence from SPair-71k; which
HPatches sequences and which SPair-71k split it used is not part of its release (HPatches has no train/test
split of its sequences). Training uses SPair-71k's ``trn`` split by default, and ``exclude_blink`` (a local
BLINK copy) drops every HPatches sequence, SPair-71k pair or Middlebury scene with an image that BLINK shows
(perceptual hash, :mod:`.leakage`). Use it: it is the only guarantee for HPatches.

Entry points: :func:`build_blink_style` writes ``<out>/<Subtask>/<split>.parquet`` (the local BLINK layout:
``fit`` reads the folder as ``data.train.source``, ``evaluate --data.root`` too) and ``build.json``;
:func:`cached_blink_style` builds once into the vkvtrain cache (the ``blinkstyle://`` training source).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vkvtrain.cache import cache_root
from vkvtrain.data.blink import BlinkQuestion
from vkvtrain.data.blink_rows import write_questions
from vkvtrain.data.blink_style.hpatches import hpatches_questions
from vkvtrain.data.blink_style.leakage import ImageHashIndex
from vkvtrain.data.blink_style.middlebury import middlebury_questions
from vkvtrain.data.blink_style.spair import spair_questions
from vkvtrain.errors import DatasetError

__all__ = ["build_blink_style", "cached_blink_style", "BUILD_VERSION"]

BUILD_VERSION = 1  # part of the cache key of cached_blink_style: bump when the questions built change


def build_blink_style(
    out: str | Path,
    hpatches: str | None = None,
    spair: str | None = None,
    middlebury: str | None = None,
    n_per_subtask: int = 1000,
    split: str = "train",
    seed: int = 0,
    max_side: int = 1024,
    exclude_blink: str | None = None,
    spair_split: str = "trn",
) -> Path:
    """Write BLINK-style training questions from real datasets with exact answers; returns ``out``.

    Writes ``<out>/<Subtask>/<split>.parquet`` for each source given (hub schema + ``points``, JPEG images)
    and ``<out>/build.json`` (arguments, questions and dropped/skipped counts per subtask).

    Args:
        out: output folder (created).
        hpatches: HPatches root (``hpatches-sequences-release``: ``<seq>/1.ppm..6.ppm``, ``H_1_2..H_1_6``)
            -> Visual_Correspondence.
        spair: SPair-71k root (``JPEGImages``, ``PairAnnotation``) -> Semantic_Correspondence.
        middlebury: folder of Middlebury scenes (``<scene>/im0.png``, ``disp0.pfm``) -> Relative_Depth.
        n_per_subtask: questions per subtask.
        split: split name of the files and the ids (``<split>_<Subtask>_<n>``).
        seed: every question has its own stream from (seed, subtask, attempt): same arguments, same files.
        max_side: images are scaled down to this longer side before the markers are drawn.
        exclude_blink: a local BLINK copy (``<Subtask>/<split>*.parquet``); sources whose images it shows are
            dropped (leakage guard).
        spair_split: SPair-71k split read (``trn``; BLINK's questions come from SPair-71k too).
    """
    if not (hpatches or spair or middlebury):
        raise DatasetError("build_blink_style needs at least one source: hpatches, spair or middlebury (roots of "
                           "the datasets in their native layouts); for data without downloads use synthetic://blink")
    if n_per_subtask < 1:
        raise DatasetError(f"n_per_subtask must be >= 1, got {n_per_subtask}")
    out = Path(out)
    index = ImageHashIndex.from_blink(exclude_blink) if exclude_blink else None
    sources: dict[str, tuple[Any, dict[str, Any]]] = {}
    if hpatches:
        sources["Visual_Correspondence"] = (hpatches_questions, {"root": hpatches})
    if spair:
        sources["Semantic_Correspondence"] = (spair_questions, {"root": spair, "spair_split": spair_split})
    if middlebury:
        sources["Relative_Depth"] = (middlebury_questions, {"root": middlebury})
    report: dict[str, Any] = {
        "arguments": {"hpatches": hpatches, "spair": spair, "middlebury": middlebury, "n_per_subtask": n_per_subtask,
                      "split": split, "seed": seed, "max_side": max_side, "exclude_blink": exclude_blink,
                      "spair_split": spair_split, "build_version": BUILD_VERSION},
        "blink_images_indexed": None if index is None else len(index),
        "subtasks": {},
    }
    for subtask, (make, kwargs) in sources.items():
        stats: dict[str, int] = {}
        questions: Iterator[BlinkQuestion] = make(n=n_per_subtask, seed=seed, split=split, max_side=max_side,
                                                   blink_index=index, stats=stats, **kwargs)
        written = write_questions(out / subtask / f"{split}.parquet", questions, image_format="jpeg")
        report["subtasks"][subtask] = {"questions": written, **stats}
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def cached_blink_style(**kwargs: Any) -> Path:
    """:func:`build_blink_style` into ``<vkvtrain cache>/blink_style/<key>`` once; the folder on later calls.

    The key hashes the arguments (roots made absolute) and ``BUILD_VERSION``; the build goes to a staging
    folder renamed into place, so concurrent processes (DDP ranks) never read a half-written set.
    """
    for name in ("hpatches", "spair", "middlebury", "exclude_blink"):
        if kwargs.get(name):
            kwargs[name] = str(Path(kwargs[name]).expanduser().resolve())
    key = hashlib.sha256(json.dumps([BUILD_VERSION, sorted(kwargs.items())]).encode()).hexdigest()[:16]
    target = cache_root() / "blink_style" / key
    if (target / "build.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        build_blink_style(staging, **kwargs)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its folder holds the same questions
            pass
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
