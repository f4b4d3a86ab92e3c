"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP + projector + Qwen2 LM.

Image span layout (transformers `pack_image_features`): the base-resolution grid (image_size/patch_size)^2 comes
first, row-major; for a single-image prompt the unpadded anyres crops with newline tokens follow, for
multi-image prompts only one newline token follows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from vkvtrain.models.base import FamilyAdapter, unwrap_model
from vkvtrain.models.processors import ImageOnlyLlavaOnevisionProcessor


class AnyresAdapter(FamilyAdapter):
    """Shared layout of the LLaVA anyres families: the base crop is crop 0 of every image."""

    def projector(self, model: nn.Module) -> nn.Module:
        return unwrap_model(model).model.multi_modal_projector

    def base_grid(self, model: nn.Module) -> tuple[int, int]:
        vision = unwrap_model(model).config.vision_config
        side = vision.image_size // vision.patch_size
        return side, side

    def image_grids(self, model: nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        return [self.base_grid(model)] * n_images

    def resolution(self, processor: Any) -> dict[str, Any]:
        """The crop side and the anyres grid pinpoints every image is tiled over (fixed by the checkpoint)."""
        image_processor = processor.image_processor
        size = image_processor.size
        side = size.height or size.shortest_edge
        pinpoints = [list(p) for p in image_processor.image_grid_pinpoints]
        return {"crop_size": int(side), "grid_pinpoints": len(pinpoints), "largest_pinpoint": max(pinpoints),
                "images": "anyres: base crop + high-resolution crops for every image"}

    def crops_per_image(self, model: nn.Module, inputs: dict[str, Any]) -> list[int]:
        """Number of vision-tower crops of every image, in the order the projector sees them."""
        config = unwrap_model(model).config
        return [
            image_size_to_num_patches(
                image_size=size, grid_pinpoints=config.image_grid_pinpoints, patch_size=config.vision_config.image_size
            )
            for size in inputs["image_sizes"]
        ]

    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
        state: dict[str, Any] = {}
        inner = unwrap_model(model).model

        def remember_inputs(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            state["inputs"] = kwargs

        def grab(_module: nn.Module, args: tuple) -> None:
            features = args[0]  # (total_crops, H*W, D_vision): every crop of every image, image after image
            inputs = state.get("inputs", {})
            if inputs.get("image_sizes") is None:
                return
            starts = torch.tensor([0, *self.crops_per_image(model, inputs)]).cumsum(0)[:-1]
            sink.extend(features[int(s)] for s in starts)

        handles = [
            inner.register_forward_pre_hook(remember_inputs, with_kwargs=True),
            self.projector(model).register_forward_pre_hook(grab),
        ]
        return _Handles(handles)


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class LlavaOnevisionAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_onevision"
    model_type: ClassVar[str] = "llava_onevision"
    model_class_name: ClassVar[str] = "LlavaOnevisionForConditionalGeneration"
    processor_class = ImageOnlyLlavaOnevisionProcessor
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
