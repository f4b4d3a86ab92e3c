"""Key-artifact suppression: an auxiliary loss that shrinks the input-agnostic part of later-layer image keys.

Formula. For one layer, stack the keys of M images that share a grid shape: ``K`` of shape (M, N, d), where
N is the number of base-grid tokens and d = n_kv_heads * head_dim. At each grid position n the component
shared by all inputs is the mean key ``m_n = mean_b K[b, n]``. Its energy, estimated without the 1/M bias of
the plain sample mean, is

    shared_n = ||m_n||^2 - (1/M) * sum_b ||K[b, n] - m_n||^2 / (M - 1)

(``E||m_n||^2 = ||mu_n||^2 + tr(Cov_n)/M``, so subtracting the unbiased variance over M gives ``||mu_n||^2``).
The total energy is ``total_n = mean_b ||K[b, n]||^2``. The layer's loss is the energy-weighted fraction

    L_layer = sum_n shared_n / sum_n total_n        (about 1: keys barely depend on the image; about 0: none shared)

and the intervention's loss is ``weight * mean over layers``.

Why this form: artifact keys are the ones that barely change from image to image (PAPER.md claim 3), i.e. a
large ``||mu_n||`` relative to the variation; a ratio is scale-free, so the loss cannot be lowered by merely
shrinking all keys, and energy weighting lets high-norm artifact positions dominate as they do in attention
logits. Keys are read pre-RoPE by default: RoPE rotates keys by absolute position, which left padding shifts
between batch elements; post-RoPE ("keys", as cached) is available for prompts without padding.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import torch

from vkvtrain.capture import KVCapture
from vkvtrain.errors import RecipeError
from vkvtrain.interventions.base import Intervention
from vkvtrain.layers import resolve_layers
from vkvtrain.mlm import MLM
from vkvtrain.prompts import EncodedBatch


def shared_key_energy(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased input-agnostic energy and total energy per position.

    Args:
        keys: (M, N, d) keys of M >= 2 images at the same N grid positions.
    Returns:
        shared: (N,) ``||mu_n||^2`` estimate (may be slightly negative by noise); total: (N,) mean energy.
    """
    if keys.ndim != 3 or keys.shape[0] < 2:
        raise ValueError(f"keys must be (M>=2, N, d), got {tuple(keys.shape)}")
    m = keys.shape[0]
    mean = keys.mean(dim=0)  # (N, d)
    spread = (keys - mean).pow(2).sum(dim=-1).sum(dim=0) / (m - 1)  # (N,) unbiased trace of covariance
    shared = mean.pow(2).sum(dim=-1) - spread / m
    total = keys.pow(2).sum(dim=-1).mean(dim=0)
    return shared, total


def agnostic_fraction(keys: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Energy-weighted input-agnostic fraction of (M, N, d) keys: a scalar in about [0, 1]."""
    shared, total = shared_key_energy(keys.float())
    return shared.sum() / total.sum().clamp_min(eps)


class KeyArtifactSuppression(Intervention):
    """Auxiliary loss on the image keys of chosen later layers (see the module docstring for the formula).

    Args:
        layers: LM layer indices; negative counts from the end (-1 = last layer).
        weight: multiplier of the mean per-layer loss.
        key_kind: "keys_pre_rope" (default) or "keys" (post-RoPE, as cached).
    Needs at least two images with the same base grid per batch; a batch with fewer contributes zero.
    """

    def __init__(
        self,
        layers: list[int],
        weight: float = 1.0,
        key_kind: Literal["keys_pre_rope", "keys"] = "keys_pre_rope",
    ) -> None:
        super().__init__()
        if not layers:
            raise RecipeError("KeyArtifactSuppression.layers is empty; name at least one LM layer, e.g. [-4, -3].")
        self.layers = list(layers)
        self.weight = float(weight)
        self.key_kind = key_kind
        self._resolved: list[int] = []

    def attach(self, mlm: MLM) -> None:
        super().attach(mlm)
        self._resolved = resolve_layers(self.layers, mlm.num_layers, type(self).__name__)

    def grad_layers(self) -> list[int]:
        return list(self._resolved)

    def loss(self, kv: KVCapture | None, batch: EncodedBatch) -> torch.Tensor | None:
        if kv is None:
            return None
        terms = [agnostic_fraction(keys) for keys in (layer_keys(kv, batch, layer, self.key_kind)
                                                       for layer in self._resolved) if keys is not None]
        if not terms:
            return None
        return self.weight * torch.stack(terms).mean()


def layer_keys(kv: KVCapture, batch: EncodedBatch, layer: int, kind: str, min_images: int = 2) -> torch.Tensor | None:
    """(M, N, d) base-grid keys of the batch's images sharing the most common grid shape; None if M < min_images."""
    grids = [kv.image(layer, span.batch, span.image).grid(kind) for row in batch.spans for span in row]
    if not grids:
        return None
    shape, count = Counter(tuple(g.shape) for g in grids).most_common(1)[0]
    if count < min_images:
        return None
    return torch.stack([g.reshape(-1, g.shape[-1]) for g in grids if tuple(g.shape) == shape])
