"""Functional probe math against planted answers and scikit-learn / torchmetrics oracles."""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from torchmetrics.classification import BinaryJaccardIndex

import helpers_dino as dino
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
    first = PF.first_frame_labels(frames[0], grid, 2)
    probs = PF.propagate_labels(feats, first, topk=3)
    for lab, p in zip(frames, probs):
        assert torch.equal(p.argmax(0), lab)


@pytest.mark.parametrize("n_last_frames, neighborhood, topk, patch", [(7, 12, 5, 4), (2, 3, 5, 3), (7, 0, 3, 1)])
def test_temporal_protocol_equals_dino_reference_port(n_last_frames: int, neighborhood: int, topk: int,
                                                      patch: int) -> None:
    """Random features: the propagated token labels and the written label maps equal DINO's own code's."""
    gen = torch.Generator().manual_seed(neighborhood)
    grid, t_len, dim = (9, 13), 11, 6
    feats = [torch.randn(*grid, dim, generator=gen) for _ in range(t_len)]
    token_labels = torch.randint(0, 4, grid, generator=gen)
    token_labels[0, :4] = torch.arange(4)  # every label survives the nearest-neighbour resize
    first_mask = token_labels.repeat_interleave(3, 0).repeat_interleave(3, 1)  # (27, 39) "original" frame
    out_size = (27, 39)
    args = Namespace(n_last_frames=n_last_frames, size_mask_neighborhood=neighborhood, topk=topk, patch_size=patch)
    ref_tokens, ref_written = dino.eval_video_tracking(args, feats, first_mask.numpy(), out_size)
    first = PF.first_frame_labels(first_mask, grid, 4)
    assert torch.equal(first, dino.read_seg(first_mask.numpy(), grid)[0])
    probs = PF.propagate_labels(feats, first, n_last_frames, topk, 0.1, neighborhood)
    for t in range(1, t_len):
        assert torch.allclose(probs[t], ref_tokens[t - 1][0], atol=1e-6), t
        written = PF.labels_to_mask(probs[t], out_size, (patch, patch))
        assert np.array_equal(written.numpy(), ref_written[t - 1]), t
    # the window, the context length and top-k all change the answer: the comparison is not vacuous
    other = PF.propagate_labels(feats, first, n_last_frames, topk + 2, 0.1, neighborhood)
    assert not torch.allclose(other[-1], probs[-1], atol=1e-3)


def _look_alike_clip(t_len: int = 6, grid: tuple[int, int] = (6, 40), scale: int = 2) -> tuple[list, torch.Tensor]:
    """Two objects with the same features, 20+ tokens apart, each moving 1 token per frame."""
    labels = []
    for t in range(t_len):
        lab = torch.zeros(grid, dtype=torch.long)
        lab[2:5, 3 + t:7 + t] = 1
        lab[2:5, 30 - t:34 - t] = 2
        labels.append(lab)
    feats = [planted_feats((lab > 0).long(), dim=8, noise=0.05, seed=t) for t, lab in enumerate(labels)]
    masks = torch.stack([lab.repeat_interleave(scale, 0).repeat_interleave(scale, 1) for lab in labels])
    return feats, masks


def test_temporal_look_alike_objects_far_apart_are_told_apart_by_the_window() -> None:
    from vkvtrain.probes import TemporalCorrespondence

    feats, masks = _look_alike_clip()
    scores = {}
    for name, metric in (("dino", TemporalCorrespondence(1)), ("no window", TemporalCorrespondence(1, neighborhood=0))):
        metric.update([f[None] for f in feats], masks)
        scores[name] = float(metric.compute()["jf"][0])
    assert scores["dino"] == 1.0
    assert scores["no window"] < 0.5  # without the window each object takes the other's labels too


def test_support_foreground_fraction_leaves_void_out() -> None:
    grid = (2, 2)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    void = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :2] = True  # token (0, 0): 6 fg, 6 void, 4 bg pixels -> 6/10 of its non-void pixels
    void[1, 2:4] = True
    void[2, :4] = True
    void[:3, 4:] = True  # token (0, 1): 12 of 16 pixels void -> dropped
    mask[4, :4] = True
    mask[5, :3] = True  # token (1, 0): 7 fg, no void -> 7/16 < 0.5
    frac, keep = PF.foreground_fraction(mask, grid, void)
    assert frac.tolist() == pytest.approx([0.6, 0.0, 7 / 16, 0.0])
    assert keep.tolist() == [True, False, True, True]
    frac_no_void, keep_all = PF.foreground_fraction(mask, grid)
    assert frac_no_void[0] == pytest.approx(6 / 16) and keep_all.all()
    # counted with void as background, token (1, 0) would be the support's most-foreground token instead
    feats = torch.eye(4).reshape(2, 2, 4)
    pred = PF.fewshot_segment([feats], [mask], feats, (2, 2), support_ignore=[void], mode="nearest")
    assert pred[0, 0] and not pred[1, 0] and not pred[1, 1]


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
