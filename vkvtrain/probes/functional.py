"""Functional cores of the probes: plain tensor math shared by the stateful metrics.

Every function works on torch tensors on any device and keeps no state. Conventions used throughout:

* a token grid of features is ``(h, w, D)``; a mask is ``(H, W)`` bool at image resolution;
* token -> pixel: token scores in ``[0, 1]`` (or per-class probabilities) are upsampled to the mask size
  with bilinear interpolation (``align_corners=False``; ``"nearest"`` on request), then thresholded at
  0.5 (binary tasks) or arg-maxed (multi-label tasks) by :func:`upsample_scores`; the temporal probe alone
  follows DINO's reference rules instead (:func:`first_frame_labels`, :func:`labels_to_mask`);
* pixel -> token: a mask is area-averaged onto the grid (:func:`downsample_mask`), giving for every token
  the fraction of its pixels that are foreground; a token is foreground when that fraction is >= 0.5.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "downsample_mask",
    "upsample_scores",
    "scores_to_mask",
    "segmentation_stats",
    "fit_logistic_regression",
    "foreground_fraction",
    "fewshot_segment",
    "kmeans",
    "cosegment",
    "text_grounding_scores",
    "grounded_mask",
    "token_centers",
    "keypoints_to_tokens",
    "transfer_keypoints",
    "pck_correct",
    "first_frame_labels",
    "neighborhood_mask",
    "propagate_labels",
    "labels_to_mask",
    "davis_j",
    "davis_f",
    "seg2bmap",
    "key_moments",
    "agnosticism_from_moments",
    "input_agnosticism",
    "flag_positions",
]


# --------------------------------------------------------------------------------------- resolution
def downsample_mask(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Area-average a mask onto a token grid.

    Args:
        mask: ``(H, W)`` bool/float, or ``(C, H, W)`` for several channels.
        grid: ``(h, w)`` token grid.
    Returns:
        ``(h, w)`` (or ``(C, h, w)``) float in ``[0, 1]``: the foreground fraction of each token's pixels.
    """
    x = mask.float()
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    out = F.adaptive_avg_pool2d(x[None], grid)[0]
    return out[0] if squeeze else out


Upsample = Literal["bilinear", "nearest"]


