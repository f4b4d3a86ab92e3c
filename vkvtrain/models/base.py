"""The family adapter: the only place that knows how one transformers MLM class is laid out.

Each supported family (LLaVA-OneVision, Qwen2.5-VL, LLaVA-NeXT) has one adapter subclass in its own file and
one line in `registry.py`. Everything else in vkvtrain asks the adapter, never the model, where things live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from vkvtrain.errors import PromptError, UnsupportedModelError
from vkvtrain.models.tiny_parts import SIZES as TINY_SIZES
from vkvtrain.models.tiny_parts import RandomShape


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension: (x1, x2) -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    assert isinstance(base, nn.Module)
    return base


def submodule(model: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path`` of the transformers model under ``model`` (peft wrappers looked through)."""
    return unwrap_model(model).get_submodule(path)


def hf_config(model: nn.Module) -> Any:
    """The transformers config of ``model`` (a dynamic attribute bag, so typed Any)."""
    return getattr(unwrap_model(model), "config")


class HookHandle(Protocol):
    """Anything that removes the hooks it stands for (a torch RemovableHandle, or several together)."""

    def remove(self) -> None: ...


@dataclass(frozen=True)
class PublishedSize:
    """The architecture of one published checkpoint, rebuilt with random weights by ``tiny://<family>@<size>``.

    Every value is the checkpoint's own (its config.json / preprocessor_config.json); the adapter file that holds
    the table says where each one comes from. Only the tokenizer differs: a byte-level stand-in whose special
    tokens sit at the published ids, with the embedding and LM head still ``vocab_size`` rows wide.

    Attributes:
        hub_id: the checkpoint whose shapes these are.
        text: LM config fields (widths, layers, heads, vocabulary size, rotary, norms).
        vision: vision-tower config fields.
        model: top-level config fields (image token ids, anyres pinpoints, feature layer, projector, tying).
        processor: image-processor settings (resolution bounds, pinpoints, normalisation).
        special_tokens: the family's special tokens and their published ids.
    """

    hub_id: str
    text: Mapping[str, Any]
    vision: Mapping[str, Any]
    model: Mapping[str, Any] = field(default_factory=dict)
    processor: Mapping[str, Any] = field(default_factory=dict)
    special_tokens: Mapping[str, int] = field(default_factory=dict)


