"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): windowed ViT + 2x2 patch merger + Qwen2.5 LM.

Image span layout: one token per merged 2x2 patch block, row-major over (t, h/2, w/2) of `image_grid_thw`
(the vision model undoes its window permutation after the merger). Still images have t = 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.image_utils import SizeDict
from transformers.vision_utils import get_vision_window_index

from vkvtrain.errors import PromptError
from vkvtrain.models.base import FamilyAdapter, unwrap_model
from vkvtrain.models.processors import ImageOnlyQwen2_5_VLProcessor


class Qwen2_5_VLAdapter(FamilyAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    model_type: ClassVar[str] = "qwen2_5_vl"
    model_class_name: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    processor_class = ImageOnlyQwen2_5_VLProcessor
    image_placeholder: ClassVar[str] = "<|vision_start|>"
    turn_end: ClassVar[str] = "<|im_end|>"

    def projector(self, model: nn.Module) -> nn.Module:
        return unwrap_model(model).model.visual.merger

    def merge_size(self, model: nn.Module) -> int:
        return int(unwrap_model(model).config.vision_config.spatial_merge_size)

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

    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
        visual = unwrap_model(model).model.visual
        merge = self.merge_size(model)

        def grab(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=merge, window_size=module.window_size, patch_size=module.patch_size
            )
            patches = output.last_hidden_state  # (n_patches, D_vision) in window order
            units = patches.reshape(-1, merge * merge * patches.shape[-1])  # one row per merged 2x2 block
            units = units[torch.argsort(window_index)]  # back to row-major (t, h/2, w/2) order
            sizes = (grid_thw.prod(-1) // (merge * merge)).tolist()
            sink.extend(units.split(sizes))

        return visual.register_forward_hook(grab, with_kwargs=True)
