"""Marked-point coordinates of BLINK questions whose data has none, read from the pixels and cached.

The hub data draws its point markers into the images and ships no coordinates. For the point-marked
subtasks every question must carry these markers:

- Visual_, Semantic_, Functional_Correspondence: REF on image_1, one marker per choice (A, B, ...) on image_2;
- Relative_Depth, Relative_Reflectance: A and B on image_1 (white rings on Relative_Reflectance).

:func:`fill_points` locates them (:func:`vkvtrain.data.markers.locate_markers`) and returns the questions
with ``points`` set in the synthetic data's layout (``{"image_1": {"REF": (x, y)}, "image_2": {...}}``, x, y
in [0, 1]) plus a per-subtask report. A question whose markers are not all found exactly once keeps
``points=None`` and is counted under ``not_found`` with the reason: it is never guessed.

Results are cached per question as small JSON files, keyed by the SHA-256 of the images' pixels (mode, size,
bytes), the subtask, the expected labels and ``MARKER_VERSION``, under ``<vkvtrain cache>/markers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vkvtrain.cache import cache_root
from vkvtrain.data.blink import IMAGE_FIELDS, BlinkQuestion, Point
from vkvtrain.data.markers import locate_markers

MARKER_VERSION = 1  # part of every cache key: bump it when the localiser's results change

CORRESPONDENCE = ("Visual_Correspondence", "Semantic_Correspondence", "Functional_Correspondence")
TWO_POINTS = ("Relative_Depth", "Relative_Reflectance")
POINT_MARKED: tuple[str, ...] = CORRESPONDENCE + TWO_POINTS


def expected_markers(q: BlinkQuestion) -> dict[str, list[str]] | None:
    """Labels each image of ``q`` must carry (``{"image_1": ["REF"], "image_2": ["A", ...]}``), None if the
    subtask marks no points or the question has too few images for its layout."""
    if q.sub_task in CORRESPONDENCE and len(q.images) >= 2:
        return {"image_1": ["REF"], "image_2": list(q.letters)}
    if q.sub_task in TWO_POINTS and len(q.images) >= 1:
        return {"image_1": ["A", "B"]}
    return None


def ring_colors(sub_task: str) -> tuple[str, ...]:
    """Ring colours BLINK uses on ``sub_task``, most likely first."""
    return ("white", "red") if sub_task == "Relative_Reflectance" else ("red",)


@dataclass(frozen=True)
class QuestionPoints:
    """Located points (None when not all markers were found), the reason otherwise, and whether it came
    from the cache."""

    points: dict[str, dict[str, Point]] | None
    problem: str | None
    cached: bool = False


def question_key(q: BlinkQuestion, expected: dict[str, list[str]]) -> str:
    """Cache key of ``q``'s marker search: SHA-256 of the version, subtask, expected labels and pixels."""
    digest = hashlib.sha256(json.dumps([MARKER_VERSION, q.sub_task, expected]).encode())
    for image in q.images[: len(expected)]:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "markers"


def locate_question_points(q: BlinkQuestion, cache_dir: str | Path | None = None, use_cache: bool = True
                           ) -> QuestionPoints:
    """Find ``q``'s markers in its images (see module docstring); ``cache_dir`` None = the default cache."""
    expected = expected_markers(q)
    if expected is None:
        return QuestionPoints(None, f"{q.sub_task} questions carry no point markers (or too few images)")
    path = Path(cache_dir or default_cache_dir()) / f"{question_key(q, expected)}.json"
    if use_cache and path.is_file():
        entry = json.loads(path.read_text())
        points = entry["points"]
        return QuestionPoints(
            None if points is None else {im: {k: (xy[0], xy[1]) for k, xy in m.items()} for im, m in points.items()},
            entry["problem"], cached=True,
        )
    found: dict[str, dict[str, Point]] = {}
    problems = []
    for field, labels in expected.items():
        image = q.images[IMAGE_FIELDS.index(field)]
        search = locate_markers(image, labels, ring_colors(q.sub_task))
        if search.points is None:
            problems.append(f"{field}: {search.problem}")
        else:
            found[field] = search.points
    result = QuestionPoints(None if problems else found, "; ".join(problems) or None)
    if use_cache:
        _write_json(path, {"points": result.points, "problem": result.problem})
    return result


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write (concurrent evaluations may fill the same cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".marker-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def fill_points(questions: Sequence[BlinkQuestion], cache_dir: str | Path | None = None, use_cache: bool = True
                ) -> tuple[list[BlinkQuestion], dict[str, dict[str, Any]]]:
    """Questions with ``points`` located where a point-marked subtask's data has none, and the report.

    Report per subtask with such questions: ``questions`` (searched), ``located``, ``not_found``,
    ``from_cache`` and ``problems`` (idx -> reason for each question not located). Questions that already
    carry points, or whose subtask marks none, are returned unchanged and not counted.
    """
    out: list[BlinkQuestion] = []
    report: dict[str, dict[str, Any]] = {}
    for q in questions:
        if q.points is not None or q.sub_task not in POINT_MARKED:
            out.append(q)
            continue
        entry = report.setdefault(q.sub_task, {"questions": 0, "located": 0, "not_found": 0, "from_cache": 0,
                                               "problems": {}})
        result = locate_question_points(q, cache_dir, use_cache)
        entry["questions"] += 1
        entry["from_cache"] += int(result.cached)
        if result.points is None:
            entry["not_found"] += 1
            entry["problems"][q.idx] = result.problem
            out.append(q)
        else:
            entry["located"] += 1
            out.append(dataclasses.replace(q, points=result.points))
    return out, report
