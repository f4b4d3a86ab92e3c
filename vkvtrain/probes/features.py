"""Per-image token grids from an MLM (and baselines), one grid per probe row.

Rows, in order: ``"input_embeds"`` (the LM input embeddings at the image positions = the projector's output;
the paper calls it *layer 0*, but it is not LM layer 0), ``"<l>"`` for each captured LM layer ``l`` (that
layer's image value tokens, the transformers layer index: row ``"0"`` is the first decoder layer's values),
``"vision"`` (the MLM's own vision tower patch features, pre-projector) and ``"encoder"`` (an un-finetuned
encoder loaded separately, :class:`~vkvtrain.probes.encoder.VisionEncoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, cast

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedModel

from vkvtrain.errors import CaptureError
from vkvtrain.layers import resolve_layers
from vkvtrain.mlm import MLM
from vkvtrain.probes.encoder import VisionEncoder
from vkvtrain.prompts import Prompt


@dataclass
class ImageFeatures:
    """One image's grids ``rows[name]`` ``(h, w, D_row)``, text values ``text[name]`` ``(D_row,)`` for
    rows that have them (input_embeds and layers, when a text was given) and image keys ``keys[l]`` ``(h*w, kv_dim)``
    (post-RoPE, the base grid row-major; anyres crops and newline tokens are left out) when asked for."""

    rows: dict[str, Tensor]
    text: dict[str, Tensor] = field(default_factory=dict)
    keys: dict[int, Tensor] = field(default_factory=dict)


#: the row of the LM input embeddings (projector output)
INPUT_EMBEDS = "input_embeds"
#: feature sources a probe run can read, in row order
SOURCES = (INPUT_EMBEDS, "layers", "vision")
#: rows that have no text value (text-grounded tasks leave them empty)
IMAGE_ONLY_ROWS = ("vision", "encoder")


def row_names(layers: Sequence[int], sources: Sequence[str], encoder: bool) -> list[str]:
    """Probe rows for ``layers`` and ``sources`` (subset of :data:`SOURCES`) in table order."""
    rows = [INPUT_EMBEDS] if INPUT_EMBEDS in sources else []
    rows += [str(layer) for layer in layers] if "layers" in sources else []
    rows += ["vision"] if "vision" in sources else []
    return rows + (["encoder"] if encoder else [])


def last_text_position(mlm: MLM, input_ids: Tensor, row: int, after: int) -> int:
    """Position of the question text's last token in ``input_ids[row]``: the token before the last turn end.

    The family templates render ``... <image> text <turn_end> <assistant header>``, so the last turn-end
    token closes the user turn; ``after`` (the image span's stop) guards against an empty text.
    """
    end_id = mlm.tokenizer(mlm.adapter.turn_end, add_special_tokens=False)["input_ids"][0]
    hits = (input_ids[row] == end_id).nonzero().flatten()
    if hits.numel() == 0 or int(hits[-1]) - 1 < after:
        raise CaptureError(f"no question text after the image in row {row}; give the probe a non-empty text")
    return int(hits[-1]) - 1


def shuffle_tokens(feats: ImageFeatures, generator: torch.Generator) -> ImageFeatures:
    """The shuffled-tokens control: the same tokens of one image at permuted grid positions.

    One permutation per token count is drawn from ``generator`` (CPU) and applied to every row's grid
    ``(h, w, D)`` of that size and to the keys ``(h*w, kv_dim)``: the MLM's rows (input embeddings, layers,
    vision features) share one grid, so they stay aligned with each other while their tokens leave their
    positions; an encoder baseline with another patch grid gets its own permutation. Text values are left as
    they are.
    """
    perms: dict[int, Tensor] = {}

    def permute(tokens: Tensor) -> Tensor:  # (N, D) -> (N, D)
        n = tokens.shape[0]
        if n not in perms:
            perms[n] = torch.randperm(n, generator=generator)
        return tokens[perms[n].to(tokens.device)]

    rows = {name: permute(grid.reshape(-1, grid.shape[-1])).reshape(grid.shape) for name, grid in feats.rows.items()}
    keys = {layer: permute(k) for layer, k in feats.keys.items()}
    return ImageFeatures(rows=rows, text=dict(feats.text), keys=keys)


class FeatureExtractor:
    """Runs the MLM on one-image prompts and returns :class:`ImageFeatures` per image.

    Args:
        layers: LM layers to read (None = all). sources: which of :data:`SOURCES`.
        encoder: optional baseline encoder. batch_size: images per forward.
        shuffle_seed: when set, every image's token grids are permuted (:func:`shuffle_tokens`) with a
            generator seeded once here, so the n-th image gets the same permutation in every run.
    """

    def __init__(self, mlm: MLM, layers: Sequence[int] | None = None,
                 sources: Sequence[str] = SOURCES, encoder: VisionEncoder | None = None,
                 batch_size: int = 8, shuffle_seed: int | None = None) -> None:
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown feature sources {sorted(unknown)}; choose from {list(SOURCES)}")
        self.mlm, self.encoder, self.batch_size = mlm, encoder, batch_size
        self.layers = resolve_layers(layers, mlm.num_layers, "probe layers")
        self.sources = list(sources)
        self.rows = row_names(self.layers, self.sources, encoder is not None)
        self.shuffle = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None,
                 prefixes: Sequence[str | None] | None = None, keys: bool = False) -> list[ImageFeatures]:
        """Features of each image, prompted with ``prefix`` before and ``text`` after the image."""
        out: list[ImageFeatures] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out += self._batch(images[start:stop], None if texts is None else texts[start:stop],
                               None if prefixes is None else prefixes[start:stop], keys)
        if self.encoder is not None:
            for feats, grid in zip(out, self.encoder(images)):
                feats.rows["encoder"] = grid
        if self.shuffle is not None:
            out = [shuffle_tokens(f, self.shuffle) for f in out]
        return out

    def _batch(self, images: Sequence[Image.Image], texts: Sequence[str] | None,
               prefixes: Sequence[str | None] | None, keys: bool) -> list[ImageFeatures]:
        mlm = self.mlm
        prompts = [Prompt(images=[im], text=texts[i] if texts else "",
                          prefix=prefixes[i] if prefixes else None) for i, im in enumerate(images)]
        batch = mlm.encode(prompts).to(mlm.device)
        ids = batch.input_ids
        text_pos = [last_text_position(mlm, ids, b, batch.spans[b][0].stop) for b in range(len(images))] if texts else []
        use_layers = "layers" in self.sources or keys
        with mlm.capture(layers=self.layers if use_layers else [], keys=keys, values=True,
                         input_embeds=INPUT_EMBEDS in self.sources, vision_features="vision" in self.sources,
                         text_positions=[(b, p) for b, p in enumerate(text_pos)]) as kv:
            mlm.model(**batch.inputs)
        embed_table = cast(PreTrainedModel, mlm.model).get_input_embeddings()
        result = []
        for b in range(len(images)):
            feats = ImageFeatures(rows={})
            if INPUT_EMBEDS in self.sources:
                feats.rows[INPUT_EMBEDS] = kv.embeds(b, 0).grid("values").float()
                if texts:
                    feats.text[INPUT_EMBEDS] = embed_table(ids[b, text_pos[b]]).float()
            for layer in self.layers if "layers" in self.sources else []:
                img = kv.image(layer, b, 0)
                feats.rows[str(layer)] = img.grid("values").float()
                if texts:
                    feats.text[str(layer)] = kv.text(layer, b, text_pos[b])["values"].float()
            if keys:
                feats.keys = {layer: kv.image(layer, b, 0).grid("keys").reshape(-1, mlm.kv_dim).float()
                              for layer in self.layers}
            if "vision" in self.sources:
                vis = kv.vision(b, 0)
                h, w = vis.grid_shape
                if vis.values.shape[0] != h * w:
                    raise CaptureError(f"vision features hold {vis.values.shape[0]} tokens for a {h}x{w} grid")
                feats.rows["vision"] = vis.values.reshape(h, w, -1).float()
            result.append(feats)
        return result