def upsample_scores(scores: Tensor, size: tuple[int, int], mode: Upsample = "bilinear") -> Tensor:
    """Upsample token scores ``(h, w)`` or ``(C, h, w)`` to ``size=(H, W)``.

    ``mode="bilinear"`` (default, ``align_corners=False``) smooths token borders (the corners of a
    token-aligned box are rounded off); ``"nearest"`` replicates each token over its pixels exactly.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"upsample mode must be 'bilinear' or 'nearest', got {mode!r}")
    x = scores.float()
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(x[None], size=size, mode=mode, **kw)[0]
    return out[0] if squeeze else out


def scores_to_mask(scores: Tensor, size: tuple[int, int], threshold: float = 0.5,
                   mode: Upsample = "bilinear") -> Tensor:
    """Token scores ``(h, w)`` in ``[0, 1]`` -> ``(H, W)`` bool mask (upsampling, then ``>= threshold``)."""
    return upsample_scores(scores, size, mode) >= threshold


def segmentation_stats(pred: Tensor, target: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Intersection and union of foreground and background.

    Args:
        pred, target: ``(H, W)`` bool.
        ignore: optional ``(H, W)`` bool; those pixels are left out (e.g. VOC's 255 border).
    Returns:
        ``(4,)`` long: ``[inter_fg, union_fg, inter_bg, union_bg]`` pixel counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    p, t = pred.bool(), target.bool().to(pred.device)
    keep = torch.ones_like(p) if ignore is None else ~ignore.bool().to(pred.device)
    i_fg = (p & t & keep).sum()
    u_fg = ((p | t) & keep).sum()
    i_bg = (~p & ~t & keep).sum()
    u_bg = ((~p | ~t) & keep).sum()
    return torch.stack([i_fg, u_fg, i_bg, u_bg]).long()


# ------------------------------------------------------------------------------ few-shot segmentation
def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    c: float = 1.0,
    balanced: bool = True,
    max_iter: int = 100,
    method: Literal["auto", "newton", "lbfgs"] = "auto",
) -> tuple[Tensor, Tensor]:
    """Binary L2-regularised logistic regression, fitted in float64.

    Minimises ``c * sum_i s_i * logloss(x_i, y_i) + 0.5 * ||w||^2`` (bias not penalised), the same
    objective as scikit-learn's ``LogisticRegression(C=c, class_weight='balanced' if balanced else None)``;
    ``s_i = n / (2 * n_{y_i})`` when ``balanced`` else 1.

    ``method="newton"`` takes exact Newton steps (Cholesky of the ``(D+1, D+1)`` Hessian, backtracking line
    search): a handful of iterations, each one ``n * D^2`` matmul. ``"lbfgs"`` uses L-BFGS with a strong
    Wolfe line search: cheap per step but many small steps. ``"auto"`` picks Newton up to
    ``D = NEWTON_MAX_DIM`` (every key/value row of the supported models) and L-BFGS above it.

    Args:
        x: ``(n, D)`` features. y: ``(n,)`` labels in {0, 1}.
    Returns:
        ``(w (D,), b ())`` in float32 on x's device; decision function ``x @ w + b``.
    """
    if x.dim() != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"expected x (n, D) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if method not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"method {method!r} is unknown; use 'auto', 'newton' or 'lbfgs'")
    xd, yd = x.detach().double(), y.detach().double()
    n, n_pos = yd.numel(), float(yd.sum())
    if n_pos in (0.0, float(n)):
        # One class only: a constant classifier is the optimum of the unpenalised bias.
        sign = 1.0 if n_pos == n else -1.0
        return torch.zeros(x.shape[1], device=x.device), torch.tensor(sign * 10.0, device=x.device)
    weights = torch.ones_like(yd)
    if balanced:
        weights = torch.where(yd > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
    xb = torch.cat([xd, torch.ones_like(xd[:, :1])], dim=1)  # (n, D+1): a ones column carries the bias
    if method == "newton" or (method == "auto" and x.shape[1] <= NEWTON_MAX_DIM):
        params = _logreg_newton(xb, yd, c * weights, max_iter)
    else:
        # Works under no_grad / inference_mode too (Lightning validation): L-BFGS needs its own autograd,
        # and the clones are ordinary tensors that autograd may save.
        with torch.inference_mode(False), torch.enable_grad():
            params = _logreg_lbfgs(xb.clone(), yd.clone(), c * weights.clone(), max_iter)
    params = params.float()
    return params[:-1], params[-1]


#: largest feature dimension ``fit_logistic_regression(method="auto")`` fits with Newton steps
NEWTON_MAX_DIM = 1024


def _logreg_objective(xb: Tensor, yd: Tensor, cw: Tensor, params: Tensor) -> Tensor:
    """``sum_i cw_i * logloss_i + 0.5 * ||w||^2`` for ``xb (n, D+1)`` (last column ones), ``params (D+1,)``."""
    logits = xb @ params
    return (cw * F.binary_cross_entropy_with_logits(logits, yd, reduction="none")).sum() \
        + 0.5 * params[:-1].pow(2).sum()


def _logreg_newton(xb: Tensor, yd: Tensor, cw: Tensor, max_iter: int) -> Tensor:
    """Newton's method with Armijo backtracking on ``xb (n, D+1)`` (last column ones); ``(D+1,)`` float64
    parameters (bias last)."""
    penalty = torch.ones(xb.shape[1], dtype=xb.dtype, device=xb.device)
    penalty[-1] = 0.0  # the bias is not penalised
    # The jitter only keeps the Hessian definite should every probability saturate.
    curvature_floor = torch.diag(penalty + 1e-12)
    params = torch.zeros(xb.shape[1], dtype=xb.dtype, device=xb.device)
    loss = _logreg_objective(xb, yd, cw, params)
    for _ in range(max_iter):
        p = torch.sigmoid(xb @ params)
        grad = xb.T @ (cw * (p - yd)) + penalty * params
        if float(grad.abs().max()) < 1e-10:
            break
        hess = (xb.T * (cw * p * (1 - p))) @ xb + curvature_floor
        step = torch.cholesky_solve(-grad[:, None], torch.linalg.cholesky(hess))[:, 0]
        t, slope = 1.0, float(grad @ step)
        while True:
            trial = params + t * step
            trial_loss = _logreg_objective(xb, yd, cw, trial)
            if float(trial_loss) <= float(loss) + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        converged = float(loss - trial_loss) <= 1e-14 * max(1.0, abs(float(loss)))
        params, loss = trial, trial_loss
        if converged:
            break
    return params


def _logreg_lbfgs(xb: Tensor, yd: Tensor, cw: Tensor, max_iter: int) -> Tensor:
    """L-BFGS (strong Wolfe) on ``xb (n, D+1)`` (last column ones); ``(D+1,)`` float64 parameters (bias last)."""
    params = torch.zeros(xb.shape[1], dtype=torch.float64, device=xb.device, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _logreg_objective(xb, yd, cw, params)
        loss.backward()
        return loss

    opt.step(closure)
    return params.detach()


def _l2n(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def foreground_fraction(mask: Tensor, grid: tuple[int, int], ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per token, the foreground share of its non-void pixels, and whether the token is kept.

    Args:
        mask: ``(H, W)`` bool foreground. grid: ``(h, w)``. ignore: optional ``(H, W)`` bool void pixels.
    Returns:
        ``frac (h*w,)`` float in ``[0, 1]``: foreground pixels / non-void pixels of each token (0 for an
        all-void token); ``keep (h*w,)`` bool: at most half of the token's pixels are void.
    """
    if ignore is None:
        frac = downsample_mask(mask, grid).flatten()
        return frac, torch.ones_like(frac, dtype=torch.bool)
    void = ignore.bool()
    valid = downsample_mask(~void, grid).flatten()  # share of non-void pixels
    fg = downsample_mask(mask.bool() & ~void, grid).flatten()
    frac = torch.where(valid > 0, fg / valid.clamp_min(1e-12), torch.zeros_like(fg))
    return frac.clamp(0, 1), valid >= 0.5


