"""Segmentation probes: few-shot foreground, co-segmentation and text-grounded (semantic/referring).

Inputs per layer are token grids ``(h, w, D)``; ``feats`` arguments are a sequence over layers (or a
stacked ``(L, h, w, D)`` tensor). Masks are ``(H, W)`` bool at image resolution.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from vkvtrain.probes import functional as PF
from vkvtrain.probes.base import LayerwiseMetric, safe_div


def class_miou(class_stats: Tensor, class_seen: Tensor) -> Tensor:
    """Per-row mean class IoU from accumulated counts.

    Args:
        class_stats: ``(L, C, 2)`` per row and class ``[intersection, union]`` pixel counts.
        class_seen: ``(C,)`` how many episodes / samples each class had (the same for every row).
    Returns:
        ``(L,)`` float64: mean over the classes with ``class_seen > 0`` of ``inter / union`` (1 where the union
        is empty: empty truth and nothing predicted); NaN when no class was seen.
    """
    seen = class_seen > 0
    if not seen.any():
        return torch.full((class_stats.shape[0],), float("nan"), dtype=torch.float64, device=class_stats.device)
    inter, union = class_stats[:, seen, 0].double(), class_stats[:, seen, 1].double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return iou.mean(1)


class FewShotSegmentation(LayerwiseMetric):
    """k-shot foreground segmentation (Pascal-5i protocol), per layer.

    Each ``update`` is one episode: a logistic-regression classifier fitted on the support tokens
    (:func:`~vkvtrain.probes.functional.fewshot_segment`) segments the query. States are pixel counts:
    per-class foreground intersection/union ``(L, C)`` and overall foreground/background
    intersection/union ``(L, 4)``. ``compute()`` returns

    * ``miou``: mean, over the classes that had an episode, of ``sum(inter_c) / sum(union_c)`` (the standard
      Pascal-5i mIoU); a class whose union is empty in a row (empty truth, nothing predicted) scores 1 there.
      Which classes count depends on the episodes only, never on any row's predictions, so each row's result
      equals that row computed alone;
    * ``fbiou``: mean of foreground IoU and background IoU accumulated over all episodes.

    Example:
        >>> m = FewShotSegmentation(num_layers=1, num_classes=2, upsample="nearest")
        >>> mask = torch.zeros(8, 8, dtype=torch.bool); mask[2:6, 2:6] = True
        >>> feats = torch.stack([mask.float(), (~mask).float()], -1)[None]  # (1, 8, 8, 2)
        >>> m.update([feats] * 2, [mask] * 2, feats, mask, class_id=1)
        >>> float(m.compute()["miou"][0])
        1.0
    """

    plot_keys = ("miou", "fbiou")
    class_stats: Tensor
    class_episodes: Tensor
    fb_stats: Tensor

    def __init__(self, num_layers: int, num_classes: int = 21, c: float = 10.0, balanced: bool = True,
                 upsample: PF.Upsample = "bilinear", layer_names: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        self.num_classes, self.c, self.balanced, self.upsample = num_classes, c, balanced, upsample
        self.add_state("class_stats", torch.zeros(num_layers, num_classes, 2, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_episodes", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fb_stats", torch.zeros(num_layers, 4, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, support_feats: Sequence[Sequence[Tensor] | Tensor], support_masks: Sequence[Tensor],
               query_feats: Sequence[Tensor] | Tensor, query_mask: Tensor, class_id: int,
               support_ignore: Sequence[Tensor | None] | None = None, query_ignore: Tensor | None = None) -> None:
        """One episode. ``support_feats``: k items, each per-layer ``(h, w, D)``; ``query_feats``: per layer."""
        if not 0 <= class_id < self.num_classes:
            raise ValueError(f"class_id {class_id} outside [0, {self.num_classes}); raise num_classes")
        self._check_layers(query_feats, "query_feats")
        for s in support_feats:
            self._check_layers(s, "support_feats item")
        size = (query_mask.shape[0], query_mask.shape[1])
        for layer in range(self.num_layers):
            pred = PF.fewshot_segment([s[layer] for s in support_feats], support_masks, query_feats[layer], size,
                                      support_ignore=support_ignore, c=self.c, balanced=self.balanced,
                                      mode=self.upsample)
            st = PF.segmentation_stats(pred, query_mask.to(pred.device), query_ignore).to(self.fb_stats.device)
            self.fb_stats[layer] += st
            self.class_stats[layer, class_id] += st[:2]
        self.class_episodes[class_id] += 1

    def compute(self) -> dict[str, Tensor]:
        miou = class_miou(self.class_stats, self.class_episodes)
        fg = safe_div(self.fb_stats[:, 0], self.fb_stats[:, 1])
        bg = safe_div(self.fb_stats[:, 2], self.fb_stats[:, 3])
        return {"miou": miou.float(), "fbiou": ((fg + bg) / 2).float()}


class CoSegmentation(LayerwiseMetric):
    """Co-segmentation of image groups (MSRC protocol), per layer.

    Each ``update`` is one group; :func:`~vkvtrain.probes.functional.cosegment` clusters the group's
    tokens and keeps the common clusters. ``compute()`` returns the standard MSRC scores averaged over
    images: ``jaccard`` (foreground IoU, 1 when prediction and truth are both empty) and ``precision``
    (fraction of correctly labelled pixels). States: per-layer sums ``(L,)`` and the image count.
    """

    plot_keys = ("jaccard", "precision")
    jaccard_sum: Tensor
    precision_sum: Tensor
    count: Tensor

    def __init__(self, num_layers: int, k: int = 4, min_share: float = 0.05, min_image_frac: float = 0.5,
                 border_prior: bool = True, seed: int = 0, upsample: PF.Upsample = "bilinear",
                 layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        self.upsample = upsample
        self.k, self.min_share, self.min_image_frac = k, min_share, min_image_frac
        self.border_prior, self.seed = border_prior, seed
        self.add_state("jaccard_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("precision_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, group_feats: Sequence[Sequence[Tensor] | Tensor], masks: Sequence[Tensor]) -> None:
        """One group: ``group_feats`` n items, each per-layer ``(h, w, D)``; ``masks`` n ``(H, W)`` bool."""
        if len(group_feats) != len(masks) or len(masks) < 2:
            raise ValueError("a co-segmentation group needs >= 2 images with one mask each")
        for g in group_feats:
            self._check_layers(g, "group_feats item")
        for layer in range(self.num_layers):
            scores = PF.cosegment([g[layer] for g in group_feats], k=self.k, min_share=self.min_share,
                                  min_image_frac=self.min_image_frac, border_prior=self.border_prior, seed=self.seed)
            for sc, m in zip(scores, masks):
                pred = PF.scores_to_mask(sc, (m.shape[0], m.shape[1]), mode=self.upsample).cpu()
                m = m.bool().cpu()
                self.jaccard_sum[layer] += PF.davis_j(pred, m)
                self.precision_sum[layer] += float((pred == m).float().mean())
        self.count += len(masks)

    def compute(self) -> dict[str, Tensor]:
        return {"jaccard": safe_div(self.jaccard_sum, self.count).float(),
                "precision": safe_div(self.precision_sum, self.count).float()}


class TextGroundedSegmentation(LayerwiseMetric):
    """Text-grounded segmentation (ImageNet-S semantic / RefCOCO referring), per layer.

    The value of the text's last token at a layer is dotted with that layer's image values
    (:func:`~vkvtrain.probes.functional.text_grounding_scores`) and thresholded by
    :func:`~vkvtrain.probes.functional.grounded_mask`. ``compute()`` returns

    * ``miou``: with ``num_classes`` (semantic), the mean over the classes that had a sample of accumulated
      class IoU (1 for a class whose union is empty in that row, as in :class:`FewShotSegmentation`);
      without (referring), the mean of per-expression IoU (1 for an expression with an empty union);
    * ``ciou``: cumulative IoU, ``sum(inter) / sum(union)`` over all samples (RefCOCO's cIoU).
    """

    plot_keys = ("miou", "ciou")
    iou_sum: Tensor
    totals: Tensor
    count: Tensor
    class_stats: Tensor
    class_samples: Tensor

    def __init__(self, num_layers: int, num_classes: int | None = None,
                 threshold: float | Literal["mean"] = 0.5, upsample: PF.Upsample = "bilinear",
                 layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        self.num_classes, self.threshold, self.upsample = num_classes, threshold, upsample
        self.add_state("iou_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("totals", torch.zeros(num_layers, 2, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_stats", torch.zeros(num_layers, num_classes or 1, 2, dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("class_samples", torch.zeros(num_classes or 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, text_values: Sequence[Tensor] | Tensor, image_values: Sequence[Tensor] | Tensor,
               mask: Tensor, class_id: int | None = None, ignore: Tensor | None = None) -> None:
        """One sample: ``text_values`` per layer ``(D,)``, ``image_values`` per layer ``(h, w, D)``."""
        self._check_layers(text_values, "text_values")
        self._check_layers(image_values, "image_values")
        if self.num_classes is not None and (class_id is None or not 0 <= class_id < self.num_classes):
            raise ValueError(f"semantic mode needs class_id in [0, {self.num_classes}), got {class_id}")
        size = (mask.shape[0], mask.shape[1])
        for layer in range(self.num_layers):
            scores = PF.text_grounding_scores(text_values[layer], image_values[layer])
            pred = PF.grounded_mask(scores, size, self.threshold, self.upsample)
            st = PF.segmentation_stats(pred, mask.to(pred.device), ignore).to(self.totals.device)
            self.totals[layer] += st[:2]
            self.iou_sum[layer] += 1.0 if st[1] == 0 else float(st[0]) / float(st[1])
            if class_id is not None and self.num_classes is not None:
                self.class_stats[layer, class_id] += st[:2]
        if class_id is not None and self.num_classes is not None:
            self.class_samples[class_id] += 1
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        ciou = safe_div(self.totals[:, 0], self.totals[:, 1])
        if self.num_classes is not None:
            miou = class_miou(self.class_stats, self.class_samples)
        else:
            miou = safe_div(self.iou_sum, self.count)
        return {"miou": miou.float(), "ciou": ciou.float()}
