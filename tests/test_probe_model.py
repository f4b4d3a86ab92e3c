"""Probes on tiny MLMs: planted key artifacts are found (and nothing else), the prefix reaches the image
values while text after the image does not, and the baseline rows match their oracles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vkvtrain import Prompt
from vkvtrain.data.synthetic_perception import SyntheticSemantic
from vkvtrain.probes import KeyInputAgnosticism
from vkvtrain.probes.encoder import VisionEncoder
from vkvtrain.probes.features import FeatureExtractor, last_text_position

IMAGES = [SyntheticSemantic(n=8, seed=3)[i].image for i in range(8)]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_constant_added_to_chosen_keys_is_flagged_and_nothing_else(tiny_mlm, family: str) -> None:
    mlm = tiny_mlm(family)
    batch = mlm.encode([Prompt(images=[im], text="") for im in IMAGES])
    planted_layers, planted_pos = [1, 3], [2, 7]
    const = 100 * torch.randn(mlm.kv_dim, generator=torch.Generator().manual_seed(0))

    def plant(_module, _args, out):
        for row in batch.spans:
            for p in planted_pos:
                out[row[0].batch, row[0].start + p] += const
        return out

    layers = mlm.decoder_layers()
    handles = [layers[i].self_attn.k_proj.register_forward_hook(plant) for i in planted_layers]
    try:
        with mlm.capture() as kv:
            mlm.model(**batch.inputs)
    finally:
        for h in handles:
            h.remove()
    n = batch.spans[0][0].grid_size
    metric = KeyInputAgnosticism(mlm.num_layers, n, mlm.kv_dim)
    metric.update([torch.stack([kv.image(layer, b, 0).grid("keys").reshape(n, -1) for b in range(len(IMAGES))])
                   for layer in range(mlm.num_layers)])
    flagged = metric.compute()["flagged"]
    for layer in range(mlm.num_layers):
        expected = planted_pos if layer in planted_layers else []
        assert flagged[layer].nonzero().flatten().tolist() == expected, layer


def test_prefix_changes_image_values_but_text_after_the_image_does_not(tiny_mlm) -> None:
    mlm = tiny_mlm("qwen2_5_vl")
    fx = FeatureExtractor(mlm, sources=("input_embeds", "layers"), batch_size=1)
    image = IMAGES[0]
    base, other_text, prefixed = (fx([image], texts=[t], prefixes=[p])[0] for t, p in
                                  (("circle", None), ("a much longer question", None), ("circle", "A prefix.")))
    for row in fx.rows:
        assert torch.allclose(base.rows[row], other_text.rows[row], atol=1e-6), row
    assert torch.allclose(base.rows["input_embeds"], prefixed.rows["input_embeds"])  # LM input: no attention yet
    assert torch.allclose(base.rows["0"], prefixed.rows["0"], atol=1e-6)  # v_proj of the embeddings
    for row in fx.rows[2:]:  # layers >= 1 read the prefix through attention
        assert (base.rows[row] - prefixed.rows[row]).abs().max() > 1e-4, row


def test_text_value_is_read_at_the_texts_last_token(tiny_mlm) -> None:
    mlm = tiny_mlm("llava_onevision")
    batch = mlm.encode([Prompt(images=[IMAGES[0]], text="circle")])
    pos = last_text_position(mlm, batch.input_ids, 0, batch.spans[0][0].stop)
    assert mlm.tokenizer.decode(batch.input_ids[0, pos - 5:pos + 1]) == "circle"
    fx = FeatureExtractor(mlm, layers=[2], sources=("layers",))
    feats = fx([IMAGES[0]], texts=["circle"])[0]
    with mlm.capture(layers=[2], text_positions=[(0, pos)]) as kv:
        mlm.model(**batch.inputs)
    assert torch.allclose(feats.text["2"], kv.text(2, 0, pos)["values"])


def _tiny_siglip(path: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8)
    SiglipVisionModel(cfg).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def test_encoder_baseline_row_matches_transformers(tiny_mlm, tmp_path: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionModel

    _tiny_siglip(tmp_path / "siglip")
    encoder = VisionEncoder(str(tmp_path / "siglip"))
    fx = FeatureExtractor(tiny_mlm("llava_next"), layers=[0], encoder=encoder)
    assert fx.rows == ["input_embeds", "0", "vision", "encoder"]
    feats = fx(IMAGES[:2])
    ref = SiglipVisionModel.from_pretrained(tmp_path / "siglip").eval()
    pixels = SiglipImageProcessor.from_pretrained(tmp_path / "siglip")(images=IMAGES[:2], return_tensors="pt")
    with torch.no_grad():
        want = ref(**pixels).last_hidden_state.reshape(2, 4, 4, 32)
    for f, w in zip(feats, want):
        assert f.rows["encoder"].shape == (4, 4, 32)
        assert torch.allclose(f.rows["encoder"], w, atol=1e-5)


def test_probe_run_with_encoder_baseline_writes_encoder_row(tmp_path: Path) -> None:
    import json

    from vkvtrain.cli import main

    _tiny_siglip(tmp_path / "siglip")
    code = main(["probe", "--model", "tiny://llava_onevision", "--encoder", str(tmp_path / "siglip"), "--tasks",
                 "[keypoints, coseg]", "--data.keypoints.n", "2", "--data.coseg.n", "1", "--output_dir",
                 str(tmp_path / "out"), "--progress", "false"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "probes.json").read_text())["results"]["tiny://llava_onevision"]
    assert list(results["keypoints"]["pck"])[-2:] == ["vision", "encoder"]
    assert 0 <= results["coseg"]["jaccard"]["encoder"] <= 1


def test_shuffled_tokens_permute_every_grid_of_an_image_alike(tiny_mlm) -> None:
    """The control keeps each image's tokens and moves them: one permutation per image for every row and its
    keys (different across images, the same in every run with that seed); text values stay."""
    mlm = tiny_mlm("llava_onevision")
    plain = FeatureExtractor(mlm, layers=[0, 3], batch_size=2)
    feats = plain(IMAGES[:3], texts=["circle"] * 3, keys=True)
    runs = [FeatureExtractor(mlm, layers=[0, 3], batch_size=2, shuffle_seed=5)(IMAGES[:3], texts=["circle"] * 3,
                                                                                  keys=True) for _ in range(2)]
    perms = []
    for ref, got, again in zip(feats, *runs):
        anchor = ref.rows["3"].reshape(-1, ref.rows["3"].shape[-1])
        moved = got.rows["3"].reshape(-1, anchor.shape[-1])
        perm = torch.cdist(moved, anchor).argmin(1)  # where each shuffled token came from
        assert sorted(perm.tolist()) == list(range(anchor.shape[0])) and perm.tolist() != sorted(perm.tolist())
        for row in plain.rows:
            grid = ref.rows[row]
            assert torch.equal(got.rows[row], grid.reshape(-1, grid.shape[-1])[perm].reshape(grid.shape)), row
            assert torch.equal(again.rows[row], got.rows[row])
        for layer in (0, 3):
            assert torch.equal(got.keys[layer], ref.keys[layer][perm])
            assert torch.equal(got.text[str(layer)], ref.text[str(layer)])
        perms.append(perm.tolist())
    assert perms[0] != perms[1] != perms[2]


def test_key_image_size_gives_each_familys_usual_grid() -> None:
    """On the published processor settings (Qwen2.5-VL's 14 px patches, 2 x 2 merge and pixel bounds; OV's 384 px
    SigLIP input; NeXT's 336 px CLIP crop) the default side gives 24 x 24, 27 x 27 and 24 x 24 image grids;
    the old fixed 64 px left Qwen2.5-VL a 2 x 2 grid."""
    from test_capture import real_geometry_llava_next, real_geometry_llava_onevision, real_geometry_qwen2_5_vl

    from vkvtrain.probes.key_images import default_key_image_size

    expected = {"qwen": (672, (24, 24)), "ov": (384, (27, 27)), "next": (336, (24, 24))}
    for name, build in (("qwen", real_geometry_qwen2_5_vl), ("ov", real_geometry_llava_onevision),
                        ("next", real_geometry_llava_next)):
        mlm = build()
        side = default_key_image_size(mlm.processor.image_processor)
        image = IMAGES[0].resize((side, side))
        grid = mlm.encode([Prompt(images=[image], text="")]).spans[0][0].grid_shape
        assert (side, grid) == expected[name], name
        if name == "qwen":
            small = mlm.encode([Prompt(images=[IMAGES[0].resize((64, 64))], text="")]).spans[0][0].grid_shape
            assert small == (2, 2)