def fewshot_segment(
    support_feats: Sequence[Tensor],
    support_masks: Sequence[Tensor],
    query_feats: Tensor,
    out_size: tuple[int, int],
    support_ignore: Sequence[Tensor | None] | None = None,
    c: float = 10.0,
    balanced: bool = True,
    mode: Upsample = "bilinear",
) -> Tensor:
    """k-shot foreground segmentation with a linear classifier on tokens.

    Protocol: tokens are L2-normalised; each support token is labelled foreground when >= 50% of its
    non-void pixels are foreground (:func:`foreground_fraction`), tokens that are > 50% void are dropped, and a
    support image whose object is too small to own a token gives its most-foreground token as the
    positive; a logistic regression (:func:`fit_logistic_regression`) is fitted on all support tokens,
    its probabilities on the query tokens are upsampled to ``out_size`` and thresholded at 0.5.

    Args:
        support_feats: k tensors ``(h_i, w_i, D)``. support_masks: k ``(H_i, W_i)`` bool.
        query_feats: ``(h, w, D)``. out_size: ``(H, W)`` of the query mask.
    Returns:
        ``(H, W)`` bool predicted foreground.
    """
    if len(support_feats) != len(support_masks) or not support_feats:
        raise ValueError("need the same non-zero number of support features and masks")
    xs, ys = [], []
    for i, (f, m) in enumerate(zip(support_feats, support_masks)):
        grid = (f.shape[0], f.shape[1])
        ign = None if support_ignore is None else support_ignore[i]
        frac, keep = foreground_fraction(m.to(f.device), grid, None if ign is None else ign.to(f.device))
        frac, tokens = frac[keep], _l2n(f.reshape(-1, f.shape[-1]))[keep]
        label = frac >= 0.5
        if not label.any() and frac.numel() and frac.max() > 0:
            label = frac == frac.max()
        xs.append(tokens)
        ys.append(label)
    w, b = fit_logistic_regression(torch.cat(xs), torch.cat(ys), c=c, balanced=balanced)
    q = _l2n(query_feats)
    prob = torch.sigmoid(q @ w + b)  # (h, w)
    return scores_to_mask(prob, out_size, mode=mode)


