"""Correspondence probes: semantic keypoints (SPair-71k protocol) and temporal (DAVIS-2017 protocol)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from vkvtrain.probes import functional as PF
from vkvtrain.probes.base import LayerwiseMetric, safe_div


class KeypointCorrespondence(LayerwiseMetric):
    """PCK@alpha of nearest-neighbour keypoint transfer, per layer.

    Each ``update`` is one image pair; every source keypoint is transferred with
    :func:`~vkvtrain.probes.functional.transfer_keypoints` and counted correct when within
    ``alpha * ref_size`` pixels of the target keypoint, ``ref_size`` being the max side of the target
    object's bounding box (SPair-71k's PCK@0.1_bbox) or of the target image (``normalize="image"``).
    States: correct counts ``(L,)`` and the keypoint count.
    """

    plot_keys = ("pck",)
    correct: Tensor
    total: Tensor

    def __init__(self, num_layers: int, alpha: float = 0.1, normalize: str = "bbox",
                 layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        if normalize not in ("bbox", "image"):
            raise ValueError(f"normalize must be 'bbox' or 'image', got {normalize!r}")
        self.alpha, self.normalize = alpha, normalize
        self.add_state("correct", torch.zeros(num_layers, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, src_feats: Sequence[Tensor] | Tensor, trg_feats: Sequence[Tensor] | Tensor,
               src_kps: Tensor, trg_kps: Tensor, src_size: tuple[int, int], trg_size: tuple[int, int],
               trg_bbox: Sequence[float] | Tensor | None = None, valid: Tensor | None = None) -> None:
        """``src_kps``/``trg_kps`` ``(K, 2)`` pixel ``(x, y)``; sizes ``(H, W)``; ``trg_bbox`` ``(x0, y0, x1, y1)``."""
        self._check_layers(src_feats, "src_feats")
        self._check_layers(trg_feats, "trg_feats")
        if src_kps.shape != trg_kps.shape:
            raise ValueError(f"src_kps {tuple(src_kps.shape)} and trg_kps {tuple(trg_kps.shape)} differ")
        if self.normalize == "bbox":
            if trg_bbox is None:
                raise ValueError("normalize='bbox' needs trg_bbox; pass it or use normalize='image'")
            b = torch.as_tensor(trg_bbox, dtype=torch.float32)
            ref = float(torch.maximum(b[2] - b[0], b[3] - b[1]))
        else:
            ref = float(max(trg_size))
        keep = torch.ones(src_kps.shape[0], dtype=torch.bool) if valid is None else valid.bool().cpu()
        src_kps, trg_kps = src_kps[keep], trg_kps[keep]
        for layer in range(self.num_layers):
            pred = PF.transfer_keypoints(src_feats[layer], trg_feats[layer], src_kps, src_size, trg_size)
            self.correct[layer] += int(PF.pck_correct(pred, trg_kps, self.alpha, ref).sum())
        self.total += int(keep.sum())

    def compute(self) -> dict[str, Tensor]:
        return {"pck": safe_div(self.correct, self.total).float()}


class TemporalCorrespondence(LayerwiseMetric):
    """Video label propagation scored with DAVIS J&F, per layer: DINO's reference protocol.

    Each ``update`` is one clip, evaluated as facebookresearch/dino's ``eval_video_segmentation.py`` does with
    its defaults: the first mask is resized to the token grid by nearest neighbour and one-hot encoded
    (:func:`~vkvtrain.probes.functional.first_frame_labels`); labels are propagated with L2-normalised
    features, a ``neighborhood`` (12) token window, the ``topk`` (5) strongest affinities
    ``exp(cosine / temperature)`` (0.1) and a context of the first frame plus the ``n_last_frames`` (7)
    previous predictions (:func:`~vkvtrain.probes.functional.propagate_labels`); each frame's label
    distribution is upsampled bilinearly by ``patch_size``, min-max normalised per label, arg-maxed and
    resized to the mask by nearest neighbour (:func:`~vkvtrain.probes.functional.labels_to_mask`).
    ``patch_size=None`` uses, per axis, ``round(mask side / grid side)`` (16 on DAVIS 480p with a /16 ViT, as
    DINO). Per object, J (:func:`davis_j`) and F (:func:`davis_f`) are averaged over the evaluated frames --
    all but the first and, as davis2017-evaluation does, the last (``skip_last=True``); ``compute()``
    averages over objects (the DAVIS "J&F-Mean"). States: per-layer J and F sums ``(L,)`` and the object count.
    """

    plot_keys = ("j", "f", "jf")
    j_sum: Tensor
    f_sum: Tensor
    objects: Tensor

    def __init__(self, num_layers: int, n_last_frames: int = 7, topk: int = 5, temperature: float = 0.1,
                 neighborhood: int = 12, patch_size: int | None = None, bound_th: float = 0.008,
                 skip_last: bool = True, layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        if n_last_frames < 0 or topk < 1 or neighborhood < 0 or (patch_size is not None and patch_size < 1):
            raise ValueError(f"need n_last_frames >= 0, topk >= 1, neighborhood >= 0 and patch_size >= 1 (or None); "
                             f"got {n_last_frames}, {topk}, {neighborhood}, {patch_size}")
        if temperature < PF.MIN_TEMPERATURE:
            raise ValueError(f"temperature must be >= {PF.MIN_TEMPERATURE:.4f}, got {temperature}")
        self.n_last_frames, self.topk, self.temperature = n_last_frames, topk, temperature
        self.neighborhood, self.patch_size = neighborhood, patch_size
        self.bound_th, self.skip_last = bound_th, skip_last
        self.add_state("j_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("objects", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _scale(self, grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
        if self.patch_size is not None:
            return self.patch_size, self.patch_size
        return max(1, round(size[0] / grid[0])), max(1, round(size[1] / grid[1]))

    def update(self, frame_feats: Sequence[Sequence[Tensor] | Tensor], masks: Tensor) -> None:
        """``frame_feats`` T items, each per-layer ``(h, w, D)``; ``masks`` ``(T, H, W)`` long (0 = background)."""
        t_len = masks.shape[0]
        if len(frame_feats) != t_len or t_len < 2:
            raise ValueError(f"need >= 2 frames and one mask per frame, got {len(frame_feats)} feats, {t_len} masks")
        for f in frame_feats:
            self._check_layers(f, "frame_feats item")
        masks = masks.long().cpu()
        obj_ids = [int(o) for o in torch.unique(masks[0]) if o != 0]
        if not obj_ids:
            raise ValueError("the first frame's mask holds no object (all zeros)")
        n_labels = max(obj_ids) + 1
        frames = list(range(1, t_len - 1)) if (self.skip_last and t_len > 2) else list(range(1, t_len))
        size = (masks.shape[1], masks.shape[2])
        for layer in range(self.num_layers):
            feats = [f[layer] for f in frame_feats]
            grid = (feats[0].shape[0], feats[0].shape[1])
            first = PF.first_frame_labels(masks[0], grid, n_labels).to(feats[0].device)
            probs = PF.propagate_labels(feats, first, self.n_last_frames, self.topk, self.temperature,
                                        self.neighborhood)
            preds = {t: PF.labels_to_mask(probs[t], size, self._scale(grid, size)) for t in frames}
            for o in obj_ids:
                js = [PF.davis_j(preds[t] == o, masks[t] == o) for t in frames]
                fs = [PF.davis_f(preds[t] == o, masks[t] == o, self.bound_th) for t in frames]
                self.j_sum[layer] += sum(js) / len(js)
                self.f_sum[layer] += sum(fs) / len(fs)
        self.objects += len(obj_ids)

    def compute(self) -> dict[str, Tensor]:
        j = safe_div(self.j_sum, self.objects)
        f = safe_div(self.f_sum, self.objects)
        return {"j": j.float(), "f": f.float(), "jf": ((j + f) / 2).float()}
