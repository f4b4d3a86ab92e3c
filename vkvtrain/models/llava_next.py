"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`), e.g. llama3-llava-next-8b: CLIP + projector + Llama-3 LM.

Image span layout: the base-resolution grid (image_size/patch_size)^2, CLS dropped, comes first, row-major;
the unpadded anyres crops with newline tokens follow, for every image.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import LlavaNextProcessor

from vkvtrain.models.llava_onevision import AnyresAdapter


class LlavaNextAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_next"
    model_type: ClassVar[str] = "llava_next"
    model_class_name: ClassVar[str] = "LlavaNextForConditionalGeneration"
    processor_class = LlavaNextProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|eot_id|>"
