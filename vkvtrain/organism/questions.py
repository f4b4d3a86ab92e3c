"""Questions over the organism's world: the taught QA types and the never-taught BLINK-style subtasks.

Taught (``TAUGHT``, one image, trained in stage b, multiple choice with every value as an option):
``colour`` ("What colour is the triangle?"), ``shape`` ("What shape is the red object?") and ``pattern``
("What pattern does the cross have?") of a scene's one shape, and ``count`` ("How many objects are in the
image?", 1-4 shapes, all of one size range: with sizes that shrink as the count grows, 3 and 4 shapes cover about
the same area and a minutes-long stage b confuses them).

Never taught (``GAP_SUBTASKS``, BLINK subtask names, prompts and choice wording, each with a latent probe in
:mod:`vkvtrain.evaluation.latent`); none of them can be answered from pixel colours:

- ``Semantic_Correspondence``: REF on one part (top/bottom/left/right/centre) of a shape; the second image
  shows another shape of the same kind in another colour, texture, size, place and background; the four
  candidates lie on four different parts of it.
- ``Functional_Correspondence``: the same, but the second shape is of another kind (the same part plays the
  same role: "the top of a triangle" ~ "the top of a dome").
- ``Visual_Correspondence``: the same scene after a camera shift and a lighting change (a colour cast);
  the candidates lie on parts of the scene's objects.
- ``Visual_Similarity``: which of two scenes holds the same kinds of shapes as the reference; the two
  candidates are one scene drawn twice with different kinds, the reference has other colours, textures,
  sizes, places and background.
- ``Art_Style``: which of two scenes is painted with the same texture as the reference; the candidates are
  one scene drawn twice with different textures, the reference has other kinds, colours and layout.

Every question is a :class:`~vkvtrain.data.blink.BlinkQuestion` whose answer letter cycles with its index
(so a model that ignores the images scores chance exactly), with ``points`` for the marked points. The
random stream of question ``i`` of ``name`` in ``split`` is ``default_rng([seed, SPLITS.index(split),
name's index, i])``: splits never share a stream, and a question does not depend on which others are asked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from vkvtrain.data.blink import LETTERS, BlinkQuestion, Point
from vkvtrain.data.blink_questions import blink_prompt
from vkvtrain.data.markers import draw_markers
from vkvtrain.data.synthetic_blink import write_questions
from vkvtrain.errors import DatasetError
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.organism.world import (
    COLOUR_NAMES,
    KINDS,
    PARTS,
    TEXTURES,
    Rng,
    Scene,
    WorldObject,
    part_point,
    place,
    random_object,
    random_scene,
    render,
)

#: How the organism is asked and answers: the BLINK ``prompt`` as it is, answered "(B)". This is the form a
#: recipe trains on BLINK-format data (question_field "prompt", answer "(B)"), so the base organism, its
#: interventions' training data and every evaluation see one format.
ORGANISM_PROTOCOL = PromptProtocol(pre_prompt="", continuation="paren_letter")

TAUGHT: tuple[str, ...] = ("colour", "shape", "pattern", "count")
GAP_SUBTASKS: tuple[str, ...] = (
    "Art_Style", "Functional_Correspondence", "Semantic_Correspondence", "Visual_Correspondence",
    "Visual_Similarity",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
MAX_COUNT = 4
TEXTURE_WORDS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked"}
#: the world's words, whole tokens in the organism's tokenizer (the byte fallback covers everything else)
VOCABULARY: tuple[str, ...] = (*KINDS, *COLOUR_NAMES, *TEXTURE_WORDS.values())

CORRESPONDENCE_QUESTIONS = {
    "Semantic_Correspondence": (
        "Humans can find corresponding points for different objects in the same category. For instance, if "
        "there are images of two different cats, then the left ear tip of one cat corresponds to the left ear "
        "tip of the other cat. A point is annotated on the first image, labeled with REF. Which point on the "
        "second image corresponds to it?"
    ),
    "Functional_Correspondence": (
        "Humans can find functionally corresponding parts of objects. A point is annotated on the first "
        "image, labeled with REF. Which point on the second image plays the same role?"
    ),
    "Visual_Correspondence": (
        "A point is circled on the first image, labeled with REF. We change the camera position or lighting "
        "and shoot the second image. Which point on the second image corresponds to the same point?"
    ),
}


def mark_points(image: Image.Image, marks: dict[str, Point]) -> Image.Image:
    """A copy of ``image`` with each labelled point drawn BLINK-style (vkvtrain's marker renderer)."""
    return draw_markers(image, marks)[0]


def _pil(scene: Scene) -> Image.Image:
    return Image.fromarray(scene.image, "RGB")


def _question(name: str, idx: str, question: str, images: list[Image.Image], choices: list[str], answer: int,
              points: dict[str, dict[str, Point]] | None = None, meta: Mapping[str, Any] | None = None
              ) -> BlinkQuestion:
    return BlinkQuestion(idx=idx, sub_task=name, question=question, prompt=blink_prompt(question, choices),
                         choices=choices, images=images, answer=LETTERS[answer], points=points,
                         explanation="organism", meta=dict(meta or {}))


# ------------------------------------------------------------------------------------------ taught
# Taught questions. Colour, shape and pattern ask about the one object of a scene; count asks about 1-4 objects.
# Their options are every value in a fixed order, so the answer letter is a fixed function of what is seen: a
# stage b of minutes cannot teach a from-scratch LM to bind a question word to one of several objects or to
# match option texts (see docs/ORGANISM.md), and the organism does not need to.
def _one(rng: Rng, **attributes: Any) -> tuple[Scene, WorldObject]:
    obj = random_object(rng, (18.0, 58.0), **attributes)
    return render([obj], int(rng.integers(2**31))), obj


#: count scenes draw every object from one size range: with sizes that shrink as the count grows, 3 and 4 shapes
#: cover about the same area and a minutes-long stage b confuses them
COUNT_SIZES = (15.0, 21.0)


def _colour(rng: Rng, answer: int) -> tuple[str, Scene, list[str]]:
    scene, obj = _one(rng, colour=COLOUR_NAMES[answer])
    return f"What colour is the {obj.kind}?", scene, list(COLOUR_NAMES)


def _shape(rng: Rng, answer: int) -> tuple[str, Scene, list[str]]:
    scene, obj = _one(rng, kind=KINDS[answer])
    return f"What shape is the {obj.colour} object?", scene, list(KINDS)


def _pattern(rng: Rng, answer: int) -> tuple[str, Scene, list[str]]:
    scene, obj = _one(rng, texture=TEXTURES[answer])
    return f"What pattern does the {obj.kind} have?", scene, [TEXTURE_WORDS[t] for t in TEXTURES]


def _count(rng: Rng, answer: int) -> tuple[str, Scene, list[str]]:
    scene = random_scene(rng, n_objects=answer + 1, size_range=COUNT_SIZES)
    return "How many objects are in the image?", scene, [str(k) for k in range(1, MAX_COUNT + 1)]


TAUGHT_GENERATORS: dict[str, tuple[Callable[[Rng, int], tuple[str, Scene, list[str]]], int]] = {
    "colour": (_colour, len(COLOUR_NAMES)), "shape": (_shape, len(KINDS)), "pattern": (_pattern, len(TEXTURES)),
    "count": (_count, MAX_COUNT),
}


# ------------------------------------------------------------------------------------------ never taught
def _single(rng: Rng, kind: str, colour: str, texture: str) -> Scene:
    return render([random_object(rng, (36.0, 58.0), kind, colour, texture)], int(rng.integers(2**31)))


Marks = dict[str, dict[str, Point]]


def _part_correspondence(rng: Rng, answer: int, same_kind: bool) -> tuple[list[Scene], Marks, dict[str, object]]:
    """Two single-shape scenes; REF on part p of the first, candidates on four parts of the second."""
    while True:
        k1 = str(rng.choice(KINDS))
        k2 = k1 if same_kind else str(rng.choice([k for k in KINDS if k != k1]))
        c1, c2 = (str(c) for c in rng.choice(COLOUR_NAMES, 2, replace=False))
        t1, t2 = (str(t) for t in rng.choice(TEXTURES, 2, replace=False))
        s1, s2 = _single(rng, k1, c1, t1), _single(rng, k2, c2, t2)
        order = [str(p) for p in rng.permutation(PARTS)]
        target, wrong = order[0], order[1:4]
        parts = wrong[:answer] + [target] + wrong[answer:]
        ref = part_point(s1, 0, target, rng=rng)
        cands = [part_point(s2, 0, p, rng=rng) for p in parts]
        if ref is not None and all(c is not None for c in cands):
            marks = {LETTERS[i]: c for i, c in enumerate(cands) if c is not None}
            return [s1, s2], {"image_1": {"REF": ref}, "image_2": marks}, {"ref_part": target, "parts": parts}


def _visual_correspondence(rng: Rng, answer: int) -> tuple[list[Scene], Marks, dict[str, object]]:
    """One scene and the same scene after a camera shift (<= 8 px) and a colour cast; REF on an object part
    that stays in view, the other candidates on other object parts of the second view."""
    size = 64
    while True:
        shift = (int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
        n = int(rng.integers(2, 4))
        placed = place(rng, [random_object(rng, (20.0, 28.0)) for _ in range(n)])
        if placed is None:
            continue
        bg = int(rng.integers(2**31))
        light = tuple(float(v) for v in rng.uniform(0.6, 1.3, 3))
        s1, s2 = render(placed, bg), render(placed, bg, shift=shift, light=light)  # type: ignore[arg-type]
        slots = [(i, str(p)) for i in range(n) for p in PARTS]
        order = [slots[j] for j in rng.permutation(len(slots))]
        (oi, part), rest = order[0], order[1:]
        ref = part_point(s1, oi, part, rng=rng)
        if ref is None:
            continue
        target = (ref[0] - shift[0] / size, ref[1] - shift[1] / size)
        if not (0.04 < target[0] < 0.96 and 0.04 < target[1] < 0.96):
            continue
        wrong: list[Point] = []
        for i, p in rest:
            q = part_point(s2, i, p, rng=rng)
            if q is not None and all(np.hypot(q[0] - w[0], q[1] - w[1]) > 0.12 for w in [target, *wrong]):
                wrong.append(q)
            if len(wrong) == 3:
                break
        if len(wrong) < 3:
            continue
        cands = wrong[:answer] + [target] + wrong[answer:]
        marks = {"image_1": {"REF": ref}, "image_2": {LETTERS[i]: c for i, c in enumerate(cands)}}
        return [s1, s2], marks, {"ref_object": oi, "ref_part": part, "shift": shift}


def _scene_of(rng: Rng, kinds: Sequence[str], textures: Sequence[str]) -> Scene:
    """A scene holding one object per (kind, texture), random colours, sizes and places."""
    while True:
        colours = rng.choice(COLOUR_NAMES, len(kinds), replace=False)
        objects = [random_object(rng, (24.0, 34.0), k, str(c), t) for k, c, t in zip(kinds, colours, textures)]
        placed = place(rng, objects)
        if placed is not None:
            return render(placed, int(rng.integers(2**31)))


def _minimal_pair(scene: Scene, field: str, values: Sequence[str]) -> tuple[Scene, Scene]:
    """``scene`` and the same scene (layout, colours, background) with ``field`` of its objects set to ``values``."""
    other = [replace(o, **{field: v}) for o, v in zip(scene.objects, values)]  # type: ignore[arg-type]
    return scene, render(other, scene.background_seed)


# The two candidates of Visual_Similarity and Art_Style are a minimal pair: the same scene, differing only in the
# asked-about attribute (kinds, texture), while the reference is redrawn in everything else.
def _visual_similarity(rng: Rng, answer: int) -> list[Scene]:
    kinds = [str(k) for k in rng.permutation(KINDS)]
    same, other = kinds[:2], kinds[2:4]

    def textures() -> list[str]:
        return [str(t) for t in rng.choice(TEXTURES, 2)]

    ref = _scene_of(rng, same, textures())
    pos, neg = _minimal_pair(_scene_of(rng, same, textures()), "kind", other)
    return [ref, *([neg, pos] if answer == 1 else [pos, neg])]


def _art_style(rng: Rng, answer: int) -> list[Scene]:
    style, other = (str(t) for t in rng.choice(TEXTURES, 2, replace=False))

    def kinds() -> list[str]:
        return [str(k) for k in rng.choice(KINDS, 2, replace=False)]

    ref = _scene_of(rng, kinds(), [style] * 2)
    pos, neg = _minimal_pair(_scene_of(rng, kinds(), [style] * 2), "texture", [other] * 2)
    return [ref, *([neg, pos] if answer == 1 else [pos, neg])]


def _gap_question(name: str, rng: Rng, index: int, idx: str) -> BlinkQuestion:
    if name in CORRESPONDENCE_QUESTIONS:
        answer = index % 4
        if name == "Visual_Correspondence":
            scenes, points, meta = _visual_correspondence(rng, answer)
        else:
            scenes, points, meta = _part_correspondence(rng, answer, same_kind=name == "Semantic_Correspondence")
        images = [mark_points(_pil(s), points[f"image_{i + 1}"]) for i, s in enumerate(scenes)]
        meta["objects"] = [[o.__dict__ for o in s.objects] for s in scenes]
        return _question(name, idx, CORRESPONDENCE_QUESTIONS[name], images, [f"Point {c}" for c in "ABCD"],
                         answer, points, meta)
    answer = index % 2
    if name == "Visual_Similarity":
        scenes, text = _visual_similarity(rng, answer), "Which image is most similar to the reference image?"
    elif name == "Art_Style":
        scenes, text = _art_style(rng, answer), "Which image shares the same style as the reference image?"
    else:
        raise DatasetError(f"unknown organism subtask {name!r}; choose from {GAP_SUBTASKS}")
    meta = {"objects": [[o.__dict__ for o in s.objects] for s in scenes]}
    return _question(name, idx, text, [_pil(s) for s in scenes], ["the second image", "the third image"], answer,
                     meta=meta)


# ------------------------------------------------------------------------------------------ streams
def question_rng(seed: int, split: str, name: str, index: int) -> Rng:
    """The random stream of question ``index`` of ``name`` (a taught type or gap subtask) in ``split``."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; organism questions come in splits {SPLITS}")
    names = TAUGHT + GAP_SUBTASKS
    if name not in names:
        raise DatasetError(f"unknown question type {name!r}; taught: {TAUGHT}, never taught: {GAP_SUBTASKS}")
    return np.random.default_rng([seed, SPLITS.index(split), names.index(name), index])


def _check(n: int, names: Sequence[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if n < 1:
        raise DatasetError(f"the number of questions per {what} must be >= 1, got {n}")
    chosen = list(allowed if names is None else names)
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise DatasetError(f"unknown or empty {what} list {unknown or chosen}; choose from {list(allowed)}")
    return chosen


def taught_questions(n_per_type: int, seed: int = 0, split: str = "val",
                     types: Sequence[str] | None = None, first: int = 0) -> list[BlinkQuestion]:
    """``n_per_type`` one-image multiple-choice questions of each taught type (answers cycle A, B, ...),
    numbered from ``first`` (so a training stream can be drawn in chunks)."""
    out = []
    for name in _check(n_per_type, types, TAUGHT, "taught type"):
        make, n_choices = TAUGHT_GENERATORS[name]
        for i in range(first, first + n_per_type):
            answer = i % n_choices
            text, scene, choices = make(question_rng(seed, split, name, i), answer)
            meta = {"objects": [o.__dict__ for o in scene.objects]}
            out.append(_question(name, f"{split}_{name}_{i + 1}", text, [_pil(scene)], choices, answer, meta=meta))
    return out


def gap_questions(n_per_subtask: int, seed: int = 0, split: str = "val",
                  subtasks: Sequence[str] | None = None) -> list[BlinkQuestion]:
    """``n_per_subtask`` never-taught BLINK-format questions per subtask (default all of ``GAP_SUBTASKS``)."""
    return [
        _gap_question(name, question_rng(seed, split, name, i), i, f"{split}_{name}_{i + 1}")
        for name in _check(n_per_subtask, subtasks, GAP_SUBTASKS, "subtask")
        for i in range(n_per_subtask)
    ]


def write_gap_blink(root: str | Path, n_per_subtask: int, seed: int = 0, split: str = "val",
                    subtasks: Sequence[str] | None = None) -> Path:
    """Write ``root/<Subtask>/<split>.parquet`` (BLINK schema + ``points``), read by ``load_blink`` (splits
    val/test) and by a recipe's ``data.train.source`` (any split, e.g. ``train``)."""
    return write_questions(root, gap_questions(n_per_subtask, seed, split, subtasks), split)
