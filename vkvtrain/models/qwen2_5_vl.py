"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): windowed ViT + 2x2 patch merger + Qwen2.5 LM.

Image span layout: one token per merged 2x2 patch block, row-major over (t, h/2, w/2) of `image_grid_thw`
(the vision model undoes its window permutation after the merger). Still images have t = 1.

Published sizes (``tiny://qwen2_5_vl@3b`` / ``@7b``) and where each value comes from:

| value | 3b | 7b | source |
|---|---|---|---|
| hub id | Qwen/Qwen2.5-VL-3B-Instruct | Qwen/Qwen2.5-VL-7B-Instruct | |
| hidden / MLP width | 2048 / 11008 | 3584 / 18944 | [H] |
| layers, heads, KV heads (head_dim) | 36, 16, 2 (128) | 28, 28, 4 (128) | [H] |
| vocab_size, tied embeddings | 151936, yes | 152064, no | [H] |
| rope_theta, M-RoPE sections, rms_norm_eps, max positions | 1e6, [16, 24, 24], 1e-6, 128000 | same | [H] |
| ViT: width, layers, heads, MLP | 1280, 32, 16, 3420 | same | width [H]; the rest [D] |
| ViT: patch, merge, temporal patch, window, full-attention blocks | 14, 2 x 2, 2, 112 px, [7, 15, 23, 31] | same | patch [H]; the rest [D] |
| merger output width | 2048 | 3584 | [H] (3b); = LM width (7b, [D]) |
| special token ids | <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|vision_start|> 151652, <|vision_end|> 151653, <|image_pad|> 151655, <|video_pad|> 151656 | same | [H] |
| image processor | min_pixels 3136 (56^2), max_pixels 12845056 (28^2 x 16384), CLIP mean/std | same | [P] |

[H] the checkpoints' config.json; [P] their preprocessor_config.json; [D] transformers' `Qwen2_5_VLVisionConfig`
defaults (the published config.json lists only the vision fields that differ from them). The least certain value
is the ViT MLP width 3420 (a default, not read from the 3B/7B files; the 72B states 3456).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.image_utils import SizeDict
from transformers.vision_utils import get_vision_window_index

from vkvtrain.errors import PromptError
from vkvtrain.models.base import FamilyAdapter, HookHandle, PublishedSize, hf_config, submodule, unwrap_model
from vkvtrain.models.processors import ImageOnlyQwen2_5_VLProcessor
from vkvtrain.models.tiny_parts import (
    LM_SHAPES,
    VISION_SHAPES,
    build_tokenizer,
    lm_config_kwargs,
    token_id,
)

#: Qwen2.5-VL's ChatML with its default system turn; images are rendered where they stand in the content.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
#: the published ids of SPECIAL_TOKENS
PUBLISHED_TOKEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                       "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                       "<|video_pad|>": 151656}
_VIT = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
            hidden_act="silu", in_channels=3)
_QWEN2_5 = dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                rms_norm_eps=1e-6, max_position_embeddings=128000, bos_token_id=151643, eos_token_id=151645,
                pad_token_id=151643, sliding_window=32768, use_sliding_window=False)
_TOP = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
_PROCESSOR = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                  size={"shortest_edge": 3136, "longest_edge": 12845056},
                  image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])

PUBLISHED: dict[str, PublishedSize] = {
    "3b": PublishedSize(
        hub_id="Qwen/Qwen2.5-VL-3B-Instruct",
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_window_layers=70,
                  **_QWEN2_5),
        vision=dict(_VIT, out_hidden_size=2048), model=dict(_TOP, tie_word_embeddings=True), processor=_PROCESSOR,
        special_tokens=PUBLISHED_TOKEN_IDS,
    ),
    "7b": PublishedSize(
        hub_id="Qwen/Qwen2.5-VL-7B-Instruct",
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_window_layers=28,
                  **_QWEN2_5),
        vision=dict(_VIT, out_hidden_size=3584), model=dict(_TOP, tie_word_embeddings=False), processor=_PROCESSOR,
        special_tokens=PUBLISHED_TOKEN_IDS,
    ),
}


