"""An un-finetuned vision encoder (SigLIP, CLIP, ... by hub id or local folder) as a probe baseline."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor
from transformers import AutoImageProcessor, AutoModel

from vkvtrain.errors import VKVError


class EncoderLoadError(VKVError, ValueError):
    """The baseline vision encoder cannot be loaded or gives no patch grid."""


class VisionEncoder:
    """Patch features of a transformers vision encoder, reshaped to their square grid.

    ``AutoModel.from_pretrained(name)`` is used; for a full image-text model (e.g. a SigLIP or CLIP
    checkpoint) its ``vision_model`` is taken. The last hidden state is used; a leading CLS token is
    dropped when the token count is ``g*g + 1``.
    """

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        try:
            model = AutoModel.from_pretrained(name_or_path, dtype=dtype) if dtype else AutoModel.from_pretrained(name_or_path)
            self.processor = AutoImageProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            raise EncoderLoadError(f"cannot load the baseline encoder {name_or_path!r}: {str(err).splitlines()[0]} "
                                   f"Give a local folder with a vision model and its image processor "
                                   f"(save_pretrained), or a reachable hub id.") from err
        self.model = getattr(model, "vision_model", model).to(device).eval()
        self.name, self.device = name_or_path, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[Tensor]:
        """``len(images)`` patch grids ``(g, g, D)``."""
        inputs = self.processor(images=list(images), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        out: Any = self.model(pixel_values=pixels)
        tokens = out.last_hidden_state  # (B, T, D)
        n = tokens.shape[1]
        g = math.isqrt(n)
        if g * g != n:
            g = math.isqrt(n - 1)
            if g * g != n - 1:
                raise EncoderLoadError(f"{self.name}: {n} output tokens form no square patch grid")
            tokens = tokens[:, 1:]
        return [t.reshape(g, g, -1).float() for t in tokens]
