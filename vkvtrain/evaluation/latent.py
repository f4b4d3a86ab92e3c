"""Latent probes on BLINK: answer a question from the LM's image value tokens alone, at every layer.

Defined where a representation probe needs no training:

- ``pooled`` (Art_Style, Visual_Similarity): image_1 is the reference, image_{c+2} is choice c. Score of
  choice c = cosine(mean value token of the reference's base grid, mean value token of image_{c+2}).
- ``point`` (Visual_, Semantic_, Functional_Correspondence): needs the marked point coordinates
  (``BlinkQuestion.points``: REF on image_1, the choice labels A, B, ... on image_2); score of choice c =
  cosine(value token under REF, value token under point c). The hub data draws its points into the pixels
  without coordinates, so on hub data these subtasks are skipped unless points are supplied.

The probe's answer is the arg-max choice. Values are read from the prefill's KV cache, which holds exactly
the v_proj outputs (the same tensors as vkvtrain.capture's ImageKV.values), at the image's base grid.
A point (x, y) in [0, 1] maps to grid cell (floor(y*H), floor(x*W)) of the base-resolution grid.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vkvtrain.capture import KVCapture
from vkvtrain.data.blink import LETTERS, Point
from vkvtrain.prompts import ImageSpan


class LatentQuestion(Protocol):
    """What a latent probe reads of a question (a `BlinkQuestion`, or a validation row of a training run)."""

    @property
    def sub_task(self) -> str: ...
    @property
    def points(self) -> dict[str, dict[str, Point]] | None: ...
    @property
    def n_choices(self) -> int: ...
    @property
    def letters(self) -> str: ...
    @property
    def n_images(self) -> int: ...
    @property
    def answer_index(self) -> int | None: ...

PROBES: dict[str, str] = {
    "Art_Style": "pooled",
    "Visual_Similarity": "pooled",
    "Functional_Correspondence": "point",
    "Semantic_Correspondence": "point",
    "Visual_Correspondence": "point",
}


def image_grid_values(cache: Any, layers: Sequence[int], b: int, span: ImageSpan) -> Tensor:
    """(n_layers, H, W, kv_dim) value tokens of one image's base grid, read from a DynamicCache."""
    H, W = span.grid_shape
    out = []
    for layer in layers:
        v = cache.layers[layer].values[b, :, span.start : span.start + H * W]  # (n_kv_heads, H*W, head_dim)
        out.append(v.permute(1, 0, 2).reshape(H, W, -1))
    return torch.stack(out).float()


def _cell(grid: Tensor, xy: tuple[float, float]) -> Tensor:
    """(n_layers, D) token of grid (n_layers, H, W, D) under the normalised point xy."""
    H, W = grid.shape[1:3]
    row = min(max(int(xy[1] * H), 0), H - 1)
    col = min(max(int(xy[0] * W), 0), W - 1)
    return grid[:, row, col]


def probe_kind(q: LatentQuestion) -> str | None:
    """Which probe applies to ``q`` ("pooled", "point") or None when none is defined for it."""
    kind = PROBES.get(q.sub_task)
    if kind == "pooled" and q.n_images == q.n_choices + 1:
        return kind
    if kind == "point" and q.points is not None and q.n_images >= 2:
        marks2 = q.points.get("image_2", {})
        if "REF" in q.points.get("image_1", {}) and all(c in marks2 for c in q.letters):
            return kind
    return None


def probe_scores(q: LatentQuestion, grids: list[Tensor]) -> Tensor:
    """(n_layers, n_choices) probe scores; ``grids[i]`` is image i's (n_layers, H, W, D) value grid."""
    kind = probe_kind(q)
    if kind == "pooled":
        ref = grids[0].mean((1, 2))  # (n_layers, D)
        pooled = [grids[c + 1].mean((1, 2)) for c in range(q.n_choices)]  # image_{c+2}: (n_layers, D)
        return torch.stack([F.cosine_similarity(ref, p, dim=-1) for p in pooled], -1)
    if kind == "point":
        assert q.points is not None
        ref = _cell(grids[0], q.points["image_1"]["REF"])
        marks = q.points["image_2"]
        return torch.stack(
            [F.cosine_similarity(ref, _cell(grids[1], marks[LETTERS[c]]), dim=-1) for c in range(q.n_choices)], -1
        )
    raise ValueError(f"no latent probe is defined for {q.idx} ({q.sub_task})")


GridFn = Callable[[int, ImageSpan], Tensor]  # (b, span) -> (n_layers, H, W, D) value grid


def _probe_correct(
    questions: Sequence[LatentQuestion], spans: list[list[ImageSpan]], grids_of: GridFn
) -> list[Tensor | None]:
    out: list[Tensor | None] = []
    for b, q in enumerate(questions):
        if probe_kind(q) is None or q.answer_index is None:
            out.append(None)
            continue
        grids = [grids_of(b, s) for s in spans[b]]
        out.append(probe_scores(q, grids).argmax(-1).cpu() == q.answer_index)
    return out


def probe_correct_batch(
    questions: Sequence[LatentQuestion], spans: list[list[ImageSpan]], cache: Any, layers: Sequence[int]
) -> list[Tensor | None]:
    """Per question: (n_layers,) bool, the probe's arg-max choice is the gold one; None without a probe.

    Values come from the prefill's KV cache (a DynamicCache); ``spans`` from the encoded batch.
    """
    return _probe_correct(questions, spans, lambda b, span: image_grid_values(cache, layers, b, span))


def probe_correct_from_capture(questions: Sequence[LatentQuestion], kv: KVCapture) -> list[Tensor | None]:
    """Like :func:`probe_correct_batch`, reading a ``mlm.capture(...)`` result at its captured layers.

    For training-time validation: feed ``torch.stack`` of the non-None results, with the output
    correctness, to :class:`vkvtrain.probes.surfacing_gap.SurfacingGap` (columns = ``kv.layers``).
    """

    def grids_of(b: int, span: ImageSpan) -> Tensor:
        return torch.stack([kv.image(layer, b, span.image).grid("values") for layer in kv.layers]).float()

    return _probe_correct(questions, kv.spans, grids_of)
