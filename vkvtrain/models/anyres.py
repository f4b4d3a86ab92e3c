"""The layout the LLaVA anyres families share (LLaVA-OneVision, LLaVA-NeXT): each image is a base-resolution crop
followed by high-resolution crops; the base crop's (image_size/patch_size)^2 grid opens the image's token span.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from vkvtrain.models.base import FamilyAdapter, HookHandle, hf_config, submodule


class AnyresAdapter(FamilyAdapter):
    """Shared layout of the LLaVA anyres families: the base crop is crop 0 of every image."""

    vision_modules: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector")

    def projector(self, model: nn.Module) -> nn.Module:
        return submodule(model, "model.multi_modal_projector")

    def base_grid(self, model: nn.Module) -> tuple[int, int]:
        vision = hf_config(model).vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return side, side

    def image_grids(self, model: nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        return [self.base_grid(model)] * n_images

    def crops_per_image(self, model: nn.Module, inputs: dict[str, Any]) -> list[int]:
        """Number of vision-tower crops of every image, in the order the projector sees them."""
        config = hf_config(model)
        return [
            image_size_to_num_patches(
                image_size=size, grid_pinpoints=config.image_grid_pinpoints, patch_size=config.vision_config.image_size
            )
            for size in inputs["image_sizes"]
        ]

    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> HookHandle:
        state: dict[str, Any] = {}
        inner = submodule(model, "model")

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
