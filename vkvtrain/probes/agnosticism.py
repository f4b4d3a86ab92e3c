"""Key input-agnosticism: which image key positions barely change from image to image."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from vkvtrain.probes import functional as PF
from vkvtrain.probes.base import LayerwiseMetric


class KeyInputAgnosticism(LayerwiseMetric):
    """Per layer and image position, the input-agnosticism of the image keys.

    States are the moments of the keys over images -- ``sum_k (L, N, D)``, ``sumsq (L, N)`` and the image
    count -- so the result is exact under distributed sum-reduction. All images must share the same
    ``N`` image positions (same grid, same prompt layout). ``compute()`` returns

    * ``agnosticism`` ``(L, N)``: ``1 - normalised across-image variance``
      (:func:`~vkvtrain.probes.functional.agnosticism_from_moments`);
    * ``flagged`` ``(L, N)`` bool: by ``threshold`` on agnosticism, else the per-layer robust rule
      (:func:`~vkvtrain.probes.functional.flag_positions`);
    * ``score`` ``(L,)``: mean agnosticism of the layer; ``n_flagged`` ``(L,)``.

    Example:
        >>> m = KeyInputAgnosticism(num_layers=1, num_positions=6, dim=4)
        >>> keys = torch.randn(1, 10, 6, 4); keys[0, :, 3] += 100.0  # plant a near-constant key
        >>> m.update(keys)
        >>> m.compute()["flagged"][0].nonzero().flatten().tolist()
        [3]
    """

    plot_keys = ("score",)
    result_ndim = {"agnosticism": 2, "flagged": 2}
    higher_is_better = None  # a diagnostic, not a quality score
    sum_k: Tensor
    sumsq: Tensor
    count: Tensor

    def __init__(self, num_layers: int, num_positions: int, dim: int, threshold: float | None = None,
                 rule: Literal["mad"] = "mad", z: float = 3.5, min_ratio: float = 10.0, layer_names: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(num_layers, layer_names, **kwargs)
        self.num_positions, self.dim = num_positions, dim
        self.threshold, self.rule, self.z, self.min_ratio = threshold, rule, z, min_ratio
        self.add_state("sum_k", torch.zeros(num_layers, num_positions, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sumsq", torch.zeros(num_layers, num_positions, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, keys: Sequence[Tensor] | Tensor) -> None:
        """``keys``: per layer ``(n_images, N, D)`` (or stacked ``(L, n_images, N, D)``)."""
        self._check_layers(keys, "keys")
        n = None
        for layer in range(self.num_layers):
            k = keys[layer]
            if k.dim() != 3 or k.shape[1:] != (self.num_positions, self.dim):
                raise ValueError(f"layer {layer}: keys must be (n_images, {self.num_positions}, {self.dim}), "
                                 f"got {tuple(k.shape)}; all images need the same grid")
            s, sq, n = PF.key_moments(k)
            self.sum_k[layer] += s.to(self.sum_k.device)
            self.sumsq[layer] += sq.to(self.sumsq.device)
        self.count += int(n or 0)

    def compute(self) -> dict[str, Tensor]:
        if int(self.count) < 2:
            raise ValueError("KeyInputAgnosticism needs keys from >= 2 images before compute()")
        agn = PF.agnosticism_from_moments(self.sum_k, self.sumsq, float(self.count))  # (L, N)
        flagged = torch.stack([PF.flag_positions(a, self.threshold, self.rule, self.z, self.min_ratio) for a in agn])
        return {"agnosticism": agn, "flagged": flagged, "score": agn.mean(1), "n_flagged": flagged.sum(1)}
