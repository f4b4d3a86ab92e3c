"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP + projector + Qwen2 LM.

Image span layout (transformers `pack_image_features`): the base-resolution grid (image_size/patch_size)^2 comes
first, row-major; for a single-image prompt the unpadded anyres crops with newline tokens follow, for
multi-image prompts only one newline token follows.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
    SiglipVisionConfig,
)

from vkvtrain.models.anyres import AnyresAdapter
from vkvtrain.models.processors import ImageOnlyLlavaOnevisionProcessor
from vkvtrain.models.tiny_parts import (
    VISION_SHAPES,
    build_tokenizer,
    lm_config_kwargs,
    token_id,
)

#: ChatML as LLaVA-OneVision publishes it: every image of a turn is rendered before its text, so a prefix
#: before the image has to be placed by vkvtrain (see vkvtrain/prompts.py).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level stand-in for the Qwen2 tokenizer, with LLaVA-OneVision's special tokens."""
    return build_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")


def text_config(size: str, tok: PreTrainedTokenizerFast) -> Qwen2Config:
    """The Qwen2 LM config of a tiny checkpoint at ``size``."""
    return Qwen2Config(**lm_config_kwargs(size, tok), tie_word_embeddings=True)


class LlavaOnevisionAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_onevision"
    model_type: ClassVar[str] = "llava_onevision"
    model_class_name: ClassVar[str] = "LlavaOnevisionForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = ImageOnlyLlavaOnevisionProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|im_end|>"

    def resolution(self, processor: Any) -> dict[str, Any]:
        settings = super().resolution(processor)
        settings["images"] = (f"single image: {processor.vision_aspect_ratio}; multi-image prompts: each image "
                              "padded to a square with the image mean, base crop only")
        return settings

    def crops_per_image(self, model: nn.Module, inputs: dict[str, Any]) -> list[int]:
        # Multi-image prompts use only the base crop of each image (transformers `get_image_features`).
        crops = super().crops_per_image(model, inputs)
        per_prompt = inputs.get("batch_num_images")
        if per_prompt is None:
            return crops
        single = [int(n) == 1 for n in per_prompt for _ in range(int(n))]
        return [c if keep else 1 for c, keep in zip(crops, single)]

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """SigLIP 32 px / 8 px patches (a 4 x 4 base grid), anyres pinpoints up to 64 x 64, Qwen2 LM."""
        tok = tokenizer()
        pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
        vision = SiglipVisionConfig(image_size=32, patch_size=8, **VISION_SHAPES[size])
        config = LlavaOnevisionConfig(
            text_config=text_config(size, tok).to_dict(), vision_config=vision.to_dict(),
            image_token_index=token_id(tok, "<image>"),
            video_token_index=token_id(tok, "<video>"),
            image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", tie_word_embeddings=True,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints, do_pad=True,
        )
        processor = ImageOnlyLlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tok, num_image_tokens=(32 // 8) ** 2,
            vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
        )
        return model, processor

