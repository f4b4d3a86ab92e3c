"""One runner per probe task: dataset items -> features -> the task's layer-wise metric -> a row table.

A runner takes the :class:`TaskContext` of one model (feature extractor, protocol, prompt prefixes), the task's
dataset and the task's metric class (from its :class:`~vkvtrain.probes.tasks.ProbeTask` record), and returns
``{metric: {row: value}}``; rows that have no value for the task (no text value) hold NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from vkvtrain.data.perception.schema import (
    CosegGroup,
    FewShotEpisode,
    KeypointPair,
    PerceptionDataset,
    SegSample,
    VideoClip,
)
from vkvtrain.errors import RecipeError
from vkvtrain.probes.agnosticism import KeyInputAgnosticism
from vkvtrain.probes.correspondence import (
    KeypointCorrespondence,
    TemporalCorrespondence,
)
from vkvtrain.probes.features import IMAGE_ONLY_ROWS, FeatureExtractor, ImageFeatures
from vkvtrain.probes.protocol import ProbeProtocol
from vkvtrain.probes.segmentation import (
    CoSegmentation,
    FewShotSegmentation,
    TextGroundedSegmentation,
)

#: ``{metric: {row: value}}`` of one task on one model
Table = dict[str, dict[str, float]]
Item = TypeVar("Item")


@dataclass
class TaskContext:
    """What every runner needs from the probe run of one model.

    Args:
        fx: the model's feature extractor (its ``rows`` name the table rows).
        protocol: the protocol knobs. prefix: ``(task, text) -> prompt prefix or None``.
        batch_size: images per forward in batched runners. key_image_size: the side key-agnosticism images
            are resized to. name: the model's name in progress bars. progress: show progress bars.
        extras: per-task extra outputs (e.g. flagged key positions) written to ``probes.json``.
    """

    fx: FeatureExtractor
    protocol: ProbeProtocol
    prefix: Callable[[str, str | None], str | None]
    batch_size: int
    key_image_size: int
    name: str = "model"
    progress: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        return self.fx.rows

    @property
    def text_rows(self) -> list[str]:
        """Rows with a text value (the LM rows): the text-grounded tasks' rows."""
        return [r for r in self.rows if r not in IMAGE_ONLY_ROWS]

    def track(self, items: Iterable[Item], total: int, task: str) -> Iterable[Item]:
        return tqdm(items, total=total, desc=f"{self.name}:{task}", disable=not self.progress, leave=False)

    def grids(self, feats: ImageFeatures, rows: Sequence[str] | None = None) -> list[Tensor]:
        """The image's token grids ``(h, w, D)`` in row order."""
        return [feats.rows[r] for r in (rows if rows is not None else self.rows)]

    def table(self, result: dict[str, Tensor], rows: Sequence[str]) -> Table:
        """Per-row results (``(len(rows),)`` tensors) spread over all of the context's rows (NaN elsewhere)."""
        return {key: {r: (float(val[rows.index(r)]) if r in rows else math.nan) for r in self.rows}
                for key, val in result.items() if val.dim() == 1}


def _num_classes(ds: Any, task: str) -> int:
    num_classes = getattr(ds, "num_classes", None)  # part of the class-labelled datasets' interface
    if not isinstance(num_classes, int) or num_classes < 1:
        raise RecipeError(f"the {task} dataset {type(ds).__name__} does not say its num_classes; class ids need it")
    return num_classes


def run_fewshot(ctx: TaskContext, ds: PerceptionDataset[FewShotEpisode],
                metric_cls: type[FewShotSegmentation]) -> Table:
    o = ctx.protocol
    metric = metric_cls(len(ctx.rows), num_classes=_num_classes(ds, "fewshot"), c=o.fewshot_c, upsample=o.upsample,
                        layer_names=ctx.rows)
    for i in ctx.track(range(len(ds)), len(ds), "fewshot"):
        ep = ds[i]
        samples = ep.support + [ep.query]
        feats = ctx.fx([s.image for s in samples], prefixes=[ctx.prefix("fewshot", ep.class_name)] * len(samples))
        metric.update([ctx.grids(f) for f in feats[:-1]], [s.mask for s in ep.support], ctx.grids(feats[-1]),
                      ep.query.mask, ep.class_id, support_ignore=[s.ignore for s in ep.support],
                      query_ignore=ep.query.ignore)
    return ctx.table(metric.compute(), ctx.rows)


def run_coseg(ctx: TaskContext, ds: PerceptionDataset[CosegGroup], metric_cls: type[CoSegmentation]) -> Table:
    o = ctx.protocol
    metric = metric_cls(len(ctx.rows), k=o.coseg_k, upsample=o.upsample, layer_names=ctx.rows)
    for i in ctx.track(range(len(ds)), len(ds), "coseg"):
        group = ds[i]
        feats = ctx.fx([s.image for s in group.samples], prefixes=[ctx.prefix("coseg", None)] * len(group.samples))
        metric.update([ctx.grids(f) for f in feats], [s.mask for s in group.samples])
    return ctx.table(metric.compute(), ctx.rows)


