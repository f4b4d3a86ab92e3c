"""Learned text prefix: N trainable vectors placed immediately before the image.

The prompt carries N copies of one placeholder special token as its text prefix (``Prompt(prefix=...)``), so
the chat template, the processor and each family's position logic (Qwen2.5-VL's 3-D M-RoPE included) treat
the prefix as ordinary text before the image. Two hooks on the input embedding then swap the trainable
vectors in at the placeholder positions: a pre-hook maps the placeholder id to a valid id (the new token
may lie beyond the embedding matrix), a forward hook replaces those rows. peft's prompt tuning is not used
because it prepends at sequence start and rewrites Qwen2.5-VL's positions as 1-D.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vkvtrain.errors import RecipeError
from vkvtrain.interventions.base import Intervention
from vkvtrain.mlm import MLM

PLACEHOLDER = "<|vkv_prefix|>"


def scatter_prefix(embeds: torch.Tensor, is_slot: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Put ``prefix[k % N]`` at the k-th placeholder slot of every row.

    Args:
        embeds: (B, L, H) input embeddings.
        is_slot: (B, L) bool, True at placeholder positions.
        prefix: (N, H) trainable vectors.
    Returns:
        (B, L, H) embeddings, differentiable w.r.t. ``prefix``.
    """
    rank = (is_slot.long().cumsum(dim=1) - 1).clamp(min=0) % prefix.shape[0]  # (B, L)
    vectors = prefix.to(embeds.dtype)[rank]  # (B, L, H)
    return torch.where(is_slot.unsqueeze(-1), vectors, embeds)


class LearnedPrefix(Intervention):
    """Trainable text prefix before the image.

    Args:
        num_tokens: number of trainable vectors N.
        init_text: optional text whose token embeddings (tiled to N) initialise the vectors; otherwise
            they are drawn from N(0, std of the embedding matrix).
        seed: seed of the random initialisation (checkpoints restore the trained values anyway).
    """

    def __init__(self, num_tokens: int = 8, init_text: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if num_tokens < 1:
            raise RecipeError(f"LearnedPrefix.num_tokens must be >= 1, got {num_tokens}.")
        self.num_tokens = num_tokens
        self.init_text = init_text
        self.seed = seed
        # Shape is known only once the MLM is loaded; a lazy (0, 0) placeholder keeps state_dict keys stable.
        self.vectors = nn.Parameter(torch.empty(0, 0))
        self.placeholder_id: int | None = None
        self._slots: torch.Tensor | None = None

    def prompt_prefix(self) -> str:
        return PLACEHOLDER * self.num_tokens

    def attach(self, mlm: MLM) -> None:
        super().attach(mlm)
        tokenizer = mlm.tokenizer
        if PLACEHOLDER not in tokenizer.get_vocab():
            tokenizer.add_tokens([PLACEHOLDER], special_tokens=True)
        ids = tokenizer.encode(PLACEHOLDER * 2, add_special_tokens=False)
        if len(ids) != 2 or ids[0] != ids[1]:
            raise RecipeError(f"The tokenizer splits the prefix placeholder {PLACEHOLDER!r} into {ids}.")
        self.placeholder_id = int(ids[0])
        embedding = mlm.model.get_input_embeddings()
        assert isinstance(embedding, nn.Embedding)
        if self.vectors.numel() == 0:
            self.vectors = nn.Parameter(self._initial_vectors(mlm, embedding))
        self._hooks.append(embedding.register_forward_pre_hook(self._swap_ids))
        self._hooks.append(embedding.register_forward_hook(self._swap_vectors))

    def _initial_vectors(self, mlm: MLM, embedding: nn.Embedding) -> torch.Tensor:
        weight = embedding.weight.detach()
        if weight.is_meta:  # a config-only model: the shape resolves, there are no values to start from
            return torch.empty(self.num_tokens, weight.shape[1], device="meta")
        if self.init_text:
            ids = mlm.tokenizer.encode(self.init_text, add_special_tokens=False)
            if not ids:
                raise RecipeError(f"LearnedPrefix.init_text {self.init_text!r} tokenizes to nothing.")
            ids = (ids * (self.num_tokens // len(ids) + 1))[: self.num_tokens]
            return weight[torch.tensor(ids, device=weight.device)].float().clone().cpu()
        generator = torch.Generator().manual_seed(self.seed)
        std = float(weight.float().std())
        return torch.randn(self.num_tokens, weight.shape[1], generator=generator) * std

    def _swap_ids(self, module: nn.Module, args: tuple) -> tuple:
        input_ids = args[0]
        self._slots = input_ids == self.placeholder_id  # (B, L)
        if not bool(self._slots.any()):
            self._slots = None
            return args
        return (input_ids.masked_fill(self._slots, 0), *args[1:])

    def _swap_vectors(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        slots, self._slots = self._slots, None
        if slots is None:
            return output
        if slots.dim() < 2:  # an unbatched lookup: (L,) -> (L, H) or () -> (H,)
            flat = scatter_prefix(output.reshape(1, -1, output.shape[-1]), slots.reshape(1, -1), self.vectors)
            return flat.reshape(output.shape)
        return scatter_prefix(output, slots, self.vectors)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "vectors" in state and self.vectors.shape != state["vectors"].shape:
            self.vectors = nn.Parameter(torch.empty_like(state["vectors"], device=self.vectors.device))
        super().load_trainable_state_dict(state)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Lazy shape: accept the checkpoint's (N, H) even before attach() has sized the parameter.
        key = prefix + "vectors"
        if key in state_dict and state_dict[key].shape != self.vectors.shape:
            self.vectors = nn.Parameter(torch.empty_like(state_dict[key], device=self.vectors.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
