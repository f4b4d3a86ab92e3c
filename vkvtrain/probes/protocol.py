"""The probe protocol knobs (the ``probe:`` section of ``eval/probes.yaml``; see eval/PROBES.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vkvtrain.errors import RecipeError
from vkvtrain.probes.functional import MIN_TEMPERATURE


@dataclass
class ProbeProtocol:
    """How each probe turns tokens into a score.

    Args:
        upsample: token -> pixel rule of the segmentation probes (``bilinear`` or ``nearest``).
        fewshot_c: inverse L2 strength of the few-shot logistic regression (scikit-learn's ``C``).
        coseg_k: k-means clusters per co-segmentation group.
        grounding_threshold: text-grounded mask rule: a normalised score in [0, 1], or ``mean``.
        pck_alpha: PCK tolerance as a fraction of the reference size; pck_normalize: ``bbox`` or ``image``.
        temporal_n_last_frames, temporal_topk, temporal_temperature, temporal_neighborhood: DINO's video
            label propagation (n_last_frames=7, topk=5, affinity temperature 0.1, size_mask_neighborhood=12).
        temporal_patch_size: DINO's upsampling factor of token labels; None = per axis round(mask / grid).
        key_threshold: flag key positions with agnosticism >= this; None = the per-layer robust rule.
        key_images: images whose keys the key-agnosticism probe compares (>= 2).
    """

    upsample: Literal["bilinear", "nearest"] = "bilinear"
    fewshot_c: float = 10.0
    coseg_k: int = 4
    grounding_threshold: float | Literal["mean"] = 0.5
    pck_alpha: float = 0.1
    pck_normalize: Literal["bbox", "image"] = "bbox"
    temporal_n_last_frames: int = 7
    temporal_topk: int = 5
    temporal_temperature: float = 0.1
    temporal_neighborhood: int = 12
    temporal_patch_size: int | None = None
    key_threshold: float | None = None
    key_images: int = 8

    def __post_init__(self) -> None:
        if self.upsample not in ("bilinear", "nearest"):
            raise RecipeError(f"probe.upsample must be bilinear or nearest, got {self.upsample!r}")
        if self.pck_normalize not in ("bbox", "image"):
            raise RecipeError(f"probe.pck_normalize must be bbox or image, got {self.pck_normalize!r}")
        threshold = self.grounding_threshold
        if threshold != "mean" and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise RecipeError(f"probe.grounding_threshold must be a number in [0, 1] or 'mean', got {threshold!r}")
        positive = {"fewshot_c": self.fewshot_c, "pck_alpha": self.pck_alpha}
        at_least_one = {"coseg_k": self.coseg_k, "temporal_topk": self.temporal_topk}
        for name, value in positive.items():
            if not value > 0:
                raise RecipeError(f"probe.{name} must be > 0, got {value}")
        for name, value in at_least_one.items():
            if value < 1:
                raise RecipeError(f"probe.{name} must be >= 1, got {value}")
        if self.temporal_n_last_frames < 0 or self.temporal_neighborhood < 0:
            raise RecipeError(f"probe.temporal_n_last_frames and probe.temporal_neighborhood must be >= 0 (0 = none), "
                              f"got {self.temporal_n_last_frames} and {self.temporal_neighborhood}")
        if self.temporal_temperature < MIN_TEMPERATURE:
            raise RecipeError(f"probe.temporal_temperature must be >= {MIN_TEMPERATURE:.4f} (DINO uses 0.1), "
                              f"got {self.temporal_temperature}")
        if self.temporal_patch_size is not None and self.temporal_patch_size < 1:
            raise RecipeError(f"probe.temporal_patch_size must be >= 1 or null, got {self.temporal_patch_size}")
        if self.key_threshold is not None and not 0 <= self.key_threshold <= 1:
            raise RecipeError(f"probe.key_threshold must be in [0, 1] or null, got {self.key_threshold}")
        if self.key_images < 2:
            raise RecipeError(f"probe.key_images must be >= 2 (agnosticism compares images), got {self.key_images}")
