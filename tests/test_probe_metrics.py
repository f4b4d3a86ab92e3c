"""Layer-wise probe metrics: planted answers per layer, shuffled controls, torchmetrics oracles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import copy
import pickle

import pytest
import torch
from torchmetrics.classification import BinaryJaccardIndex

from vkvtrain.probes import (CoSegmentation, FewShotSegmentation, KeyInputAgnosticism, KeypointCorrespondence,
                             TemporalCorrespondence, TextGroundedSegmentation)
from vkvtrain.probes import functional as PF
from vkvtrain.probes.features import ImageFeatures, shuffle_tokens
from helpers_probes import planted_feats, random_box_mask, shuffled

GRID, SCALE = (8, 8), 4


def _episode(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    masks = [random_box_mask(GRID, SCALE, seed * 10 + j) for j in range(4)]
    return masks, [PF.downsample_mask(m, GRID) >= 0.5 for m in masks]


def test_fewshot_metric_planted_layer_beats_shuffled_layer() -> None:
    metric = FewShotSegmentation(num_layers=2, num_classes=3, upsample="nearest", layer_names=["good", "shuffled"])
    for ep in range(4):
        masks, tok = _episode(ep)
        layers = [planted_feats(t, seed=ep * 5 + j) for j, t in enumerate(tok)]
        per_image = [torch.stack([f, shuffled(f, seed=j) if j == 3 else f]) for j, f in enumerate(layers)]
        metric.update(per_image[:3], masks[:3], per_image[3], masks[3], class_id=1 + ep % 2)
    out = metric.compute()
    assert out["miou"].shape == (2,) and out["fbiou"].shape == (2,)
    assert out["miou"][0] == pytest.approx(1.0) and out["fbiou"][0] == pytest.approx(1.0)
    assert out["miou"][1] < 0.6


def test_fewshot_metric_miou_equals_per_class_torchmetrics_jaccard() -> None:
    metric = FewShotSegmentation(num_layers=1, num_classes=3)
    oracle = {1: BinaryJaccardIndex(), 2: BinaryJaccardIndex()}
    fg, bg = BinaryJaccardIndex(), BinaryJaccardIndex()
    for ep in range(6):
        masks, tok = _episode(ep)
        feats = [planted_feats(t, noise=0.8, seed=ep * 5 + j) for j, t in enumerate(tok)]  # noisy: IoU < 1
        cls = 1 + ep % 2
        metric.update([f[None] for f in feats[:3]], masks[:3], feats[3][None], masks[3], class_id=cls)
        pred = PF.fewshot_segment(feats[:3], masks[:3], feats[3], tuple(masks[3].shape))
        oracle[cls].update(pred.long(), masks[3].long())
        fg.update(pred.long(), masks[3].long())
        bg.update((~pred).long(), (~masks[3]).long())
    out = metric.compute()
    expected = (oracle[1].compute() + oracle[2].compute()) / 2
    assert float(out["miou"][0]) == pytest.approx(float(expected), abs=1e-6)
    assert float(out["miou"][0]) < 0.99
    assert float(out["fbiou"][0]) == pytest.approx(float((fg.compute() + bg.compute()) / 2), abs=1e-6)


def test_fewshot_metric_rejects_wrong_layer_count_and_class() -> None:
    metric = FewShotSegmentation(num_layers=2, num_classes=3)
    masks, tok = _episode(0)
    f = planted_feats(tok[0])[None]
    with pytest.raises(ValueError, match="num_layers=2"):
        metric.update([f], masks[:1], f, masks[0], class_id=1)
    with pytest.raises(ValueError, match="num_classes"):
        metric.update([f], masks[:1], f, masks[0], class_id=7)


def test_coseg_metric_planted_vs_shuffled() -> None:
    metric = CoSegmentation(num_layers=2, k=2, upsample="nearest")
    masks, group = [], []
    for i in range(4):
        m = torch.zeros(GRID, dtype=torch.bool)
        m[2 + i % 2:6, 2:6 + i % 2] = True
        f = planted_feats(m, seed=i)
        group.append(torch.stack([f, shuffled(f, seed=i)]))
        masks.append(m.repeat_interleave(SCALE, 0).repeat_interleave(SCALE, 1))
    metric.update(group, masks)
    out = metric.compute()
    assert out["jaccard"][0] == pytest.approx(1.0) and out["precision"][0] == pytest.approx(1.0)
    assert out["jaccard"][1] < 0.6


def test_text_grounding_metric_planted_and_ciou_oracle() -> None:
    metric = TextGroundedSegmentation(num_layers=2, upsample="nearest")
    oracle = BinaryJaccardIndex()
    ious = []
    for s in range(5):
        m = random_box_mask(GRID, SCALE, s)
        tok = PF.downsample_mask(m, GRID) >= 0.5
        f = planted_feats(tok, seed=s)
        text = torch.zeros(16)
        text[1] = 1.0  # points at the foreground direction
        noisy = f + 0.7 * torch.randn(f.shape, generator=torch.Generator().manual_seed(s))
        metric.update(torch.stack([text, text]), torch.stack([f, noisy]), m)
        pred = PF.grounded_mask(PF.text_grounding_scores(text, noisy), tuple(m.shape), mode="nearest")
        oracle.update(pred.long(), m.long())
        st = PF.segmentation_stats(pred, m)
        ious.append(float(st[0] / st[1]))
    out = metric.compute()
    assert out["miou"][0] == pytest.approx(1.0) and out["ciou"][0] == pytest.approx(1.0)
    assert float(out["ciou"][1]) == pytest.approx(float(oracle.compute()), abs=1e-6)
    assert float(out["miou"][1]) == pytest.approx(sum(ious) / len(ious), abs=1e-6)


def test_text_grounding_semantic_mode_needs_class() -> None:
    metric = TextGroundedSegmentation(num_layers=1, num_classes=4)
    with pytest.raises(ValueError, match="class_id"):
        metric.update(torch.zeros(1, 3), torch.zeros(1, 2, 2, 3), torch.zeros(4, 4, dtype=torch.bool))


def test_keypoint_metric_identity_pairs_and_shuffled() -> None:
    metric = KeypointCorrespondence(num_layers=2, alpha=0.1, normalize="bbox")
    gen = torch.Generator().manual_seed(0)
    for s in range(3):
        f = torch.randn(GRID[0], GRID[1], 12, generator=gen)
        kps = torch.rand(6, 2, generator=gen) * 32
        # the prediction is a token centre: bbox of 64 px tolerates the 2.9-px worst case within a 4-px cell
        metric.update(torch.stack([f, f]), torch.stack([f, shuffled(f, seed=s)]), kps, kps, (32, 32), (32, 32),
                      trg_bbox=(0, 0, 64, 40))
    out = metric.compute()
    assert out["pck"][0] == pytest.approx(1.0)
    assert out["pck"][1] < 0.5
    with pytest.raises(ValueError, match="trg_bbox"):
        metric.update(torch.stack([f, f]), torch.stack([f, f]), kps, kps, (32, 32), (32, 32))


def test_temporal_metric_planted_clip() -> None:
    t_len, scale = 5, 2
    labels = []
    for t in range(t_len):
        lab = torch.zeros(GRID, dtype=torch.long)
        lab[1:4, t:t + 3] = 1
        lab[5:7, 4:6] = 2
        labels.append(lab)
    masks = torch.stack([lab.repeat_interleave(scale, 0).repeat_interleave(scale, 1) for lab in labels])
    metric = TemporalCorrespondence(num_layers=2, topk=3)
    frames = [torch.stack([planted_feats(lab, seed=t), shuffled(planted_feats(lab, seed=t), seed=t)])
              for t, lab in enumerate(labels)]
    metric.update(frames, masks)
    out = metric.compute()
    assert out["j"][0] == pytest.approx(1.0) and out["f"][0] == pytest.approx(1.0)
    assert out["jf"][1] < 0.7
    assert int(metric.objects) == 2


def test_key_agnosticism_metric_flags_planted_positions_per_layer() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 12, 40, 8, generator=gen)  # (L, n_images, N, D)
    keys[1, :, [5, 9]] += 50.0
    metric = KeyInputAgnosticism(num_layers=3, num_positions=40, dim=8)
    metric.update(keys[:, :5])
    metric.update(keys[:, 5:])
    out = metric.compute()
    assert out["flagged"].shape == (3, 40)
    assert out["flagged"][1].nonzero().flatten().tolist() == [5, 9]
    assert not out["flagged"][0].any() and not out["flagged"][2].any()
    assert out["n_flagged"].tolist() == [0, 2, 0]
    assert torch.allclose(out["agnosticism"], torch.stack([PF.input_agnosticism(k) for k in keys]), atol=1e-6)
    with pytest.raises(ValueError, match="same grid"):
        metric.update(torch.randn(3, 2, 41, 8))


def test_single_layer_results_keep_layer_axis_and_plot(tmp_path) -> None:
    metric = KeypointCorrespondence(num_layers=1, normalize="image")
    f = torch.randn(4, 4, 5)
    kps = torch.tensor([[3.0, 3.0]])
    metric.update(f[None], f[None], kps, kps, (16, 16), (16, 16))
    out = metric.compute()
    assert out["pck"].shape == (1,)
    for copy_ in (copy.deepcopy(metric), pickle.loads(pickle.dumps(metric)), metric.clone()):
        assert copy_.compute()["pck"].shape == (1,)  # copies keep the row axis too
    agn = KeyInputAgnosticism(1, num_positions=1, dim=2)
    agn.update(torch.randn(1, 3, 1, 2))
    assert agn.compute()["agnosticism"].shape == (1, 1) and agn.compute()["score"].shape == (1,)
    fig, ax = metric.plot()
    fig.savefig(tmp_path / "pck.png")
    assert (tmp_path / "pck.png").stat().st_size > 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0"]


def test_docstring_examples_run() -> None:
    import doctest

    from vkvtrain.probes import agnosticism, functional, segmentation

    for module in (functional, segmentation, agnosticism):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ------------------------------------------------------------------------------------ rows are independent
def _stack(*rows: torch.Tensor) -> torch.Tensor:
    return torch.stack(rows)


def _row_cases() -> dict[str, tuple]:
    """Per metric: (factory(num_layers), [update(metric, rows)]) over 3 rows of different quality; the updates
    include an episode / sample whose truth is empty, where one row predicts something and another nothing."""
    gen = torch.Generator().manual_seed(7)
    masks = [random_box_mask(GRID, SCALE, s) for s in range(6)]
    toks = [PF.downsample_mask(m, GRID) >= 0.5 for m in masks]
    empty = torch.zeros_like(masks[0])
    good = [planted_feats(t, seed=i) for i, t in enumerate(toks)]
    noisy = [planted_feats(t, noise=0.9, seed=10 + i) for i, t in enumerate(toks)]
    blank = planted_feats(torch.zeros_like(toks[0]), noise=0.0)  # every token alike: nothing is predicted
    feats = [_stack(g, n, g) for g, n in zip(good, noisy)]
    false_pos = _stack(good[5], noisy[5], blank)  # rows 0-1 see an object where the truth is empty, row 2 nothing
    text = torch.zeros(3, 16)
    text[:, 1] = 1.0
    kps = torch.rand(5, 2, generator=gen) * 32
    keys = torch.randn(3, 6, 64, 4, generator=gen)
    keys[1, :, 3] += 20.0
    clip = torch.stack([m.long() + 2 * masks[(i + 1) % 4].long() * (~m).long() for i, m in enumerate(masks[:4])])
    return {
        "fewshot": (lambda n: FewShotSegmentation(n, num_classes=4), [
            lambda m, r: m.update([f[r] for f in feats[:3]], masks[:3], feats[3][r], masks[3], class_id=1),
            lambda m, r: m.update([f[r] for f in feats[:3]], masks[:3], false_pos[r], empty, class_id=2),
            lambda m, r: m.update([f[r] for f in feats[1:4]], masks[1:4], feats[4][r], masks[4], class_id=3)]),
        "semantic": (lambda n: TextGroundedSegmentation(n, num_classes=4), [
            lambda m, r: m.update(text[r], feats[0][r], masks[0], class_id=1),
            lambda m, r: m.update(text[r], false_pos[r], empty, class_id=2),
            lambda m, r: m.update(text[r], feats[1][r], masks[1], class_id=3, ignore=masks[2])]),
        "referring": (lambda n: TextGroundedSegmentation(n), [
            lambda m, r: m.update(text[r], feats[0][r], masks[0]),
            lambda m, r: m.update(text[r], false_pos[r], empty)]),
        "coseg": (lambda n: CoSegmentation(n, k=2), [
            lambda m, r: m.update([f[r] for f in feats[:4]], masks[:4])]),
        "keypoints": (lambda n: KeypointCorrespondence(n, normalize="image"), [
            lambda m, r: m.update(feats[0][r], feats[0][r], kps, kps, (32, 32), (32, 32))]),
        "temporal": (lambda n: TemporalCorrespondence(n, neighborhood=3), [
            lambda m, r: m.update([f[r] for f in feats[:4]], clip)]),
        "key_agnosticism": (lambda n: KeyInputAgnosticism(n, num_positions=64, dim=4), [
            lambda m, r: m.update(keys[r])]),
    }


@pytest.mark.parametrize("name", list(_row_cases()))
def test_every_metric_row_alone_equals_rows_together(name: str) -> None:
    factory, updates = _row_cases()[name]
    together = factory(3)
    for update in updates:
        update(together, slice(0, 3))
    joint = together.compute()
    for row in range(3):
        alone = factory(1)
        for update in updates:
            update(alone, slice(row, row + 1))
        for key, value in alone.compute().items():
            assert value.shape[0] == 1, key
            assert torch.allclose(joint[key][row].double(), value[0].double(), atol=1e-6, equal_nan=True), \
                (name, key, row, joint[key][row], value[0])


def test_surfacing_gap_layer_alone_equals_layers_together() -> None:
    from vkvtrain.probes.surfacing_gap import SurfacingGap

    gen = torch.Generator().manual_seed(1)
    subtasks = torch.randint(0, 3, (40,), generator=gen)
    output = torch.rand(40, generator=gen) < 0.4
    probe = torch.rand(40, 4, generator=gen) < 0.6
    probe[subtasks == 2] = False  # a subtask the probe never gets right
    together = SurfacingGap(num_subtasks=4, num_layers=4)  # subtask 3 never seen: NaN, in every layer alike
    together.update(subtasks, output, probe)
    joint = together.compute()
    for layer in range(4):
        alone = SurfacingGap(num_subtasks=4, num_layers=1)
        alone.update(subtasks, output, probe[:, layer:layer + 1])
        for key, value in alone.compute().items():
            want = joint[key] if key == "output_accuracy" else joint[key][:, layer:layer + 1]
            assert torch.allclose(value, want, equal_nan=True), (key, layer)


def test_empty_truth_mask_class_counts_per_episode_not_per_row_prediction() -> None:
    """Planted: class 2's only query has an empty mask; row 0 predicts an object there, row 1 nothing. Row 1
    scores 1.0 alone and must score 1.0 beside row 0 (it was NaN: classes were chosen from row 0's unions)."""
    masks = [random_box_mask(GRID, SCALE, s) for s in range(4)]
    toks = [PF.downsample_mask(m, GRID) >= 0.5 for m in masks]
    feats = [planted_feats(t, seed=i) for i, t in enumerate(toks)]
    fp_query = torch.stack([feats[3], planted_feats(torch.zeros_like(toks[3]), seed=9)])  # row 0 sees an object
    empty = torch.zeros_like(masks[3])
    both = FewShotSegmentation(2, num_classes=3, upsample="nearest")
    alone = FewShotSegmentation(1, num_classes=3, upsample="nearest")
    for metric, rows in ((both, slice(0, 2)), (alone, slice(1, 2))):
        support = [torch.stack([f, f])[rows] for f in feats[:3]]
        metric.update(support, masks[:3], torch.stack([feats[3], feats[3]])[rows], masks[3], class_id=1)
        metric.update(support, masks[:3], fp_query[rows], empty, class_id=2)
    assert both.compute()["miou"].tolist() == [0.5, 1.0]
    assert alone.compute()["miou"].tolist() == [1.0]


# ------------------------------------------------------------------------------ shuffled-tokens control
def test_shuffled_tokens_drop_keypoints_to_chance_and_keep_image_statistics() -> None:
    """Planted unique token features: identity pairs give PCK 1; with each image's tokens at shuffled positions
    the matched token sits at a uniformly random position, so PCK falls to the share of token centres within
    the tolerance (the chance level, computed exactly) while every per-image statistic that ignores positions
    (the token multiset, its mean, the text value) is unchanged."""
    gen = torch.Generator().manual_seed(3)
    shuffle = torch.Generator().manual_seed(0)
    size, alpha = (32, 32), 0.1
    centres = PF.token_centers(GRID, size)
    plain = KeypointCorrespondence(1, alpha=alpha, normalize="image")
    control = KeypointCorrespondence(1, alpha=alpha, normalize="image")
    chance = []
    for _ in range(60):
        f = torch.randn(*GRID, 12, generator=gen)
        kps = torch.rand(6, 2, generator=gen) * 32
        image = ImageFeatures(rows={"0": f}, text={"0": f[0, 0]}, keys={0: f.reshape(-1, 12)})
        src, trg = shuffle_tokens(image, shuffle), shuffle_tokens(image, shuffle)
        for s in (src, trg):
            flat = s.rows["0"].reshape(-1, 12)
            assert torch.equal(flat.sort(0).values, f.reshape(-1, 12).sort(0).values)
            assert torch.allclose(flat.mean(0), f.reshape(-1, 12).mean(0), atol=1e-6)
            assert torch.equal(s.text["0"], f[0, 0]) and torch.equal(s.keys[0], flat)
        plain.update(f[None], f[None], kps, kps, size, size)
        control.update(src.rows["0"][None], trg.rows["0"][None], kps, kps, size, size)
        chance += ((centres[None] - kps[:, None]).norm(dim=-1) <= alpha * 32).float().mean(1).tolist()
    assert float(plain.compute()["pck"][0]) == 1.0
    expected = sum(chance) / len(chance)
    sd = (expected * (1 - expected) / len(chance)) ** 0.5
    assert abs(float(control.compute()["pck"][0]) - expected) < 4 * sd, (float(control.compute()["pck"][0]), expected)
