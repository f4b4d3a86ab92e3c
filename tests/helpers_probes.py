"""Planted-feature helpers for the probe tests: token features that encode a known answer."""

from __future__ import annotations

import torch
from torch import Tensor


def block_mask(grid: tuple[int, int], box: tuple[int, int, int, int], scale: int = 1) -> Tensor:
    """``(h*scale, w*scale)`` bool mask, true on token rows ``box[0]:box[2]``, cols ``box[1]:box[3]``."""
    h, w = grid
    m = torch.zeros(h, w, dtype=torch.bool)
    m[box[0]:box[2], box[1]:box[3]] = True
    return m.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def planted_feats(token_labels: Tensor, dim: int = 16, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Features ``(h, w, dim)`` whose direction encodes the integer token label ``(h, w)`` (plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.eye(dim)
    f = basis[token_labels.long()] + noise * torch.randn(*token_labels.shape, dim, generator=gen)
    return f


def shuffled(feats: Tensor, seed: int = 0) -> Tensor:
    """The same tokens ``(h, w, D)`` in a random spatial order (destroys the planted mapping)."""
    gen = torch.Generator().manual_seed(seed)
    h, w, d = feats.shape
    perm = torch.randperm(h * w, generator=gen)
    return feats.reshape(h * w, d)[perm].reshape(h, w, d)


def random_box_mask(grid: tuple[int, int], scale: int, seed: int) -> Tensor:
    """A random token-aligned box mask at pixel resolution ``(h*scale, w*scale)``."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    r0 = int(torch.randint(0, h // 2, (1,), generator=gen))
    c0 = int(torch.randint(0, w // 2, (1,), generator=gen))
    r1 = r0 + int(torch.randint(2, h // 2 + 1, (1,), generator=gen))
    c1 = c0 + int(torch.randint(2, w // 2 + 1, (1,), generator=gen))
    return block_mask(grid, (r0, c0, r1, c1), scale)
