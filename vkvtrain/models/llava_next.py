"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`), e.g. llama3-llava-next-8b: CLIP + projector + Llama-3 LM.

Image span layout: the base-resolution grid (image_size/patch_size)^2, CLS dropped, comes first, row-major;
the unpadded anyres crops with newline tokens follow, for every image.

Published size (``tiny://llava_next@8b``) and where each value comes from:

| value | 8b | source |
|---|---|---|
| hub id | llava-hf/llama3-llava-next-8b-hf | |
| LM | Meta-Llama-3-8B-Instruct: hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV heads (head_dim 128) | [H] (width, layers and heads are LlamaConfig defaults the file leaves out) |
| vocab_size, tied embeddings | 128320, no | [H] (128256 + <image> + <pad>, padded to a multiple of 64) |
| rope_theta, rms_norm_eps, max positions | 500000, 1e-5, 8192 | [H] |
| CLIP ViT-L/14-336: width, MLP, layers, heads, projection | 1024, 4096, 24, 16, 768 | [H] |
| CLIP image / patch (grid) | 336 / 14 (24 x 24 = 576 tokens + CLS, dropped) | [H] |
| pinpoints | [336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008] | [H] |
| feature layer, strategy, projector | -2, default, 2-layer GELU MLP with bias | [H], [D] |
| special token ids | <|begin_of_text|> 128000, <|start_header_id|> 128006, <|end_header_id|> 128007, <|eot_id|> 128009, <image> 128256, <pad> 128257 | [H] (image), Llama-3 tokenizer; <pad> after <image> as the conversion adds them |
| image processor | shortest edge 336, 336 x 336 crops, CLIP mean/std, bicubic, same pinpoints | openai/clip-vit-large-patch14-336 preprocessor + [H] pinpoints |

[H] the checkpoint's config.json (as its public copies show it); [D] `LlavaNextConfig` defaults. The least certain
value is the <pad> id (128257: derived from the order the conversion script adds tokens; not used by any shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from vkvtrain.models.anyres import AnyresAdapter
from vkvtrain.models.base import PublishedSize
from vkvtrain.models.tiny_parts import RandomShape, build_tokenizer, lm_config_kwargs, token_id

#: Llama-3 chat format as llama3-llava-next-8b-hf publishes it (images of a turn before its text).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}{{ '<|begin_of_text|>' }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<pad>", "<image>")
#: the published ids of SPECIAL_TOKENS
PUBLISHED_TOKEN_IDS = {"<|begin_of_text|>": 128000, "<|eot_id|>": 128009, "<|start_header_id|>": 128006,
                       "<|end_header_id|>": 128007, "<pad>": 128257, "<image>": 128256}
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

PUBLISHED: dict[str, PublishedSize] = {
    "8b": PublishedSize(
        hub_id="llava-hf/llama3-llava-next-8b-hf",
        text=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128320, tie_word_embeddings=False, rope_theta=500000.0,
                  rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128009,
                  pad_token_id=128257),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768),
        model=dict(image_token_index=128256, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                   vision_feature_select_strategy="default", projector_hidden_act="gelu",
                   multimodal_projector_bias=True, tie_word_embeddings=False),
        processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                       image_grid_pinpoints=PINPOINTS),
        special_tokens=PUBLISHED_TOKEN_IDS,
    ),
}


def tokenizer(ids: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """The byte-level stand-in for the Llama-3 tokenizer, with LLaVA-NeXT's special tokens (at ``ids`` when
    given: a published checkpoint's ids)."""
    return build_tokenizer(SPECIAL_TOKENS, pad="<pad>", eos="<|eot_id|>", bos="<|begin_of_text|>", ids=ids)


def text_config(size: str | Mapping[str, Any], tok: PreTrainedTokenizerFast) -> LlamaConfig:
    """The Llama LM config of a tiny checkpoint at ``size`` (a tiny size or an LM shape; untied head, as
    Llama-3-8B)."""
    return LlamaConfig(**lm_config_kwargs(size, tok), tie_word_embeddings=False)


def build_processor(image_processor: LlavaNextImageProcessorPil, tok: PreTrainedTokenizerFast,
                    patch_size: int) -> LlavaNextProcessor:
    """The family's processor (the CLIP CLS token is counted, then dropped by the "default" strategy)."""
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch_size, num_additional_image_tokens=1,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
    )


class LlavaNextAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_next"
    model_type: ClassVar[str] = "llava_next"
    model_class_name: ClassVar[str] = "LlavaNextForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = LlavaNextProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|eot_id|>"
    published_sizes: ClassVar[Mapping[str, PublishedSize]] = PUBLISHED

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """CLIP 32 px / 8 px patches (a 4 x 4 base grid, CLS dropped), anyres pinpoints up to 64 x 64, Llama LM."""
        return self.build_random(RandomShape.of_size(size))

    def build_random(self, shape: RandomShape) -> tuple[PreTrainedModel, ProcessorMixin]:
        tok = shape.tokenizer(tokenizer())
        side, pinpoints = shape.image_size, shape.grid_pinpoints()
        vision = CLIPVisionConfig(image_size=side, patch_size=8, projection_dim=shape.vision["hidden_size"],
                                  **shape.vision)
        config = LlavaNextConfig(
            text_config=text_config(shape.lm, tok).to_dict(), vision_config=vision.to_dict(),
            image_token_index=token_id(tok, "<image>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
        )
        model = LlavaNextForConditionalGeneration(config)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side},
            image_grid_pinpoints=pinpoints,
        )
        return model, build_processor(image_processor, tok, patch_size=8)

    def build_published(self, size: str) -> tuple[PretrainedConfig, ProcessorMixin]:
        spec = self.published(size)
        config = LlavaNextConfig(
            text_config=LlamaConfig(**spec.text).to_dict(), vision_config=CLIPVisionConfig(**spec.vision).to_dict(),
            **spec.model,
        )
        image_processor = LlavaNextImageProcessorPil(**spec.processor)
        return config, build_processor(image_processor, tokenizer(dict(spec.special_tokens)),
                                       patch_size=spec.vision["patch_size"])
