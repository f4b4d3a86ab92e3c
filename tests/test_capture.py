"""KV capture is exact: transformers' own cache and k_proj are the oracles; planted codes prove the grids."""

from __future__ import annotations

import pytest
import torch

from vkvtrain import Prompt
from vkvtrain.errors import CaptureError
from vkvtrain.models.base import unwrap_model
from transformers.vision_utils import get_vision_window_index


def batch_2x2(mlm, make_image):
    """2 prompts x 2 images of different sizes, so left padding and anyres crops differ per row."""
    return mlm.encode([
        Prompt([make_image(40, 30, 1), make_image(32, 32, 2)], "Which is brighter?", prefix="Look:"),
        Prompt([make_image(64, 48, 3), make_image(20, 50, 4)], "Q?"),
    ])


def cached_tokens(tensor, span):
    """(n_kv_heads, L, head_dim) cache rows of one batch element -> (N, kv_dim) at a span."""
    return tensor[:, span.start : span.stop].transpose(0, 1).reshape(span.length, -1)


def test_keys_and_values_equal_the_kv_cache(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = batch_2x2(mlm, make_image)
    with torch.no_grad(), mlm.capture() as kv:
        out = mlm.model(**batch.inputs, use_cache=True)
    assert kv.layers == list(range(mlm.num_layers))
    cache = out.past_key_values
    for layer in kv.layers:
        for row in batch.spans:
            for span in row:
                image = kv.image(layer, span.batch, span.image)
                keys = cached_tokens(cache.layers[layer].keys[span.batch], span)
                values = cached_tokens(cache.layers[layer].values[span.batch], span)
                assert torch.equal(image.keys, keys)  # max abs diff 0 in fp32
                assert torch.equal(image.values, values)
                assert not torch.equal(image.keys, image.keys_pre_rope)  # RoPE did rotate them


def test_pre_rope_keys_equal_k_proj_output(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = batch_2x2(mlm, make_image)
    layer = mlm.num_layers - 1
    seen = {}
    handle = mlm.decoder_layers()[layer].self_attn.k_proj.register_forward_hook(
        lambda _m, _a, out: seen.setdefault("k", out.detach().clone())
    )
    try:
        with torch.no_grad(), mlm.capture([layer]) as kv:
            mlm.model(**batch.inputs)
    finally:
        handle.remove()
    for row in batch.spans:
        for span in row:
            expected = seen["k"][span.batch, span.start : span.stop]
            assert torch.equal(kv.image(layer, span.batch, span.image).keys_pre_rope, expected)


def plant_codes(mlm, codes_by_image):
    """Replace the projector output with per-patch codes; returns the hook handle.

    codes_by_image: callable (flat_image_index, row, col) -> float vector of length hidden.
    """
    model = unwrap_model(mlm.model)
    hidden = mlm.hidden_size
    state = {}

    def code(flat, r, c):
        vector = torch.zeros(hidden)
        vector[:3] = torch.tensor([flat + 1.0, r + 1.0, c + 1.0])
        return vector

    if mlm.family == "qwen2_5_vl":
        visual = model.model.visual
        merge = visual.spatial_merge_size

        def remember(_m, args, kwargs):
            state["grid_thw"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

        def replace(_m, _args, output):
            grid_thw = state["grid_thw"]
            # The merger works in window order; window_index[k] is the row-major slot token k ends up in.
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
            )
            starts, slots = [], []
            for flat, (_t, h, w) in enumerate(grid_thw.tolist()):
                n = (h // merge) * (w // merge)
                slots += [(flat, divmod(k, w // merge)) for k in range(n)]
            codes = torch.stack([code(flat, r, c) for flat, (r, c) in (slots[int(i)] for i in window_index)])
            del starts
            return codes.to(output.dtype)

        return [visual.register_forward_pre_hook(remember, with_kwargs=True),
                visual.merger.register_forward_hook(replace)]

    def replace_anyres(_m, _args, output):
        # output: (total_crops, H*W, hidden); crop 0 of each image is its base-resolution view (single-crop
        # families have one crop per image).
        per_image = getattr(mlm.adapter, "crops_per_image", None)
        crops = per_image(mlm.model, state["inputs"]) if per_image else [1] * output.shape[0]
        side = int(output.shape[1] ** 0.5)
        new = torch.zeros_like(output)
        first = 0
        for flat, n in enumerate(crops):
            for p in range(output.shape[1]):
                new[first, p] = code(flat, *divmod(p, side))
            first += n
        return new

    def remember_inputs(_m, _args, kwargs):
        state["inputs"] = kwargs

    return [model.model.register_forward_pre_hook(remember_inputs, with_kwargs=True),
            mlm.adapter.projector(mlm.model).register_forward_hook(replace_anyres)]


def test_planted_projector_codes_come_back_at_their_grid_cells(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = batch_2x2(mlm, make_image)
    handles = plant_codes(mlm, None)
    try:
        with torch.no_grad(), mlm.capture([0], input_embeds=True) as kv:
            mlm.model(**batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    flat = 0
    for row in batch.spans:
        for span in row:
            grid = kv.embeds(span.batch, span.image).grid()
            height, width = span.grid_shape
            assert grid.shape[:2] == (height, width)
            rows = torch.arange(height)[:, None].expand(height, width)
            cols = torch.arange(width)[None, :].expand(height, width)
            assert torch.equal(grid[..., 0], torch.full((height, width), flat + 1.0))
            assert torch.equal(grid[..., 1], rows + 1.0)
            assert torch.equal(grid[..., 2], cols + 1.0)
            flat += 1


def test_vision_features_project_to_the_input_embeddings(tiny_mlm, family, make_image):
    """Projector(captured vision features) == captured LM input embeddings: both views index the same patches."""
    mlm = tiny_mlm(family)
    batch = batch_2x2(mlm, make_image)
    with torch.no_grad(), mlm.capture([0], input_embeds=True, vision_features=True) as kv:
        mlm.model(**batch.inputs)
    projector = mlm.adapter.projector(mlm.model)
    for row in batch.spans:
        for span in row:
            vision = kv.vision(span.batch, span.image)
            embeds = kv.embeds(span.batch, span.image).grid()
            with torch.no_grad():
                if family == "qwen2_5_vl":
                    tokens = vision.values
                    projected = projector(tokens.reshape(-1, tokens.shape[-1] // 4))
                else:
                    projected = projector(vision.values[None])[0]
            assert torch.allclose(projected.reshape(embeds.shape), embeds, atol=1e-5)


def test_text_positions_are_captured_exactly(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = batch_2x2(mlm, make_image)
    length = batch.input_ids.shape[1]
    with torch.no_grad(), mlm.capture([1], text_positions=[(0, -1), (1, length - 3)]) as kv:
        out = mlm.model(**batch.inputs, use_cache=True)
    cache = out.past_key_values.layers[1]
    for b, pos in [(0, -1), (1, length - 3)]:
        got = kv.text(1, b, pos)
        assert torch.equal(got["keys"], cache.keys[b, :, pos].reshape(-1))
        assert torch.equal(got["values"], cache.values[b, :, pos].reshape(-1))


def test_hooks_are_removed_also_when_the_forward_raises(tiny_mlm, make_image):
    mlm = tiny_mlm("llava_onevision")
    modules = list(mlm.model.modules())
    batch = mlm.encode([Prompt([make_image(32, 32)], "q")])
    with torch.no_grad():
        mlm.model(**batch.inputs)  # transformers installs its own output-recording hooks on the first call
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
    with pytest.raises(RuntimeError, match="boom"):
        with mlm.capture(input_embeds=True, vision_features=True):
            raise RuntimeError("boom")
    bad = dict(batch.inputs, pixel_values=batch.inputs["pixel_values"][..., :5])
    with pytest.raises(Exception):
        with mlm.capture():
            mlm.model(**bad)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules) == before


def test_grad_mode_keeps_the_graph_and_default_detaches(tiny_mlm, make_image):
    mlm = tiny_mlm("qwen2_5_vl")
    batch = mlm.encode([Prompt([make_image(32, 32)], "q")])
    with mlm.capture([2], grad=True) as kv:
        mlm.model(**batch.inputs)
    keys = kv.image(2, 0, 0).keys
    assert keys.requires_grad
    keys.pow(2).sum().backward()
    assert mlm.decoder_layers()[2].self_attn.k_proj.weight.grad is not None
    with mlm.capture([2], input_embeds=True, text_positions=[(0, -1)]) as plain:
        mlm.model(**batch.inputs)
    assert not plain.image(2, 0, 0).keys.requires_grad
    # grad mode reads the same tensors (gathered after the forward) for every view
    with mlm.capture([2], grad=True, input_embeds=True, text_positions=[(0, -1)]) as kv:
        mlm.model(**batch.inputs)
    assert kv.embeds(0, 0).values.requires_grad
    assert torch.equal(kv.embeds(0, 0).values.detach(), plain.embeds(0, 0).values)
    assert torch.equal(kv.image(2, 0, 0).values.detach(), plain.image(2, 0, 0).values)
    for name, tensor in plain.text(2, 0, -1).items():
        assert torch.equal(kv.text(2, 0, -1)[name].detach(), tensor)


def test_only_image_positions_are_kept_and_views_have_shapes(tiny_mlm, make_image):
    mlm = tiny_mlm("llava_next")
    batch = mlm.encode([Prompt([make_image(64, 48)], "q")])
    span = batch.spans[0][0]
    with torch.no_grad(), mlm.capture([0, -1]) as kv:
        mlm.model(**batch.inputs)
    assert kv.layers == [0, mlm.num_layers - 1]
    image = kv.image(0, 0, 0)
    assert image.values.shape == (span.length, mlm.kv_dim)
    assert image.grid("keys").shape == (*span.grid_shape, mlm.kv_dim)
    heads = image.heads("values")
    assert heads.shape == (mlm.num_kv_heads, span.length, mlm.head_dim)
    assert torch.equal(heads[1, 3], image.values[3, mlm.head_dim : 2 * mlm.head_dim])
    assert kv.tokens("values", 0).shape[0] == span.length
    with pytest.raises(CaptureError, match="not captured"):
        kv.image(1, 0, 0)


def test_generate_keeps_the_prefill(tiny_mlm, make_image):
    mlm = tiny_mlm("llava_onevision")
    batch = mlm.encode([Prompt([make_image(32, 32)], "q")])
    with torch.no_grad(), mlm.capture([0]) as kv:
        out = mlm.model(**batch.inputs)
    expected = kv.image(0, 0, 0).values.clone()
    with torch.no_grad(), mlm.capture([0]) as kv:
        mlm.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False, pad_token_id=mlm.tokenizer.pad_token_id)
    assert torch.equal(kv.image(0, 0, 0).values, expected)
    del out


def assert_planted_grids_and_exact_kv(mlm, batch):
    """Planted projector codes come back at their grid cells and captured K/V equal the cache, every span."""
    handles = plant_codes(mlm, None)
    try:
        with torch.no_grad(), mlm.capture(input_embeds=True) as kv:
            out = mlm.model(**batch.inputs, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    for flat, span in enumerate(span for row in batch.spans for span in row):
        h, w = span.grid_shape
        grid = kv.embeds(span.batch, span.image).grid()
        assert torch.equal(grid[..., 0], torch.full((h, w), flat + 1.0))
        assert torch.equal(grid[..., 1], torch.arange(h)[:, None].expand(h, w) + 1.0)
        assert torch.equal(grid[..., 2], torch.arange(w)[None, :].expand(h, w) + 1.0)
        for layer in kv.layers:
            image = kv.image(layer, span.batch, span.image)
            assert torch.equal(image.keys, cached_tokens(out.past_key_values.layers[layer].keys[span.batch], span))
            assert torch.equal(image.values, cached_tokens(out.past_key_values.layers[layer].values[span.batch], span))


def real_geometry_llava_onevision():
    """LLaVA-OneVision with the published vision geometry (SigLIP 384 px / 14 px patches = 27 x 27 grid, the
    6 x 6 anyres pinpoints, anyres_max_9) and tiny widths, so the real span layout runs on CPU."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from vkvtrain.models.llava_onevision import LlavaOnevisionAdapter
    from vkvtrain.mlm import MLM
    from vkvtrain.models.processors import ImageOnlyLlavaOnevisionProcessor
    from vkvtrain.models.llava_onevision import CHAT_TEMPLATE, text_config, tokenizer as family_tokenizer

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    vision = SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2)
    text = text_config("tiny", tokenizer).to_dict()
    text["num_hidden_layers"], text["layer_types"] = 2, text["layer_types"][:2]
    config = LlavaOnevisionConfig(
        text_config=text, vision_config=vision.to_dict(), image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        attn_implementation="sdpa",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384},
                                                      image_grid_pinpoints=pinpoints, do_pad=True)
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=27 * 27,
        vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
    )
    processor.tokenizer.padding_side = "left"
    return MLM(model=model, processor=processor, adapter=LlavaOnevisionAdapter(), name="real-geometry-ov")


def test_real_llava_onevision_geometry_anyres_max_9(make_image):
    """A 1536 x 1152 image takes the anyres_max_9 downscaling path (12 crops > 9); a 2-image prompt only
    packs base grids. Spans, 27 x 27 grids (planted codes) and cached keys/values must all still be exact."""
    mlm = real_geometry_llava_onevision()
    batch = mlm.encode([Prompt([make_image(1536, 1152, 1)], "Q?"),
                        Prompt([make_image(500, 300, 2), make_image(384, 384, 3)], "Which?")])
    lengths = [span.length for row in batch.spans for span in row]
    unpadded_4x3_crops = (4 * 27) * (3 * 27) + 4 * 27  # features + one newline per row, before anyres_max_9
    assert 27 * 27 + 9 * 27 * 27 < lengths[0] < 27 * 27 + unpadded_4x3_crops  # downscaled to ~9 crops' worth
    assert lengths[1:] == [27 * 27 + 1, 27 * 27 + 1]  # multi-image prompts: base grid + one newline token
    assert all(span.grid_shape == (27, 27) for row in batch.spans for span in row)
    assert_planted_grids_and_exact_kv(mlm, batch)


def real_geometry_qwen2_5_vl():
    """Qwen2.5-VL with the published vision geometry (14 px patches, 2 x 2 merge, 112 px attention windows,
    processor pixel bounds) and tiny widths."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vkvtrain.mlm import MLM
    from vkvtrain.models.processors import ImageOnlyQwen2_5_VLProcessor
    from vkvtrain.models.qwen2_5_vl import Qwen2_5_VLAdapter
    from vkvtrain.models.qwen2_5_vl import CHAT_TEMPLATE, text_config, tokenizer as family_tokenizer

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    text = text_config("tiny", tokenizer)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"), attn_implementation="sdpa",
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    processor.tokenizer.padding_side = "left"
    return MLM(model=model, processor=processor, adapter=Qwen2_5_VLAdapter(), name="real-geometry-qwen2.5-vl")


def test_real_qwen2_5_vl_geometry_partial_windows(make_image):
    """Merged grids that 4 x 4-token windows do not tile (25 x 18, 9 x 14): planted codes come back at their
    cells, the vision features un-permuted from window order project onto the embeddings, K/V are exact."""
    mlm = real_geometry_qwen2_5_vl()
    batch = mlm.encode([Prompt([make_image(700, 504, 1)], "Q?"),
                        Prompt([make_image(252, 392, 2), make_image(224, 224, 3)], "Which?")])
    grids = [span.grid_shape for row in batch.spans for span in row]
    assert grids == [(18, 25), (14, 9), (8, 8)]
    assert_planted_grids_and_exact_kv(mlm, batch)
    with torch.no_grad(), mlm.capture([0], input_embeds=True, vision_features=True) as kv:
        mlm.model(**batch.inputs)
    projector = mlm.adapter.projector(mlm.model)
    for span in (span for row in batch.spans for span in row):
        tokens = kv.vision(span.batch, span.image).values
        with torch.no_grad():
            projected = projector(tokens.reshape(-1, tokens.shape[-1] // 4))
        embeds = kv.embeds(span.batch, span.image).grid()
        assert torch.allclose(projected.reshape(embeds.shape), embeds, atol=1e-5)


def real_geometry_llava_next():
    """Llama-3-LLaVA-NeXT with the published vision geometry (CLIP 336 px / 14 px = 24 x 24 grid, its five
    pinpoints, CLS dropped) and tiny widths."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from vkvtrain.models.llava_next import LlavaNextAdapter
    from vkvtrain.mlm import MLM
    from vkvtrain.models.llava_next import CHAT_TEMPLATE, text_config, tokenizer as family_tokenizer

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    config = LlavaNextConfig(
        text_config=text_config("tiny", tokenizer).to_dict(), vision_config=vision.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2, vision_feature_select_strategy="default", attn_implementation="sdpa",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   num_additional_image_tokens=1, vision_feature_select_strategy="default",
                                   chat_template=CHAT_TEMPLATE)
    processor.tokenizer.padding_side = "left"
    return MLM(model=model, processor=processor, adapter=LlavaNextAdapter(), name="real-geometry-llava-next")


def test_real_llava_next_geometry(make_image):
    """Wide, tall and square images pick different pinpoints; every span opens with its 24 x 24 base grid."""
    mlm = real_geometry_llava_next()
    batch = mlm.encode([Prompt([make_image(900, 300, 1)], "Q?"),
                        Prompt([make_image(300, 900, 2), make_image(640, 600, 3)], "Which?")])
    assert all(span.grid_shape == (24, 24) for row in batch.spans for span in row)
    assert len({span.length for row in batch.spans for span in row}) == 3  # three different anyres layouts
    assert_planted_grids_and_exact_kv(mlm, batch)