# ----------------------------------------------------------------------------------- co-segmentation
def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (as scikit-learn: ``2 + log k`` candidates per centre, keep the best)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = [x[int(torch.randint(n, (1,), generator=gen))]]
    d2 = (x - centers[0]).pow(2).sum(-1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            cand = torch.multinomial((d2 / total).cpu(), trials, replacement=True, generator=gen)
        cand_d2 = torch.minimum(d2[None], torch.cdist(x[cand.to(x.device)], x).pow(2))  # (trials, n)
        best = int(cand_d2.sum(1).argmin())
        centers.append(x[int(cand[best])])
        d2 = cand_d2[best]
    return torch.stack(centers)


def kmeans(x: Tensor, k: int, n_iter: int = 100, seed: int = 0, n_init: int = 3) -> tuple[Tensor, Tensor]:
    """Deterministic k-means (Lloyd) with greedy k-means++ seeding from a seeded CPU generator.

    ``n_init`` seedings are run; the one with the lowest inertia (sum of squared distances) wins.

    Args:
        x: ``(n, D)``. k: number of clusters (<= n).
    Returns:
        ``labels (n,)`` long and ``centers (k, D)``.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects (n, D), got {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= n, got k={k}, n={n}")
    x = x.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(max(1, n_init)):
        cent = _kmeans_pp(x, k, gen)
        labels = torch.cdist(x, cent).argmin(1)
        for _ in range(n_iter):
            new = torch.zeros_like(cent).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            empty = counts == 0
            new = new / counts.clamp_min(1)[:, None]
            new[empty] = cent[empty]  # an emptied cluster keeps its centre
            cent = new
            new_labels = torch.cdist(x, cent).argmin(1)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float((x - cent[labels]).pow(2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, cent)
    assert best is not None
    return best[1], best[2]


def _border(grid: tuple[int, int], device: torch.device) -> Tensor:
    h, w = grid
    b = torch.zeros(h, w, dtype=torch.bool, device=device)
    b[0, :] = b[-1, :] = True
    b[:, 0] = b[:, -1] = True
    return b.flatten()


def cosegment(
    group_feats: Sequence[Tensor],
    k: int = 4,
    min_share: float = 0.05,
    min_image_frac: float = 0.5,
    border_prior: bool = True,
    seed: int = 0,
) -> list[Tensor]:
    """Co-segment a group of images by clustering their tokens jointly.

    Protocol: the L2-normalised tokens of all images are clustered by :func:`kmeans` (``k`` clusters). A
    cluster is *common* when it covers >= ``min_share`` of an image's tokens in >= ``min_image_frac`` of
    the images. With ``border_prior`` the common clusters that touch the grid border no more often than
    chance (their share of border tokens <= the border's share of all tokens) are foreground -- background
    fills the frame's edges; if none qualifies, the common cluster with the smallest border share is kept.
    Without it every common cluster is foreground.

    Args:
        group_feats: n tensors ``(h_i, w_i, D)``.
    Returns:
        n token-level foreground scores ``(h_i, w_i)`` float in {0, 1}; see :func:`scores_to_mask`.
    """
    grids = [(f.shape[0], f.shape[1]) for f in group_feats]
    flat = [_l2n(f.reshape(-1, f.shape[-1])) for f in group_feats]
    x = torch.cat(flat)
    k = min(k, x.shape[0])
    labels, _ = kmeans(x, k, seed=seed)
    per_image = list(labels.split([f.shape[0] for f in flat]))
    shares = torch.stack([torch.bincount(lab, minlength=k).float() / lab.numel() for lab in per_image])
    present = (shares >= min_share).float().mean(0)  # (k,) fraction of images holding the cluster
    common = present >= min_image_frac
    if not common.any():
        common = present == present.max()
    keep = common
    if border_prior:
        border = torch.cat([_border(g, x.device) for g in grids])
        counts = torch.bincount(labels, minlength=k).float()
        on_border = torch.bincount(labels[border], minlength=k).float()
        ratio = on_border / counts.clamp_min(1)
        chance = border.float().mean()
        keep = common & (ratio <= chance)
        if not keep.any():
            masked = torch.where(common, ratio, torch.full_like(ratio, float("inf")))
            keep = masked == masked.min()
    return [keep[lab].float().reshape(g) for lab, g in zip(per_image, grids)]


# ------------------------------------------------------------------------- text-grounded segmentation
def text_grounding_scores(text_value: Tensor, image_values: Tensor) -> Tensor:
    """Dot product of the text's last-token value ``(D,)`` with image values ``(h, w, D)`` -> ``(h, w)``."""
    if text_value.shape[-1] != image_values.shape[-1]:
        raise ValueError(f"text value dim {text_value.shape[-1]} != image value dim {image_values.shape[-1]}")
    return image_values.float() @ text_value.float()


def grounded_mask(
    scores: Tensor, out_size: tuple[int, int], threshold: float | Literal["mean"] = 0.5,
    mode: Upsample = "bilinear",
) -> Tensor:
    """Threshold rule for text-grounded masks.

    The ``(h, w)`` scores are min-max normalised over the image's tokens to ``[0, 1]`` (a constant map
    gives all zeros), upsampled bilinearly to ``out_size``; a pixel is foreground when its normalised
    score is ``>= threshold`` (a float) or, with ``threshold="mean"``, above the normalised token mean.

    Returns:
        ``(H, W)`` bool.
    """
    s = scores.float()
    lo, hi = s.min(), s.max()
    norm = (s - lo) / (hi - lo) if hi > lo else torch.zeros_like(s)
    up = upsample_scores(norm, out_size, mode)
    if threshold == "mean":
        return up > norm.mean()
    return up >= float(threshold)


# -------------------------------------------------------------------------- keypoint correspondence
def token_centers(grid: tuple[int, int], image_size: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Pixel ``(x, y)`` centres of the tokens of a ``(h, w)`` grid over an image of ``(H, W)`` -> ``(h*w, 2)``."""
    h, w = grid
    big_h, big_w = image_size
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * big_h / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * big_w / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1)


def keypoints_to_tokens(kps: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Flat token index holding each pixel keypoint ``(K, 2)`` as ``(x, y)`` -> ``(K,)`` long."""
    h, w = grid
    big_h, big_w = image_size
    col = (kps[:, 0].float() * w / big_w).floor().long().clamp(0, w - 1)
    row = (kps[:, 1].float() * h / big_h).floor().long().clamp(0, h - 1)
    return row * w + col


def transfer_keypoints(
    src_feats: Tensor,
    trg_feats: Tensor,
    src_kps: Tensor,
    src_size: tuple[int, int],
    trg_size: tuple[int, int],
) -> Tensor:
    """Nearest-neighbour keypoint transfer.

    The source keypoint's token (the grid cell holding it) is compared by cosine similarity with every
    target token; the prediction is the pixel centre of the most similar target token.

    Args:
        src_feats ``(h1, w1, D)``, trg_feats ``(h2, w2, D)``, src_kps ``(K, 2)`` pixel ``(x, y)``;
        sizes are ``(H, W)``.
    Returns:
        ``(K, 2)`` predicted target pixel ``(x, y)``.
    """
    sg, tg = (src_feats.shape[0], src_feats.shape[1]), (trg_feats.shape[0], trg_feats.shape[1])
    idx = keypoints_to_tokens(src_kps.to(src_feats.device), sg, src_size)
    q = _l2n(src_feats.reshape(-1, src_feats.shape[-1])[idx])  # (K, D)
    t = _l2n(trg_feats.reshape(-1, trg_feats.shape[-1]))  # (N, D)
    nn_idx = (q @ t.T).argmax(-1)
    return token_centers(tg, trg_size, device=src_feats.device)[nn_idx]


def pck_correct(pred: Tensor, gt: Tensor, alpha: float, ref_size: float | Tensor) -> Tensor:
    """``(K,)`` bool: ``||pred - gt||_2 <= alpha * ref_size`` (``ref_size``: max bbox side or max image side)."""
    return (pred.float() - gt.float().to(pred.device)).norm(dim=-1) <= alpha * ref_size


# ------------------------------------------------------------------------- temporal correspondence
# The protocol of DINO's reference video-segmentation evaluation (facebookresearch/dino,
# eval_video_segmentation.py: read_seg, restrict_neighborhood, label_propagation, norm_mask and the loop of
# eval_video_tracking_davis), with its defaults: n_last_frames=7, size_mask_neighborhood=12, topk=5 and the
# affinity temperature 0.1 written into label_propagation.
def first_frame_labels(mask: Tensor, grid: tuple[int, int], num_labels: int) -> Tensor:
    """One-hot labels of the first frame on the token grid, as DINO's ``read_seg``.

    The label map is resized to the grid with PIL's nearest-neighbour rule (not area-averaged), then
    one-hot encoded.

    Args:
        mask: ``(H, W)`` integer labels (0 = background, 1.. objects), all ``< num_labels <= 256``.
        grid: ``(h, w)`` token grid. num_labels: one-hot size (background + objects).
    Returns:
        ``(num_labels, h, w)`` float in {0, 1}.
    """
    if not 0 < num_labels <= 256:
        raise ValueError(f"num_labels must be in 1..256 (labels are resized as an 8-bit image), got {num_labels}")
    small = Image.fromarray(mask.to("cpu", torch.uint8).numpy()).resize((grid[1], grid[0]), Image.Resampling.NEAREST)
    labels = torch.from_numpy(np.array(small)).long().to(mask.device)
    return F.one_hot(labels, num_labels).permute(2, 0, 1).float()


def neighborhood_mask(grid: tuple[int, int], radius: int, device: torch.device | None = None) -> Tensor:
    """``(h*w, h*w)`` float: 1 where the source token lies within ``radius`` rows and columns of the query token
    (DINO's ``restrict_neighborhood``; query index first)."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    return near.float()


#: smallest affinity temperature whose ``exp(1 / temperature)`` stays finite in float32
MIN_TEMPERATURE = 1 / 88.0


def propagate_labels(
    frame_feats: Sequence[Tensor],
    first_labels: Tensor,
    n_last_frames: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    neighborhood: int = 12,
) -> list[Tensor]:
    """Propagate first-frame labels through a clip by token affinity (DINO's ``label_propagation`` loop).

    Frame ``t`` reads a context of the first frame (its true labels) and the ``n_last_frames`` previous frames
    (their propagated label distributions). Tokens are L2-normalised; the affinity of a target token to a
    context token is ``exp(cosine / temperature)``, set to 0 outside a ``(2 * neighborhood + 1)``-token square
    around the target's position (``neighborhood <= 0``: no window); per target token the ``topk`` largest
    affinities over all context frames together are kept (ties with the k-th are kept too), normalised to sum
    to 1, and the context labels averaged with those weights.

    Args:
        frame_feats: T tensors ``(h, w, D)`` (same grid).
        first_labels: ``(C, h, w)`` label distribution of frame 0 (:func:`first_frame_labels`).
    Returns:
        T tensors ``(C, h, w)``: label distributions (frame 0 is ``first_labels``), not normalised further.
    """
    c, h, w = first_labels.shape
    if temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE:.4f} (exp(1/temperature) overflows float32), "
                         f"got {temperature}")
    n = h * w
    feats = [f.reshape(-1, f.shape[-1]).float() for f in frame_feats]
    if any(f.shape[0] != n for f in feats):
        raise ValueError("every frame must have the grid of the first labels")
    feats = [F.normalize(f, dim=1, p=2) for f in feats]  # (N, D)
    window = neighborhood_mask((h, w), neighborhood, feats[0].device) if neighborhood > 0 else None
    labels = [first_labels.reshape(c, n).float()]  # each (C, N)
    for t in range(1, len(feats)):
        context = [0] + list(range(max(1, t - n_last_frames), t))
        sources = torch.stack([feats[i].T for i in context])  # (n_ctx, D, N)
        aff = torch.exp(torch.bmm(feats[t][None].expand(len(context), -1, -1), sources) / temperature)
        if window is not None:
            aff = aff * window  # (n_ctx, N target, N source)
        aff = aff.transpose(2, 1).reshape(-1, n)  # (n_ctx * N source, N target)
        kth = aff.topk(min(topk, aff.shape[0]), dim=0).values.min(dim=0).values
        aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
        aff = aff / aff.sum(dim=0, keepdim=True)
        context_labels = torch.cat([labels[i] for i in context], dim=1)  # (C, n_ctx * N)
        labels.append(context_labels @ aff)
    return [lab.reshape(c, h, w) for lab in labels]


def labels_to_mask(probs: Tensor, out_size: tuple[int, int], patch_size: tuple[int, int]) -> Tensor:
    """Token label distributions ``(C, h, w)`` -> ``(H, W)`` long label map, as DINO writes its predictions.

    Bilinear upsampling by ``patch_size`` (``(row, column)`` factors; ``align_corners=False``) to
    ``(h * ph, w * pw)``, per-label min-max normalisation over the image (labels whose maximum is 0 are left
    as they are; ``norm_mask``), arg-max over labels, then a nearest-neighbour (PIL) resize to ``out_size``.
    """
    c = probs.shape[0]
    if c > 256:
        raise ValueError(f"at most 256 labels can be written as an 8-bit label map, got {c}")
    up = F.interpolate(probs.float()[None], scale_factor=(float(patch_size[0]), float(patch_size[1])),
                       mode="bilinear", align_corners=False, recompute_scale_factor=False)[0]
    for k in range(c):
        channel = up[k]
        if channel.max() > 0:
            channel = channel - channel.min()
            up[k] = channel / channel.max()
    label = up.argmax(dim=0).to("cpu", torch.uint8).numpy()
    resized = Image.fromarray(label).resize((out_size[1], out_size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(resized)).long()


def seg2bmap(seg: Tensor) -> Tensor:
    """One-pixel boundary map of a ``(H, W)`` bool mask (the DAVIS ``seg2bmap`` at equal size)."""
    s = seg.bool()
    e = torch.zeros_like(s)
    so = torch.zeros_like(s)
    se = torch.zeros_like(s)
    e[:, :-1] = s[:, 1:]
    so[:-1, :] = s[1:, :]
    se[:-1, :-1] = s[1:, 1:]
    b = (s ^ e) | (s ^ so) | (s ^ se)
    b[-1, :] = s[-1, :] ^ e[-1, :]
    b[:, -1] = s[:, -1] ^ so[:, -1]
    b[-1, -1] = False
    return b


def _dilate(mask: Tensor, radius: int) -> Tensor:
    if radius <= 0:
        return mask.bool()
    r = torch.arange(-radius, radius + 1, device=mask.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()
    out = F.conv2d(mask.float()[None, None], disk[None, None], padding=radius)
    return out[0, 0] > 0


def davis_j(pred: Tensor, gt: Tensor) -> float:
    """DAVIS region similarity J: IoU of ``(H, W)`` bool masks; 1 when both are empty."""
    p, g = pred.bool(), gt.bool()
    union = (p | g).sum()
    if union == 0:
        return 1.0
    return float((p & g).sum() / union)


def davis_f(pred: Tensor, gt: Tensor, bound_th: float = 0.008) -> float:
    """DAVIS contour accuracy F: boundary F-measure with tolerance ``ceil(bound_th * image diagonal)`` px.

    Boundaries come from :func:`seg2bmap`; matches use a disk dilation of that radius (DAVIS' rule).
    Empty-boundary cases follow davis2017-evaluation: both empty -> 1, exactly one empty -> 0.
    """
    h, w = pred.shape
    radius = int(math.ceil(bound_th * math.hypot(h, w))) if bound_th < 1 else int(bound_th)
    fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0
    precision = float((fg_b & _dilate(gt_b, radius)).sum()) / n_fg
    recall = float((gt_b & _dilate(fg_b, radius)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------- key input-agnosticism
def key_moments(keys: Tensor) -> tuple[Tensor, Tensor, int]:
    """Sufficient statistics of keys ``(n_images, N, D)``: ``sum (N, D)``, ``sum of ||k||^2 (N,)``, ``n``."""
    if keys.dim() != 3:
        raise ValueError(f"keys must be (n_images, N, D), got {tuple(keys.shape)}")
    k = keys.double()
    return k.sum(0), k.pow(2).sum((0, 2)), keys.shape[0]


def agnosticism_from_moments(sum_k: Tensor, sumsq: Tensor, count: Tensor | float) -> Tensor:
    """Input-agnosticism from moments: ``sum_k (..., N, D)``, ``sumsq (..., N)``, ``count`` -> ``(..., N)``.

    ``nu_n = E_i ||k_{i,n} - mean_i k_{i,n}||^2 / E_i ||k_{i,n}||^2`` is the across-image variance of
    position ``n`` normalised by its second moment (scale-free, in ``[0, 1]``); the agnosticism is
    ``1 - nu_n``: 1 for a key identical in every image, near 0 for a zero-mean key that varies freely.
    """
    mean = sum_k / count
    second = sumsq / count
    var = (second - mean.pow(2).sum(-1)).clamp_min(0)
    nu = torch.where(second > 0, var / second.clamp_min(1e-30), torch.zeros_like(second))
    return (1 - nu).float()


def input_agnosticism(keys: Tensor) -> Tensor:
    """Per-position input-agnosticism of keys ``(n_images, N, D)`` -> ``(N,)`` in ``[0, 1]``.

    See :func:`agnosticism_from_moments` for the definition. Needs >= 2 images.

    Example:
        >>> keys = torch.randn(8, 5, 4); keys[:, 2] = 3.0  # position 2 never changes
        >>> int(input_agnosticism(keys).argmax())
        2
    """
    if keys.dim() != 3 or keys.shape[0] < 2:
        raise ValueError(f"keys must be (n_images >= 2, N, D), got {tuple(keys.shape)}")
    return agnosticism_from_moments(*key_moments(keys))


def flag_positions(
    agnosticism: Tensor,
    threshold: float | None = None,
    rule: Literal["mad"] = "mad",
    z: float = 3.5,
    min_ratio: float = 10.0,
) -> Tensor:
    """Flag input-agnostic key positions ``(N,)`` -> ``(N,)`` bool.

    With ``threshold`` a position is flagged when its agnosticism is ``>= threshold``. Otherwise the
    calibration ``rule="mad"`` flags robust outliers of the same layer: positions whose normalised
    variance ``nu = 1 - agnosticism`` is, in log space, more than ``z`` scaled MADs (``1.4826 * MAD``)
    below the layer's median AND at least ``min_ratio`` times smaller than the median (the second
    condition keeps a tight, noise-only spread of ``nu`` from flagging chance outliers).
    """
    a = agnosticism.float()
    if threshold is not None:
        return a >= threshold
    if rule != "mad":
        raise ValueError(f"unknown flag rule {rule!r}; use threshold=<float> or rule='mad'")
    lv = torch.log((1 - a).clamp_min(1e-12))
    med = lv.median()
    mad = (lv - med).abs().median() * 1.4826
    margin = torch.maximum(z * mad, torch.tensor(math.log(min_ratio), device=lv.device))
    return lv < med - margin