class FamilyAdapter(ABC):
    """What vkvtrain needs to know about one MLM family.

    Class attributes:
        family: short name used in `tiny://<family>` and in reports.
        model_type: the `config.model_type` this adapter serves.
        model_class_name: the transformers class (an attribute of the `transformers` package).
        processor_class: the processor class `from_pretrained` loads the checkpoint's processor with.
        image_placeholder: the text that marks one image in a rendered chat prompt (before expansion).
        turn_end: the text that closes an assistant turn (appended after a training answer).
        lm_layers: dotted path of the LM decoder layers on the (unwrapped) transformers model.
        vision_modules: full module names of the vision tower and projector (never quantized, never given LoRA).
        published_sizes: the published checkpoints' architectures by size name (e.g. "7b"), each buildable
            offline as ``tiny://<family>@<size>``; empty for a family that has none.
    """

    family: ClassVar[str]
    model_type: ClassVar[str]
    model_class_name: ClassVar[str]
    processor_class: ClassVar[type[ProcessorMixin]]
    image_placeholder: ClassVar[str]
    turn_end: ClassVar[str]
    lm_layers: ClassVar[str] = "model.language_model.layers"
    vision_modules: ClassVar[tuple[str, ...]]
    published_sizes: ClassVar[Mapping[str, PublishedSize]] = {}

    # --- model layout -------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The LM decoder layers, resolved at run time (also under peft wrappers)."""
        layers = submodule(model, self.lm_layers)
        assert isinstance(layers, nn.ModuleList)
        return layers

    def language_model(self, model: nn.Module) -> nn.Module:
        """The module that holds the decoder layers (the LM body, without its head)."""
        return submodule(model, self.lm_layers.rpartition(".")[0])

    def text_config(self, model: nn.Module) -> PretrainedConfig:
        config = hf_config(model)
        assert isinstance(config, PretrainedConfig)
        return config.get_text_config()

    def image_token_id(self, model: nn.Module) -> int:
        config = hf_config(model)
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index")
        return int(token_id)

    # --- offline checkpoints ------------------------------------------------------------------
    @classmethod
    def sizes(cls) -> tuple[str, ...]:
        """Every size ``tiny://<family>@<size>`` accepts: the small test sizes, then the published ones."""
        return (*TINY_SIZES, *cls.published_sizes)

    @abstractmethod
    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """A randomly initialised model of this family at ``size`` ("tiny" or "mid", see
        `vkvtrain.models.tiny_parts`) with a byte-level tokenizer, the family's image processor and its chat
        template. Called under a fixed torch seed by `vkvtrain.models.tiny`."""

    def build_random(self, shape: RandomShape) -> tuple[PreTrainedModel, ProcessorMixin]:
        """A randomly initialised model of this family with a custom architecture (`RandomShape`: widths, image
        side, extra whole-word tokens), tokenizer, processor and chat template as in `build_tiny`. The model
        organism is built on it; families that do not support it say so."""
        raise UnsupportedModelError(
            f"{self.family} builds only its tiny and published sizes, not a custom shape (the model organism's "
            "families are llava_onevision and llava_next)."
        )

    def build_published(self, size: str) -> tuple[PretrainedConfig, ProcessorMixin]:
        """The config and processor of the published checkpoint ``size`` (a key of ``published_sizes``).

        Only the config: `vkvtrain.models.tiny` decides whether this machine can hold the weights (random
        init, seeded) or the checkpoint stays config-only and loads on the meta device."""
        raise UnsupportedModelError(
            f"{self.family} has no published size {size!r}; sizes: {', '.join(self.sizes())}."
        )

    def published(self, size: str) -> PublishedSize:
        """The published architecture ``size``, or an error listing the sizes this family has."""
        try:
            return self.published_sizes[size]
        except KeyError:
            raise UnsupportedModelError(
                f"{self.family} has no published size {size!r}; sizes: {', '.join(self.sizes())}."
            ) from None

    @abstractmethod
    def projector(self, model: nn.Module) -> nn.Module:
        """The module whose output are the image features scattered into the LM input embeddings."""

    # --- image spans and grids ----------------------------------------------------------------
    @abstractmethod
    def image_grids(self, model: nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        """Base-resolution grid shape (H, W) of every image in the batch, in batch-then-image order."""

    def check_span_length(self, length: int, grid: tuple[int, int], where: str) -> None:
        """Raise when an image span is too short to hold its base grid (the first H*W tokens)."""
        if length < grid[0] * grid[1]:
            raise PromptError(
                f"{where}: image span has {length} tokens but its {grid[0]}x{grid[1]} grid needs "
                f"{grid[0] * grid[1]}; the processor and model config disagree about the image size."
            )

    # --- vision tower features (baseline) -----------------------------------------------------
    @abstractmethod
    def vision_feature_hook(self, model: nn.Module, sink: list[torch.Tensor]) -> HookHandle:
        """Register a hook that appends, per image in batch order, the pre-projector patch features of its
        base grid, shape (H*W, D_vision), to `sink`. Returns the hook handle."""

    # --- rotary ------------------------------------------------------------------------------
    @staticmethod
    def apply_rotary(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate pre-RoPE keys exactly as the attention module does.

        Args:
            keys: (N, n_kv_heads, head_dim) pre-RoPE keys.
            cos, sin: (N, head_dim) the layer's rotary tables at the same token positions. For Qwen2.5-VL
                these are already the M-RoPE tables (transformers recomposes the 3 sections before the layers).
        Returns:
            (N, n_kv_heads, head_dim) post-RoPE keys, equal to what the KV cache holds.
        """
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (keys * cos) + (rotate_half(keys) * sin)

    def continuation_position_ids(self, model: nn.Module, prompt_mask: torch.Tensor, rows: torch.Tensor,
                                  length: int) -> torch.Tensor | None:
        """Position ids of ``length`` tokens that continue a cached prompt, or None when the model derives
        them from the cache length itself (1-D RoPE: positions are cache indices).

        Args:
            model: the model that just ran the prompt (its own position state is read).
            prompt_mask: (B, L) the prompt's attention mask. rows: (R,) which prompt each continuation extends.
        """
        return None

    # --- image resolution ----------------------------------------------------------------------
    def resolution(self, processor: Any) -> dict[str, Any]:
        """The processor's image resolution settings as reports name them (family-specific keys)."""
        return {}

    def set_resolution(self, processor: Any, settings: dict[str, Any]) -> None:
        """Apply resolution ``settings`` to ``processor``; a None value keeps the processor's own setting.

        The base family has none: any value raises, naming the keys.
        """
        given = sorted(k for k, v in settings.items() if v is not None)
        if given:
            raise PromptError(f"{self.family} has no processor resolution setting {given}; leave them unset.")

    # --- prompts -----------------------------------------------------------------------------
    def messages(self, n_images: int, text: str) -> list[dict[str, Any]]:
        """One user turn: the images first, then the text (the family's own template decides the layout)."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]
