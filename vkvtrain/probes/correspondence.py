"""Correspondence probes: semantic keypoints (SPair-71k protocol) and temporal (DAVIS-2017 protocol)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
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
    """Video label propagation scored with DAVIS J&F, per layer.

    Each ``update`` is one clip: first-frame labels (area-averaged one-hot of the first mask) are
    propagated by :func:`~vkvtrain.probes.functional.propagate_labels`; each frame's label distribution is
    upsampled bilinearly to the mask size and arg-maxed. Per object, J (:func:`davis_j`) and F
    (:func:`davis_f`) are averaged over the evaluated frames -- all but the first and, as the
    davis2017-evaluation code does, the last (``skip_last=True``); ``compute()`` averages over objects
    (the DAVIS "J&F-Mean"). States: per-layer J and F sums ``(L,)`` and the object count.
    """

    plot_keys = ("j", "f", "jf")

    def __init__(self, num_layers: int, n_context: int = 7, topk: int = 5, temperature: float = 0.07,
                 bound_th: float = 0.008, skip_last: bool = True, upsample: PF.Upsample = "bilinear",
                 layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        self.upsample = upsample
        self.n_context, self.topk, self.temperature = n_context, topk, temperature
        self.bound_th, self.skip_last = bound_th, skip_last
        self.add_state("j_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f_sum", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("objects", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

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
        n_cls = max(obj_ids) + 1
        frames = list(range(1, t_len - 1)) if (self.skip_last and t_len > 2) else list(range(1, t_len))
        size = (masks.shape[1], masks.shape[2])
        for layer in range(self.num_layers):
            feats = [f[layer] for f in frame_feats]
            grid = (feats[0].shape[0], feats[0].shape[1])
            first = PF.downsample_mask(F.one_hot(masks[0], n_cls).permute(2, 0, 1).to(feats[0].device), grid)
            probs = PF.propagate_labels(feats, first, self.n_context, self.topk, self.temperature)
            for o in obj_ids:
                js, fs = [], []
                for t in frames:
                    pred = (PF.upsample_scores(probs[t], size, self.upsample).argmax(0) == o).cpu()
                    gt = masks[t] == o
                    js.append(PF.davis_j(pred, gt))
                    fs.append(PF.davis_f(pred, gt, self.bound_th))
                self.j_sum[layer] += sum(js) / len(js)
                self.f_sum[layer] += sum(fs) / len(fs)
        self.objects += len(obj_ids)

    def compute(self) -> dict[str, Tensor]:
        j = safe_div(self.j_sum, self.objects)
        f = safe_div(self.f_sum, self.objects)
        return {"j": j.float(), "f": f.float(), "jf": ((j + f) / 2).float()}