def tokenizer(ids: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """The byte-level stand-in for the Qwen2.5 tokenizer, with Qwen2.5-VL's special tokens (at ``ids`` when
    given: a published checkpoint's ids)."""
    return build_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>", ids=ids)


def text_config(size: str, tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The Qwen2.5 LM config fields of a tiny checkpoint at ``size``, with M-RoPE sections that split
    head_dim/2 in the proportions of the real 16/24/24 of 64."""
    fields: dict[str, Any] = dict(lm_config_kwargs(size, tok))
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 3 * quarter, quarter + quarter // 2, quarter + quarter - quarter // 2]
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope}
    return fields


class Qwen2_5_VLAdapter(FamilyAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    model_type: ClassVar[str] = "qwen2_5_vl"
    model_class_name: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = ImageOnlyQwen2_5_VLProcessor
    image_placeholder: ClassVar[str] = "<|vision_start|>"
    turn_end: ClassVar[str] = "<|im_end|>"
    vision_modules: ClassVar[tuple[str, ...]] = ("model.visual",)  # the vision tower and its merger (projector)
    published_sizes: ClassVar[Mapping[str, PublishedSize]] = PUBLISHED

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """A windowed ViT with 4 px patches, 2 x 2 merge and 16 px windows (images of 16^2..64^2 pixels),
        Qwen2.5 LM with M-RoPE."""
        tok = tokenizer()
        shape = VISION_SHAPES[size]
        vision = dict(depth=shape["num_hidden_layers"], hidden_size=shape["hidden_size"],
                      intermediate_size=shape["intermediate_size"], num_heads=shape["num_attention_heads"],
                      out_hidden_size=LM_SHAPES[size]["hidden_size"], patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=16, fullatt_block_indexes=[shape["num_hidden_layers"] - 1])
        config = Qwen2_5_VLConfig(
            text_config=text_config(size, tok), vision_config=vision,
            image_token_id=token_id(tok, "<|image_pad|>"),
            video_token_id=token_id(tok, "<|video_pad|>"),
            vision_start_token_id=token_id(tok, "<|vision_start|>"),
            vision_end_token_id=token_id(tok, "<|vision_end|>"), tie_word_embeddings=True,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=4, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
        )
        processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                                 chat_template=CHAT_TEMPLATE)
        return model, processor

    def build_published(self, size: str) -> tuple[PretrainedConfig, ProcessorMixin]:
        spec = self.published(size)
        config = Qwen2_5_VLConfig(text_config=dict(spec.text), vision_config=dict(spec.vision), **spec.model)
        processor = ImageOnlyQwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(**spec.processor),
            tokenizer=tokenizer(dict(spec.special_tokens)), chat_template=CHAT_TEMPLATE,
        )
        return config, processor

    def projector(self, model: nn.Module) -> nn.Module:
        return submodule(model, "model.visual.merger")

    def merge_size(self, model: nn.Module) -> int:
        return int(hf_config(model).vision_config.spatial_merge_size)

    def image_grids(self, model: nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        grid_thw = inputs.get("image_grid_thw")
        if grid_thw is None or len(grid_thw) != n_images:
            raise PromptError(
                f"Qwen2.5-VL inputs carry {0 if grid_thw is None else len(grid_thw)} image_grid_thw rows for "
                f"{n_images} image spans; pass the processor's image_grid_thw through unchanged."
            )
        merge = self.merge_size(model)
        grids = []
        for t, h, w in grid_thw.tolist():
            if t != 1:
                raise PromptError(f"Qwen2.5-VL image with temporal grid {t}: vkvtrain reads still images only (t=1).")
            grids.append((h // merge, w // merge))
        return grids

    def resolution(self, processor: Any) -> dict[str, Any]:
        """min_pixels / max_pixels: the pixel budget every image is resized into (sides multiples of
        patch_size * merge_size, aspect kept), as the image processor's ``size`` holds it."""
        image_processor = processor.image_processor
        size = image_processor.size
        return {"min_pixels": int(size.shortest_edge), "max_pixels": int(size.longest_edge),
                "patch_size": int(image_processor.patch_size), "merge_size": int(image_processor.merge_size)}

    def set_resolution(self, processor: Any, settings: dict[str, Any]) -> None:
        unknown = sorted(set(settings) - {"min_pixels", "max_pixels"})
        if unknown:
            raise PromptError(f"qwen2_5_vl has no resolution setting {unknown}; it has min_pixels and max_pixels.")
        current = self.resolution(processor)
        low = settings.get("min_pixels") or current["min_pixels"]
        high = settings.get("max_pixels") or current["max_pixels"]
        if low > high:
            raise PromptError(f"qwen2_5_vl min_pixels={low} exceeds max_pixels={high}.")
        # The processor reads size.shortest_edge / size.longest_edge as the pixel budget (transformers 5).
        processor.image_processor.size = SizeDict(shortest_edge=int(low), longest_edge=int(high))

    def continuation_position_ids(self, model: nn.Module, prompt_mask: torch.Tensor, rows: torch.Tensor,
                                  length: int) -> torch.Tensor | None:
        """(3, R, length) M-RoPE positions: image tokens advance positions by their grid, not their count, so
        the next position of prompt b is ``n_real_tokens[b] + rope_deltas[b]``, where transformers keeps
        ``rope_deltas`` (B, 1) from the prompt's forward."""
        deltas = getattr(unwrap_model(model).model, "rope_deltas", None)
        if deltas is None:
            raise PromptError("Qwen2.5-VL continuation asked before a prompt forward set rope_deltas; "
                              "run the prompt through the model first.")
        nxt = prompt_mask.sum(1, keepdim=True).to(deltas.device) + deltas  # (B, 1)
        pos = nxt[rows.to(deltas.device)] + torch.arange(length, device=deltas.device)[None]  # (R, length)
        return pos[None].expand(3, -1, -1)

    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> HookHandle:
        visual = submodule(model, "model.visual")
        merge = self.merge_size(model)

        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            assert isinstance(grid_thw, torch.Tensor)
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=merge, window_size=int(getattr(module, "window_size")),
                patch_size=int(getattr(module, "patch_size")),
            )
            patches = output.last_hidden_state  # (n_patches, D_vision) in window order
            units = patches.reshape(-1, merge * merge * patches.shape[-1])  # one row per merged 2x2 block
            units = units[torch.argsort(window_index)]  # back to row-major (t, h/2, w/2) order
            sizes = (grid_thw.prod(-1) // (merge * merge)).tolist()
            sink.extend(units.split(sizes))

        return visual.register_forward_hook(grab, with_kwargs=True)
