"""`MLM`: the object `load_mlm` returns, a `LoadedMLM` that also encodes prompts and captures image K/V.

    batch = mlm.encode([Prompt(images=[image], text="What is shown?")]).to(mlm.device)
    with mlm.capture(layers=[0, -1]) as kv:
        mlm.model(**batch.inputs)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from vkvtrain.capture import KVCapture, capture
from vkvtrain.models.loaded import LoadedMLM
from vkvtrain.prompts import EncodedBatch, Prompt, encode


class MLM(LoadedMLM):
    """A loaded multimodal LM (see `LoadedMLM`) with `encode` and `capture`."""

    def encode(self, prompts: Sequence[Prompt], max_length: int | None = None) -> EncodedBatch:
        """Tokenize prompts with images into one left-padded batch (see `vkvtrain.prompts.encode`)."""
        return encode(self, prompts, max_length=max_length)

    def capture(
        self,
        layers: Sequence[int] | None = None,
        *,
        grad: bool = False,
        keys: bool = True,
        values: bool = True,
        input_embeds: bool = False,
        vision_features: bool = False,
        text_positions: Sequence[tuple[int, int]] | None = None,
    ) -> contextlib.AbstractContextManager[KVCapture]:
        """Record image keys/values of the next forward (see `vkvtrain.capture.capture` for the options)."""
        return capture(self, layers, grad=grad, keys=keys, values=values, input_embeds=input_embeds,
                       vision_features=vision_features, text_positions=text_positions)
