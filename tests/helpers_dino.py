"""A direct port of DINO's reference video-segmentation evaluation, the oracle of the temporal probe.

facebookresearch/dino, eval_video_segmentation.py (commit 7c446df): ``restrict_neighborhood``,
``norm_mask``, ``label_propagation``, ``to_one_hot``, ``read_seg``'s label resize and the loop of
``eval_video_tracking_davis``, with the model replaced by given per-frame token features and ``.cuda()``
dropped. Line for line the reference, so the probe can be compared against it on random features.
"""

from __future__ import annotations

import copy
import queue
from argparse import Namespace

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F


def restrict_neighborhood(args: Namespace, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * args.size_mask_neighborhood + 1):
                for q in range(2 * args.size_mask_neighborhood + 1):
                    if i - args.size_mask_neighborhood + p < 0 or i - args.size_mask_neighborhood + p >= h:
                        continue
                    if j - args.size_mask_neighborhood + q < 0 or j - args.size_mask_neighborhood + q >= w:
                        continue
                    mask[i, j, i - args.size_mask_neighborhood + p, j - args.size_mask_neighborhood + q] = 1
    return mask.reshape(h * w, h * w)


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    c, h, w = mask.size()
    for cnt in range(c):
        mask_cnt = mask[cnt, :, :]
        if mask_cnt.max() > 0:
            mask_cnt = mask_cnt - mask_cnt.min()
            mask_cnt = mask_cnt / mask_cnt.max()
            mask[cnt, :, :] = mask_cnt
    return mask


def label_propagation(args, feat_tar, h, w, list_frame_feats, list_segs, mask_neighborhood=None):
    """``feat_tar`` (h*w, dim) stands in for ``extract_feature(model, frame_tar)``."""
    return_feat_tar = feat_tar.T  # dim x h*w
    ncontext = len(list_frame_feats)
    feat_sources = torch.stack(list_frame_feats)  # nmb_context x dim x h*w
    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_sources = F.normalize(feat_sources, dim=1, p=2)
    feat_tar = feat_tar.unsqueeze(0).repeat(ncontext, 1, 1)
    aff = torch.exp(torch.bmm(feat_tar, feat_sources) / 0.1)
    if args.size_mask_neighborhood > 0:
        if mask_neighborhood is None:
            mask_neighborhood = restrict_neighborhood(args, h, w)
            mask_neighborhood = mask_neighborhood.unsqueeze(0).repeat(ncontext, 1, 1)
        aff *= mask_neighborhood
    aff = aff.transpose(2, 1).reshape(-1, h * w)
    tk_val, _ = torch.topk(aff, dim=0, k=args.topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    segs = torch.cat(list_segs)
    nmb_context, C, h, w = segs.shape
    segs = segs.reshape(nmb_context, C, -1).transpose(2, 1).reshape(-1, C).T
    seg_tar = torch.mm(segs, aff)
    seg_tar = seg_tar.reshape(1, C, h, w)
    return seg_tar, return_feat_tar, mask_neighborhood


def to_one_hot(y_tensor, n_dims=None):
    if n_dims is None:
        n_dims = int(y_tensor.max() + 1)
    _, h, w = y_tensor.size()
    y_tensor = y_tensor.type(torch.LongTensor).view(-1, 1)
    n_dims = n_dims if n_dims is not None else int(torch.max(y_tensor)) + 1
    y_one_hot = torch.zeros(y_tensor.size()[0], n_dims).scatter_(1, y_tensor, 1)
    y_one_hot = y_one_hot.view(h, w, n_dims)
    return y_one_hot.permute(2, 0, 1).unsqueeze(0)


def read_seg(seg_array: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """``read_seg``'s small one-hot seg, the resize target being the token grid ``(h, w)``."""
    seg = Image.fromarray(seg_array.astype(np.uint8))
    small_seg = np.array(seg.resize((grid[1], grid[0]), 0))
    small_seg = torch.from_numpy(small_seg.copy()).contiguous().float().unsqueeze(0)
    return to_one_hot(small_seg)


def eval_video_tracking(args: Namespace, frame_feats: list[torch.Tensor], first_mask: np.ndarray,
                        ori_size: tuple[int, int]) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The loop of ``eval_video_tracking_davis``; ``frame_feats`` (h, w, dim) per frame. Returns the propagated
    token label maps (1, C, h, w) and the written label maps (ori_h, ori_w) of frames 1..T-1."""
    h, w = frame_feats[0].shape[:2]
    feats = [f.reshape(h * w, -1) for f in frame_feats]
    first_seg = read_seg(first_mask, (h, w))
    que: queue.Queue = queue.Queue(args.n_last_frames)
    frame1_feat = feats[0].T  # dim x h*w
    mask_neighborhood = None
    token_maps, written = [], []
    for cnt in range(1, len(feats)):
        used_frame_feats = [frame1_feat] + [pair[0] for pair in list(que.queue)]
        used_segs = [first_seg] + [pair[1] for pair in list(que.queue)]
        frame_tar_avg, feat_tar, mask_neighborhood = label_propagation(args, feats[cnt], h, w, used_frame_feats,
                                                                       used_segs, mask_neighborhood)
        if que.qsize() == args.n_last_frames:
            que.get()
        seg = copy.deepcopy(frame_tar_avg)
        que.put([feat_tar, seg])
        token_maps.append(seg)
        frame_tar_avg = F.interpolate(frame_tar_avg, scale_factor=args.patch_size, mode='bilinear',
                                      align_corners=False, recompute_scale_factor=False)[0]
        frame_tar_avg = norm_mask(frame_tar_avg)
        _, frame_tar_seg = torch.max(frame_tar_avg, dim=0)
        frame_tar_seg = np.array(frame_tar_seg.squeeze().cpu(), dtype=np.uint8)
        frame_tar_seg = np.array(Image.fromarray(frame_tar_seg).resize((ori_size[1], ori_size[0]), 0))
        written.append(frame_tar_seg)
    return token_maps, written
