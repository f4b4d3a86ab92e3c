"""Functional probe math against planted answers and scikit-learn / torchmetrics oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from torchmetrics.classification import BinaryJaccardIndex

from vkvtrain.probes import functional as PF
from helpers_probes import block_mask, planted_feats, shuffled


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
@pytest.mark.parametrize("balanced", [False, True])
def test_logistic_regression_matches_sklearn(balanced: bool, method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 120, 6
    y = (torch.rand(n, generator=gen) < 0.3).long()
    x = torch.randn(n, d, generator=gen) + 2.0 * y[:, None] * torch.tensor([1.0, -1, 0.5, 0, 0, 0])
    w, b = PF.fit_logistic_regression(x, y, c=0.5, balanced=balanced, method=method)
    ref = LogisticRegression(C=0.5, class_weight="balanced" if balanced else None, tol=1e-10, max_iter=1000)
    ref.fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), ref.coef_[0], atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(float(b), ref.intercept_[0], atol=2e-3)
    xt = torch.randn(200, d, generator=gen) * 2
    ours = ((xt @ w + b) > 0).long().numpy()
    assert (ours == ref.predict(xt.numpy())).mean() >= 0.99


def test_kmeans_recovers_planted_clusters_like_sklearn() -> None:
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 5, generator=gen) * 6
    truth = torch.arange(4).repeat_interleave(30)
    x = centers[truth] + 0.3 * torch.randn(120, 5, generator=gen)
    labels, cent = PF.kmeans(x, 4, seed=3)
    ref = KMeans(4, n_init=4, random_state=0).fit(x.numpy())
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == 1.0
    assert adjusted_rand_score(ref.labels_, labels.numpy()) == 1.0
    assert cent.shape == (4, 5)
    again, _ = PF.kmeans(x, 4, seed=3)
    assert torch.equal(again, labels)  # deterministic


def test_kmeans_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        PF.kmeans(torch.randn(3, 2), 5)


def test_segmentation_stats_match_torchmetrics_jaccard() -> None:
    gen = torch.Generator().manual_seed(2)
    pred = torch.rand(40, 30, generator=gen) > 0.5
    target = torch.rand(40, 30, generator=gen) > 0.6
    ignore = torch.rand(40, 30, generator=gen) > 0.9
    st = PF.segmentation_stats(pred, target, ignore)
    tgt = target.long().masked_fill(ignore, 255)
    fg = BinaryJaccardIndex(ignore_index=255)(pred.long(), tgt)
    bg = BinaryJaccardIndex(ignore_index=255)((~pred).long(), (~target).long().masked_fill(ignore, 255))
    assert float(st[0] / st[1]) == pytest.approx(float(fg), abs=1e-6)
    assert float(st[2] / st[3]) == pytest.approx(float(bg), abs=1e-6)


def test_downsample_then_upsample_keeps_token_aligned_mask() -> None:
    mask = block_mask((6, 8), (1, 2, 4, 7), scale=8)
    frac = PF.downsample_mask(mask, (6, 8))
    assert torch.equal(frac, block_mask((6, 8), (1, 2, 4, 7)).float())
    assert torch.equal(PF.scores_to_mask(frac, tuple(mask.shape), mode="nearest"), mask)
    smooth = PF.scores_to_mask(frac, tuple(mask.shape))  # bilinear rounds the box's corners off
    st = PF.segmentation_stats(smooth, mask)
    assert 0.95 < float(st[0] / st[1]) < 1.0 and not (smooth & ~mask).any()


def test_fewshot_segment_planted_and_shuffled() -> None:
    grid, scale = (8, 8), 4
    masks = [block_mask(grid, (i, i, i + 4, i + 3), scale) for i in range(4)]
    feats = [planted_feats(PF.downsample_mask(m, grid) >= 0.5, seed=i) for i, m in enumerate(masks)]
    pred = PF.fewshot_segment(feats[:3], masks[:3], feats[3], tuple(masks[3].shape), mode="nearest")
    assert torch.equal(pred, masks[3])
    bad = PF.fewshot_segment(feats[:3], masks[:3], shuffled(feats[3]), tuple(masks[3].shape))
    st = PF.segmentation_stats(bad, masks[3])
    assert float(st[0] / st[1]) < 0.6


def test_cosegment_keeps_common_central_object() -> None:
    grid = (8, 8)
    masks = [block_mask(grid, (2 + i % 2, 2, 6, 6 + i % 2)) for i in range(4)]
    # fg = label 1; background split into two textures (labels 0 and 2) that touch the border
    feats = []
    for i, m in enumerate(masks):
        lab = torch.zeros(grid, dtype=torch.long)
        lab[:, : 4] = 2 if i % 2 else 0
        lab[m] = 1
        feats.append(planted_feats(lab, seed=i))
    scores = PF.cosegment(feats, k=3)
    for sc, m in zip(scores, masks):
        assert torch.equal(sc.bool(), m)


def test_grounded_mask_threshold_rule() -> None:
    scores = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    # min-max -> [[0, .25], [.5, 1]]; threshold 0.5 keeps the bottom row
    assert torch.equal(PF.grounded_mask(scores, (2, 2), 0.5), torch.tensor([[False, False], [True, True]]))
    assert torch.equal(PF.grounded_mask(scores, (2, 2), "mean"), torch.tensor([[False, False], [True, True]]))
    assert not PF.grounded_mask(torch.ones(3, 3), (6, 6)).any()


def test_keypoint_transfer_identity_is_exact_to_the_cell() -> None:
    feats = torch.randn(6, 9, 12, generator=torch.Generator().manual_seed(0))
    kps = torch.tensor([[5.0, 5.0], [80.0, 40.0], [143.0, 95.0]])
    pred = PF.transfer_keypoints(feats, feats, kps, (96, 144), (96, 144))
    centers = PF.token_centers((6, 9), (96, 144))
    assert torch.equal(pred, centers[PF.keypoints_to_tokens(kps, (6, 9), (96, 144))])
    assert PF.pck_correct(pred, kps, 0.1, 144).all()
    assert not PF.pck_correct(pred + 100, kps, 0.1, 144).any()


def _scipy_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    disk = np.add.outer(np.arange(-radius, radius + 1) ** 2, np.arange(-radius, radius + 1) ** 2) <= radius**2
    fb, gb = PF.seg2bmap(torch.from_numpy(pred)).numpy(), PF.seg2bmap(torch.from_numpy(gt)).numpy()
    p = (fb & ndimage.binary_dilation(gb, disk)).sum() / fb.sum()
    r = (gb & ndimage.binary_dilation(fb, disk)).sum() / gb.sum()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_davis_j_and_f() -> None:
    gt = torch.zeros(60, 80, dtype=torch.bool)
    gt[10:40, 20:50] = True
    assert PF.davis_j(gt, gt) == 1.0 and PF.davis_f(gt, gt) == 1.0
    shifted = torch.roll(gt, 1, dims=1)  # within the 1-px tolerance of a 100-px diagonal
    assert PF.davis_f(shifted, gt) == 1.0
    far = torch.roll(gt, 6, dims=0)
    assert PF.davis_f(far, gt) == pytest.approx(_scipy_f(far.numpy(), gt.numpy(), 1), abs=1e-9)
    assert PF.davis_f(far, gt) < 0.5
    assert PF.davis_j(far, gt) == pytest.approx(24 * 30 / (36 * 30))
    empty = torch.zeros_like(gt)
    assert PF.davis_j(empty, empty) == 1.0 and PF.davis_f(empty, empty) == 1.0 and PF.davis_f(empty, gt) == 0.0


def test_propagate_labels_follows_planted_identity() -> None:
    grid = (6, 6)
    frames = []
    for t in range(4):
        lab = torch.zeros(grid, dtype=torch.long)
        lab[1:4, t:t + 2] = 1
        frames.append(lab)
    feats = [planted_feats(lab, seed=t) for t, lab in enumerate(frames)]
    first = torch.stack([(frames[0] == 0).float(), (frames[0] == 1).float()])
    probs = PF.propagate_labels(feats, first, topk=3)
    for lab, p in zip(frames, probs):
        assert torch.equal(p.argmax(0), lab)


def test_input_agnosticism_and_flags() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(16, 50, 8, generator=gen)
    keys[:, [4, 17]] += torch.full((8,), 40.0)  # a constant added: direction barely changes
    keys[:, 30] = 2.5  # an exactly constant key
    agn = PF.input_agnosticism(keys)
    assert agn.shape == (50,)
    assert agn[30] == pytest.approx(1.0) and agn[4] > 0.99 and agn[17] > 0.99
    flagged = PF.flag_positions(agn).nonzero().flatten().tolist()
    assert flagged == [4, 17, 30]
    assert PF.flag_positions(agn, threshold=0.99).nonzero().flatten().tolist() == [4, 17, 30]
    # moments are additive: two halves give the same answer as all images at once
    s1, q1, n1 = PF.key_moments(keys[:7])
    s2, q2, n2 = PF.key_moments(keys[7:])
    assert torch.allclose(PF.agnosticism_from_moments(s1 + s2, q1 + q2, n1 + n2), agn, atol=1e-6)
    with pytest.raises(ValueError, match="n_images >= 2"):
        PF.input_agnosticism(keys[:1])


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_logistic_regression_fits_under_inference_mode(method: str) -> None:
    gen = torch.Generator().manual_seed(5)
    y = torch.arange(40) % 2
    x = torch.randn(40, 3, generator=gen) + 3 * y[:, None].float()
    w_ref, b_ref = PF.fit_logistic_regression(x, y, method=method)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        w, b = PF.fit_logistic_regression(xi, yi, method=method)
    assert torch.allclose(w, w_ref) and torch.allclose(b, b_ref)


def test_logistic_regression_separable_high_dim_newton_equals_lbfgs() -> None:
    """More features than tokens and separable classes (the few-shot regime): both solvers, one optimum."""
    gen = torch.Generator().manual_seed(11)
    n, d = 60, 150
    y = torch.arange(n) % 3 == 0
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=gen) + 0.5 * y[:, None].float(), dim=-1)
    w_n, b_n = PF.fit_logistic_regression(x, y.long(), c=10.0, method="newton")
    w_l, b_l = PF.fit_logistic_regression(x, y.long(), c=10.0, method="lbfgs", max_iter=500)
    assert torch.allclose(w_n, w_l, atol=1e-3) and abs(float(b_n - b_l)) < 1e-3
    assert bool((((x @ w_n + b_n) > 0) == y).all())
    ref = LogisticRegression(C=10.0, class_weight="balanced", tol=1e-10, max_iter=5000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w_n.numpy(), ref.coef_[0], atol=2e-3)
    with pytest.raises(ValueError, match="method 'sgd' is unknown"):
        PF.fit_logistic_regression(x, y.long(), method="sgd")  # type: ignore[arg-type]
