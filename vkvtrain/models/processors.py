"""Processor classes that build without a video processor.

The stock `LlavaOnevisionProcessor` and `Qwen2_5_VLProcessor` construct a video processor, which needs
torchvision; on CPU-only machines torchvision is not installable without breaking transformers. vkvtrain only
feeds images, so these subclasses drop the video processor and are otherwise the stock classes: same
tokenization, same image-token expansion, same chat templates, same saved files.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaOnevisionProcessor, Qwen2_5_VLProcessor


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` without its video processor."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("video_processor", None)
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without its video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.pop("video_processor", None)
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=chat_template,
            **kwargs,
        )
