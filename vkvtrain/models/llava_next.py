"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`), e.g. llama3-llava-next-8b: CLIP + projector + Llama-3 LM.

Image span layout: the base-resolution grid (image_size/patch_size)^2, CLS dropped, comes first, row-major;
the unpadded anyres crops with newline tokens follow, for every image.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from vkvtrain.models.anyres import AnyresAdapter
from vkvtrain.models.tiny_parts import (
    VISION_SHAPES,
    build_tokenizer,
    lm_config_kwargs,
    token_id,
)

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


def tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level stand-in for the Llama-3 tokenizer, with LLaVA-NeXT's special tokens."""
    return build_tokenizer(SPECIAL_TOKENS, pad="<pad>", eos="<|eot_id|>", bos="<|begin_of_text|>")


def text_config(size: str, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    """The Llama LM config of a tiny checkpoint at ``size`` (untied head, as Llama-3-8B)."""
    return LlamaConfig(**lm_config_kwargs(size, tok), tie_word_embeddings=False)


class LlavaNextAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_next"
    model_type: ClassVar[str] = "llava_next"
    model_class_name: ClassVar[str] = "LlavaNextForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = LlavaNextProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|eot_id|>"

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """CLIP 32 px / 8 px patches (a 4 x 4 base grid, CLS dropped), anyres pinpoints up to 64 x 64, Llama LM."""
        tok = tokenizer()
        pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
        shape = VISION_SHAPES[size]
        vision = CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=shape["hidden_size"], **shape)
        config = LlavaNextConfig(
            text_config=text_config(size, tok).to_dict(), vision_config=vision.to_dict(),
            image_token_index=token_id(tok, "<image>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
        )
        model = LlavaNextForConditionalGeneration(config)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=8, num_additional_image_tokens=1,
            vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        )
        return model, processor
