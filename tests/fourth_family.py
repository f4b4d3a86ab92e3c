"""A fourth family in one file: LLaVA-1.5-style `LlavaForConditionalGeneration` (CLIP + MLP projector + LM).

Nothing else in vkvtrain knows this class; `tests/test_fourth_family.py` registers it with the one
`register(LlavaAdapter)` line and runs vkvtrain's paths on it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2Config,
)

from vkvtrain.models.base import FamilyAdapter, HookHandle, submodule, unwrap_model
from vkvtrain.models.tiny_parts import VISION_SHAPES, build_tokenizer, lm_config_kwargs, token_id

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LlavaAdapter(FamilyAdapter):
    family: ClassVar[str] = "llava"
    model_type: ClassVar[str] = "llava"
    model_class_name: ClassVar[str] = "LlavaForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = LlavaProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|im_end|>"
    vision_modules: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector")

    def projector(self, model: nn.Module) -> nn.Module:
        return submodule(model, "model.multi_modal_projector")

    def image_grids(self, model: nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        vision = unwrap_model(model).config.vision_config
        side = vision.image_size // vision.patch_size
        return [(side, side)] * n_images

    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> HookHandle:
        def grab(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sink.extend(args[0])  # (n_images, H*W, D_vision): one crop per image, CLS already dropped

        return self.projector(model).register_forward_pre_hook(grab)

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        tok = build_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"),
                              pad="<|endoftext|>", eos="<|im_end|>")
        shape = VISION_SHAPES[size]
        vision = CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=shape["hidden_size"], **shape)
        config = LlavaConfig(
            text_config=Qwen2Config(**lm_config_kwargs(size, tok)).to_dict(), vision_config=vision.to_dict(),
            image_token_index=token_id(tok, "<image>"), vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration(config)
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   num_additional_image_tokens=1, vision_feature_select_strategy="default",
                                   chat_template=CHAT_TEMPLATE)
        return model, processor