def _grounding(ctx: TaskContext, ds: PerceptionDataset[SegSample], task: str, num_classes: int | None,
               metric_cls: type[TextGroundedSegmentation]) -> Table:
    o = ctx.protocol
    rows = ctx.text_rows
    if not rows:
        return {"miou": {r: math.nan for r in ctx.rows}, "ciou": {r: math.nan for r in ctx.rows}}
    metric = metric_cls(len(rows), num_classes=num_classes, threshold=o.grounding_threshold, upsample=o.upsample,
                        layer_names=rows)
    for start in ctx.track(range(0, len(ds), ctx.batch_size), math.ceil(len(ds) / ctx.batch_size), task):
        samples = [ds[i] for i in range(start, min(start + ctx.batch_size, len(ds)))]
        feats = ctx.fx([s.image for s in samples], texts=[s.text or s.class_name for s in samples],
                       prefixes=[ctx.prefix(task, s.text) for s in samples])
        for s, f in zip(samples, feats):
            metric.update([f.text[r] for r in rows], ctx.grids(f, rows), s.mask,
                          class_id=s.class_id if num_classes else None, ignore=s.ignore)
    return ctx.table(metric.compute(), rows)


def run_semantic(ctx: TaskContext, ds: PerceptionDataset[SegSample],
                 metric_cls: type[TextGroundedSegmentation]) -> Table:
    return _grounding(ctx, ds, "semantic", _num_classes(ds, "semantic"), metric_cls)


def run_referring(ctx: TaskContext, ds: PerceptionDataset[SegSample],
                  metric_cls: type[TextGroundedSegmentation]) -> Table:
    return _grounding(ctx, ds, "referring", None, metric_cls)


def run_keypoints(ctx: TaskContext, ds: PerceptionDataset[KeypointPair],
                  metric_cls: type[KeypointCorrespondence]) -> Table:
    o = ctx.protocol
    metric = metric_cls(len(ctx.rows), alpha=o.pck_alpha, normalize=o.pck_normalize, layer_names=ctx.rows)
    for i in ctx.track(range(len(ds)), len(ds), "keypoints"):
        pair = ds[i]
        src, trg = ctx.fx([pair.source, pair.target], prefixes=[ctx.prefix("keypoints", pair.category)] * 2)
        metric.update(ctx.grids(src), ctx.grids(trg), pair.source_kps, pair.target_kps,
                      (pair.source.size[1], pair.source.size[0]), (pair.target.size[1], pair.target.size[0]),
                      trg_bbox=pair.target_bbox)
    return ctx.table(metric.compute(), ctx.rows)


def run_temporal(ctx: TaskContext, ds: PerceptionDataset[VideoClip],
                 metric_cls: type[TemporalCorrespondence]) -> Table:
    o = ctx.protocol
    metric = metric_cls(len(ctx.rows), n_last_frames=o.temporal_n_last_frames, topk=o.temporal_topk,
                        temperature=o.temporal_temperature, neighborhood=o.temporal_neighborhood,
                        patch_size=o.temporal_patch_size, layer_names=ctx.rows)
    for i in ctx.track(range(len(ds)), len(ds), "temporal"):
        clip = ds[i]
        feats = ctx.fx(clip.frames, prefixes=[ctx.prefix("temporal", None)] * len(clip.frames))
        metric.update([ctx.grids(f) for f in feats], clip.masks)
    return ctx.table(metric.compute(), ctx.rows)


def first_image(item: Any) -> Image.Image:
    """The image of a dataset item of any task (the query of an episode, the first of a group / clip)."""
    if isinstance(item, SegSample):
        return item.image
    if isinstance(item, FewShotEpisode):
        return item.query.image
    if isinstance(item, CosegGroup):
        return item.samples[0].image
    if isinstance(item, KeypointPair):
        return item.source
    if isinstance(item, VideoClip):
        return item.frames[0]
    raise RecipeError(f"key_agnosticism cannot take an image from a {type(item).__name__} item")


def run_key_agnosticism(ctx: TaskContext, ds: PerceptionDataset[Any],
                        metric_cls: type[KeyInputAgnosticism]) -> Table:
    """Keys of ``key_images`` images, each resized to ``key_image_size`` so all share one grid."""
    o, size = ctx.protocol, ctx.key_image_size
    n_images = min(o.key_images, len(ds))
    if n_images < 2:
        raise RecipeError(f"key_agnosticism needs >= 2 images, its data holds {len(ds)}; raise data.key_agnosticism.n")
    images = [first_image(ds[i]).resize((size, size)) for i in range(n_images)]
    feats = ctx.fx(images, prefixes=[ctx.prefix("key_agnosticism", None)] * len(images), keys=True)
    layers = ctx.fx.layers
    keys = [torch.stack([f.keys[layer] for f in feats]) for layer in layers]  # each (n, N, kv_dim)
    names = [str(layer) for layer in layers]
    metric = metric_cls(len(layers), keys[0].shape[1], keys[0].shape[2], threshold=o.key_threshold, layer_names=names)
    metric.update(keys)
    res = metric.compute()
    ctx.extras["key_agnosticism"] = {
        "image_size": size,
        "flagged": {n: res["flagged"][i].nonzero().flatten().tolist() for i, n in enumerate(names)},
        "agnosticism": {n: res["agnosticism"][i].tolist() for i, n in enumerate(names)},
    }
    return ctx.table({"score": res["score"], "n_flagged": res["n_flagged"].float()}, names)
