"""Exact, cheap capture of the image keys and values inside the LM, layer by layer.

    with mlm.capture(layers=[0, 3]) as kv:
        mlm.model(**batch.inputs)
    kv.image(3, b=0, i=1).grid("values")     # (H, W, n_kv_heads * head_dim)

Hooks on each captured layer's k_proj / v_proj gather only the image positions (B*L*D -> N*D), so the cost is
an index per projection. Keys are stored pre-RoPE (what k_proj emits) with the layer's rotary tables at the same
positions; post-RoPE keys (what the KV cache holds; M-RoPE for Qwen2.5-VL) are computed on first access with
the family's rotary rule. The capture records the latest forward that contains image tokens, so during
`generate` it keeps the prefill and ignores decode steps. Hooks are removed when the block exits, also on error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from vkvtrain.errors import CaptureError
from vkvtrain.layers import resolve_layers
from vkvtrain.models.base import unwrap_model
from vkvtrain.models.loaded import LoadedMLM
from vkvtrain.prompts import ImageSpan, image_runs, spans_from_runs


@dataclass
class ImageKV:
    """Captured tokens of one image at one layer.

    `tokens[name]` is (N, D): the image's whole span in sequence order (base grid first, then any anyres crops
    and newline tokens). Names: "values", "keys" (post-RoPE, as cached), "keys_pre_rope" for LM layers;
    "values" alone for input embeddings and vision features.
    """

    tokens: dict[str, torch.Tensor]
    grid_shape: tuple[int, int]
    n_heads: int = 1

    @property
    def values(self) -> torch.Tensor:
        return self.tokens["values"]

    @property
    def keys(self) -> torch.Tensor:
        return self.tokens["keys"]

    @property
    def keys_pre_rope(self) -> torch.Tensor:
        return self.tokens["keys_pre_rope"]

    def grid(self, name: str = "values") -> torch.Tensor:
        """(H, W, D) view of the base-resolution grid (the first H*W tokens of the span)."""
        height, width = self.grid_shape
        return self.tokens[name][: height * width].reshape(height, width, -1)

    def heads(self, name: str = "values") -> torch.Tensor:
        """(n_kv_heads, N, head_dim) per-head view of the span tokens."""
        tokens = self.tokens[name]
        return tokens.reshape(tokens.shape[0], self.n_heads, -1).transpose(0, 1)


@dataclass
class KVCapture:
    """What one forward left behind. Filled by the hooks of `capture`; read after the forward."""

    mlm: LoadedMLM
    layers: list[int]
    grad: bool
    text_positions: list[tuple[int, int]]
    spans: list[list[ImageSpan]] = field(default_factory=list)
    _index: tuple[torch.Tensor, torch.Tensor] | None = None  # (batch idx, position idx) of image tokens, (N,)
    _text_index: tuple[torch.Tensor, torch.Tensor] | None = None
    _offsets: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    _store: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # (name, layer) -> (N, D)
    _text_store: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # (name, layer) -> (T, D)
    _rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin at image positions, (N, head_dim)
    _text_rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    _embeds: torch.Tensor | None = None  # (N, hidden)
    # grad mode: full (B, L, D) outputs and layer-0 input, gathered at image/text positions when first read
    _raw: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    _raw_embeds: torch.Tensor | None = None
    _vision: list[torch.Tensor] = field(default_factory=list)
    _active: bool = False  # the running forward has image tokens (False during decode steps)

    # --- read ------------------------------------------------------------------------------------
    def image(self, layer: int, b: int, i: int) -> ImageKV:
        """Values, keys and pre-RoPE keys of image `i` of batch element `b` at `layer`."""
        self._check_layer(layer)
        start, stop = self._slice(b, i)
        tokens = {name: self.tokens(name, layer)[start:stop] for name in self._available(layer)}
        return ImageKV(tokens, self.spans[b][i].grid_shape, self.mlm.num_kv_heads)

    def images(self, layer: int) -> list[ImageKV]:
        """Every image of the batch at `layer`, batch-then-image order."""
        return [self.image(layer, span.batch, span.image) for row in self.spans for span in row]

    def tokens(self, name: str, layer: int) -> torch.Tensor:
        """(N, D) `name` at `layer` for all image tokens of the batch, batch-then-position order."""
        self._check_layer(layer)
        if name == "keys" and ("keys", layer) not in self._store:
            self._store[("keys", layer)] = self._rotate(self._get("keys_pre_rope", layer), self._rotary)
        return self._get(name, layer)

    def embeds(self, b: int, i: int) -> ImageKV:
        """LM input embeddings (the projector's output, i.e. layer-0 input) of one image: values (N, hidden)."""
        self._gather_raw()
        if self._embeds is None:
            raise CaptureError("input embeddings were not captured; use mlm.capture(..., input_embeds=True).")
        start, stop = self._slice(b, i)
        return ImageKV({"values": self._embeds[start:stop]}, self.spans[b][i].grid_shape)

    def vision(self, b: int, i: int) -> ImageKV:
        """The vision tower's pre-projector patch features of one image's base grid: values (H*W, D_vision)."""
        if not self._vision:
            raise CaptureError("vision features were not captured; use mlm.capture(..., vision_features=True).")
        flat = sum(len(row) for row in self.spans[:b]) + i
        return ImageKV({"values": self._keep(self._vision[flat])}, self.spans[b][i].grid_shape)

    def text(self, layer: int, b: int, pos: int) -> dict[str, torch.Tensor]:
        """values / keys / keys_pre_rope, each (kv_dim,), at a text position named in `text_positions`."""
        self._check_layer(layer)
        try:
            row = self.text_positions.index((b, pos))
        except ValueError:
            raise CaptureError(f"text position {(b, pos)} was not asked for; pass it in text_positions.") from None
        self._gather_raw()
        out = {name: self._text_store[(name, layer)][row] for name in ("values", "keys_pre_rope")
               if (name, layer) in self._text_store}
        if "keys_pre_rope" in out:
            cos, sin = self._text_rotary  # type: ignore[misc]
            out["keys"] = self._rotate(out["keys_pre_rope"][None], (cos[row : row + 1], sin[row : row + 1]))[0]
        return out

    # --- internals -------------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise CaptureError(f"layer {layer} was not captured; captured layers: {self.layers}.")
        if self._index is None:
            raise CaptureError("nothing was captured: run a forward with image tokens inside the capture block.")

    def _available(self, layer: int) -> list[str]:
        self._gather_raw()
        names = [n for n in ("values", "keys_pre_rope") if (n, layer) in self._store]
        return names + (["keys"] if "keys_pre_rope" in names else [])

    def _get(self, name: str, layer: int) -> torch.Tensor:
        self._gather_raw()
        try:
            return self._store[(name, layer)]
        except KeyError:
            raise CaptureError(f"{name!r} was not captured at layer {layer}; check the capture options.") from None

    def _gather_raw(self) -> None:
        """Grad mode: take the image (and text) positions of the full outputs the hooks kept."""
        if self._raw_embeds is not None:
            self._embeds, self._raw_embeds = self._raw_embeds[self._index], None
        for key, full in self._raw.items():
            self._store[key] = full[self._index]
            if self._text_index is not None:
                self._text_store[key] = full[self._text_index]
        self._raw.clear()

    def _slice(self, b: int, i: int) -> tuple[int, int]:
        try:
            return self._offsets[(b, i)]
        except KeyError:
            raise CaptureError(f"no image {i} in batch element {b}; the batch has {self.spans}.") from None

    def _rotate(self, pre: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if rotary is None:
            raise CaptureError("the rotary tables were not seen during the forward; keys cannot be rotated.")
        cos, sin = rotary
        heads = pre.reshape(pre.shape[0], self.mlm.num_kv_heads, self.mlm.head_dim)
        return self.mlm.adapter.apply_rotary(heads, cos.to(pre.dtype), sin.to(pre.dtype)).reshape(pre.shape)

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.grad else tensor.detach()


def _at(table: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rows of a (B or 1, L, D) table at (batch, position) pairs -> (N, D); batch 1 broadcasts."""
    rows, cols = index
    return table[rows if table.shape[0] > 1 else torch.zeros_like(rows), cols]


@contextlib.contextmanager
def capture(
    mlm: LoadedMLM,
    layers: Sequence[int] | None = None,
    *,
    grad: bool = False,
    keys: bool = True,
    values: bool = True,
    input_embeds: bool = False,
    vision_features: bool = False,
    text_positions: Sequence[tuple[int, int]] | None = None,
) -> Iterator[KVCapture]:
    """Record image keys/values of the next forward of `mlm.model` (see module docstring).

    Args:
        layers: LM layer indices (negative allowed); None = all.
        grad: keep the autograd graph (training losses on keys); otherwise everything is detached.
        keys, values: which projections to hook.
        input_embeds: also record the LM input embeddings at image positions (layer-0 input).
        vision_features: also record the vision tower's patch features of each image's base grid.
        text_positions: (batch, position) pairs of text tokens to record too (negative positions count
            from the end of the padded sequence).
    """
    chosen = resolve_layers(layers, mlm.num_layers, f"capture on {mlm.name}")
    kv = KVCapture(mlm=mlm, layers=chosen, grad=grad, text_positions=list(text_positions or []))
    model = unwrap_model(mlm.model)
    decoder_layers = mlm.decoder_layers()
    handles: list[Any] = []

    def on_model_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise CaptureError("capture needs input_ids in the forward (image positions are read from them).")
        is_image = input_ids == mlm.image_token_id
        kv._active = bool(is_image.any())
        if not kv._active:
            return  # a decode step: keep what the prefill captured
        runs = image_runs(input_ids, mlm.image_token_id)
        kv.spans = spans_from_runs(mlm, runs, kwargs)
        rows, cols = is_image.nonzero().unbind(1)
        kv._index = (rows, cols)
        kv._offsets.clear()
        flat = 0
        for row, row_runs in enumerate(runs):
            for image, (start, stop) in enumerate(row_runs):
                kv._offsets[(row, image)] = (flat, flat + stop - start)
                flat += stop - start
        if kv.text_positions:
            length = input_ids.shape[1]
            rows = torch.tensor([b for b, _ in kv.text_positions], device=input_ids.device)
            cols = torch.tensor([p % length for _, p in kv.text_positions], device=input_ids.device)
            kv._text_index = (rows, cols)
        kv._store.clear()
        kv._text_store.clear()
        kv._raw.clear()
        kv._vision.clear()
        kv._rotary = kv._text_rotary = kv._embeds = kv._raw_embeds = None

    def gather(name: str, layer: int):
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            if not kv._active:
                return
            if kv.grad:
                # Keep the output as is and gather on read: an indexing op here would save tensors inside a
                # gradient-checkpointed layer that its hook-free recomputation does not save, and backward fails.
                kv._raw[(name, layer)] = output
                return
            kv._store[(name, layer)] = output[kv._index].detach()
            if kv._text_index is not None:
                kv._text_store[(name, layer)] = output[kv._text_index].detach()

        return hook

    def on_attention(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        if not kv._active or kv._rotary is not None or kv._index is None:
            return
        cos, sin = kwargs["position_embeddings"]  # each (B or 1, L, head_dim)
        kv._rotary = (_at(cos, kv._index), _at(sin, kv._index))
        if kv._text_index is not None:
            kv._text_rotary = (_at(cos, kv._text_index), _at(sin, kv._text_index))

    def on_first_layer(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not kv._active:
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        assert isinstance(hidden, torch.Tensor)
        if kv.grad:  # gathered on read, as in `gather`
            kv._raw_embeds = hidden
        elif kv._index is not None:
            kv._embeds = hidden[kv._index].detach()

    try:
        handles.append(model.get_submodule("model").register_forward_pre_hook(on_model_inputs, with_kwargs=True))
        for layer in chosen:
            attention = decoder_layers[layer].get_submodule("self_attn")
            if keys:
                handles.append(attention.get_submodule("k_proj").register_forward_hook(gather("keys_pre_rope", layer)))
            if values:
                handles.append(attention.get_submodule("v_proj").register_forward_hook(gather("values", layer)))
        if keys and chosen:
            first = decoder_layers[chosen[0]].get_submodule("self_attn")
            handles.append(first.register_forward_pre_hook(on_attention, with_kwargs=True))
        if input_embeds:
            handles.append(decoder_layers[0].register_forward_pre_hook(on_first_layer, with_kwargs=True))
        if vision_features:
            handles.append(mlm.adapter.vision_feature_hook(mlm.model, kv._vision))
        yield kv
    finally:
        for handle in handles:
            handle.remove()
