"""The image side of the key input-agnosticism probe: every image is resized to it so all share one grid.

Input-agnosticism compares the key at one image position across images, so the images must give the same
token grid, and that grid should be the one the model usually sees. The default is read from the model's
image processor:

* fixed-resolution processors (LLaVA-OneVision: ``size`` 384 -> SigLIP's 27 x 27 base grid; LLaVA-NeXT:
  ``crop_size`` 336 -> CLIP's 24 x 24 base grid): that resolution;
* dynamic-resolution processors (Qwen2.5-VL: ``patch_size`` x ``merge_size`` = 28 px per token, any grid):
  :data:`DYNAMIC_GRID_SIDE` tokens per side (672 px -> 24 x 24), kept inside the processor's pixel limits.
"""

from __future__ import annotations

import math
from typing import Any

from vkvtrain.errors import RecipeError

#: tokens per side for dynamic-resolution processors: 24 x 24 = 576 tokens, LLaVA-NeXT's grid, and inside the
#: 256..1280-token range of Qwen2.5-VL's recommended min_pixels / max_pixels
DYNAMIC_GRID_SIDE = 24


def _field(size: Any, name: str) -> int | None:
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return int(value) if value else None


def default_key_image_size(image_processor: Any) -> int:
    """The square side (pixels) that gives the model's usual token grid; see the module docstring."""
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    size = getattr(image_processor, "size", None)
    if patch and merge:
        step = int(patch) * int(merge)  # pixels per merged token
        max_pixels = getattr(image_processor, "max_pixels", None) or _field(size, "longest_edge")
        min_pixels = getattr(image_processor, "min_pixels", None) or _field(size, "shortest_edge")
        side = DYNAMIC_GRID_SIDE
        if max_pixels:
            side = min(side, math.isqrt(int(max_pixels)) // step)
        if min_pixels:
            side = max(side, math.ceil(math.sqrt(int(min_pixels)) / step))
        return max(1, side) * step
    for source, name in ((getattr(image_processor, "crop_size", None), "height"), (size, "height"),
                         (size, "shortest_edge")):
        fixed = _field(source, name) if source is not None else None
        if fixed:
            return fixed
    raise RecipeError(f"cannot tell the usual image size of {type(image_processor).__name__} (no crop_size, size "
                      f"or patch_size/merge_size); set key_image_size in the probe config")
