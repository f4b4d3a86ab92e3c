"""Published architectures offline: every published size resolves on the meta device with its real shapes, and
every real recipe resolves for every size it names (layers, LoRA targets, quantization skips, probe layers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vkvtrain import Prompt, load_mlm
from vkvtrain.errors import LayerError, ModelLoadError, RecipeError, UnsupportedModelError
from vkvtrain.interventions import LateLoRA
from vkvtrain.models import registry
from vkvtrain.models.quantization import Quantization
from vkvtrain.models.registry import ADAPTERS, adapter_for_family
from vkvtrain.models.tiny import build_tiny, ensure_tiny
from vkvtrain.recipe_check import check_on_meta, recipe_sizes

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))

#: what the model cards and papers state, independent of the adapters' tables: LM layers, KV heads x head_dim,
#: base vision grid (side, tokens per side), total parameters (model cards, 3 significant digits)
PUBLISHED = {
    ("llava_onevision", "0.5b"): dict(layers=24, kv=(2, 64), grid=27, params=0.894e9),
    ("llava_onevision", "7b"): dict(layers=28, kv=(4, 128), grid=27, params=8.03e9),
    ("qwen2_5_vl", "3b"): dict(layers=36, kv=(2, 128), patch=14, merge=2, params=3.75e9),
    ("qwen2_5_vl", "7b"): dict(layers=28, kv=(4, 128), patch=14, merge=2, params=8.29e9),
    ("llava_next", "8b"): dict(layers=32, kv=(8, 128), grid=24, params=8.36e9),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vkvtrain-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VKVTRAIN_CACHE", str(cache))


def test_every_adapter_publishes_the_sizes_in_the_table() -> None:
    listed = {(adapter.family, size) for adapter in ADAPTERS.values() for size in adapter.published_sizes}
    assert listed == set(PUBLISHED)
    assert {"tiny", "mid", "0.5b", "3b", "7b", "8b"} <= set(registry.sizes())


@pytest.mark.parametrize("family,size", sorted(PUBLISHED))
def test_published_size_resolves_on_meta_with_its_real_shape(family: str, size: str, make_image) -> None:  # type: ignore[no-untyped-def]
    expected = PUBLISHED[(family, size)]
    folder = ensure_tiny(family, size, config_only=True)
    assert not (folder / "model.safetensors").exists()
    mlm = load_mlm(str(folder))
    assert mlm.device.type == "meta" and mlm.family == family
    assert (mlm.num_layers, (mlm.num_kv_heads, mlm.head_dim)) == (expected["layers"], expected["kv"])
    assert len(mlm.decoder_layers()) == expected["layers"]
    assert mlm.decoder_layers()[0].self_attn.k_proj.out_features == mlm.kv_dim
    n_params = sum(p.numel() for p in {id(p): p for p in mlm.model.parameters()}.values())
    assert n_params == pytest.approx(expected["params"], rel=0.005)

    config = mlm.model.config
    # the byte-level tokenizer puts the image token at the id the published config names
    assert mlm.image_token_id == mlm.tokenizer.convert_tokens_to_ids(
        "<|image_pad|>" if family == "qwen2_5_vl" else "<image>")
    assert mlm.model.get_input_embeddings().weight.shape[0] == mlm.text_config.vocab_size > 100_000

    batch = mlm.encode([Prompt([make_image(392, 392, 1)], "Q?"), Prompt([make_image(300, 500, 2)], "Which?")])
    grids = [span.grid_shape for row in batch.spans for span in row]
    if "grid" in expected:  # anyres families: the base crop's (image_size / patch)^2 grid opens every span
        side = expected["grid"]
        assert grids == [(side, side), (side, side)]
        vision = config.vision_config
        assert vision.image_size // vision.patch_size == side
    else:  # Qwen2.5-VL: one token per merged 2x2 block of 14 px patches
        vision = config.vision_config
        assert (vision.patch_size, vision.spatial_merge_size) == (expected["patch"], expected["merge"])
        assert grids[0] == (392 // 28, 392 // 28)
        assert batch.spans[0][0].length == 14 * 14


def test_config_only_model_refuses_a_forward() -> None:
    mlm = load_mlm(str(ensure_tiny("qwen2_5_vl", "7b")))  # above the size built with weights: config-only
    with pytest.raises(ModelLoadError, match="meta device.*random_init=True"):
        mlm.model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ModelLoadError, match="no weights"):
        load_mlm(str(ensure_tiny("qwen2_5_vl", "7b")), device_map="cpu")


def test_unknown_sizes_are_refused_with_the_family_list(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="unknown size '13b' for llava_onevision.*0.5b, 7b"):
        build_tiny("llava_onevision", tmp_path / "x", size="13b")
    with pytest.raises(UnsupportedModelError, match="config_only applies to published sizes"):
        build_tiny("llava_onevision", tmp_path / "y", size="tiny", config_only=True)
    with pytest.raises(UnsupportedModelError, match="no published size 'tiny'"):
        adapter_for_family("llava_next").build_published("tiny")


def test_tiny_and_mid_names_keep_working() -> None:
    assert load_mlm("tiny://llava_next").num_layers == 4


def test_a_misspelt_quantization_skip_module_is_refused_before_loading() -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (vkvtrain[quant])")
    folder = str(ensure_tiny("qwen2_5_vl", "3b", config_only=True))
    with pytest.raises(RecipeError, match=r"skip_modules \['model.vision'\] name no module"):
        load_mlm(folder, quantization=Quantization(bits=4, skip_modules=["model.vision", "lm_head"]))
    with pytest.warns(UserWarning, match="quantization is not applied"):
        mlm = load_mlm(folder, quantization=Quantization(bits=4))
    assert mlm.device.type == "meta"


CASES = [(recipe, hub_id) for recipe in RECIPES for hub_id in recipe_sizes(recipe)]


@pytest.mark.parametrize("recipe,hub_id", CASES, ids=[f"{r.stem}-{h.split('/')[1]}" for r, h in CASES])
def test_real_recipe_resolves_for_every_size_it_names(recipe: Path, hub_id: str) -> None:
    check = check_on_meta(recipe, hub_id)
    n = check.num_layers
    assert check.probe_layers and all(0 <= layer < n for layer in check.probe_layers)
    assert check.probe_layers[-1] == n - 1  # every recipe probes the last layer, whatever the size
    for intervention in check.module.intervention_list:
        if isinstance(intervention, LateLoRA):
            wanted = {layer % n for layer in intervention.layers}
            hit = {int(name.split(".layers.")[1].split(".")[0]) for name in check.lora_modules}
            assert hit == wanted and all(name.startswith(check.module.mlm.adapter.lm_layers)
                                         for name in check.lora_modules)
            assert len(check.lora_modules) == len(wanted) * len(intervention.projections)
    if check.quantization_skips:
        names = {name for name, _ in check.module.mlm.model.named_modules()}
        assert set(check.quantization_skips) <= names


def test_a_layer_written_for_the_7b_stops_the_0_5b(tmp_path: Path) -> None:
    """The failure the real recipes had: probe layer 27 of a 28-layer model on the 24-layer 0.5B."""
    recipe = tmp_path / "prefix.yaml"
    text = next(r for r in RECIPES if r.name == "prefix.yaml").read_text()
    recipe.write_text(re.sub(r"probe_layers: \[[^\]]*\]", "probe_layers: [0, 24, 27]", text))
    check_on_meta(recipe, "llava-hf/llava-onevision-qwen2-7b-ov-hf")
    with pytest.raises(LayerError, match="layer 24 does not exist; the LM has 24 layers"):
        check_on_meta(recipe, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
