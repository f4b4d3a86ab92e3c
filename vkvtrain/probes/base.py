"""Shared base of the layer-wise probe metrics: one metric holds every row's (layer's) result."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vkvtrain.plots import pyplot as plt


class LayerwiseMetric(Metric):
    """A torchmetrics ``Metric`` whose ``compute()`` returns a dict of ``(num_layers, ...)`` tensors.

    ``layer_names`` label the rows (e.g. ``["input_embeds", "0", "1", ...]``); ``plot()`` draws one curve per
    scalar-per-row result against the row. Subclasses declare fixed-size states with ``dist_reduce_fx="sum"``
    so distributed reduction is exact, and every row's result depends on that row's states only.
    """

    full_state_update = False
    higher_is_better: bool | None = True
    is_differentiable = False
    #: keys of ``compute()`` that ``plot()`` draws
    plot_keys: ClassVar[tuple[str, ...]] = ()
    #: number of dimensions of a ``compute()`` result (the first is the row axis); unlisted keys have 1
    result_ndim: ClassVar[dict[str, int]] = {}

    def __init__(self, num_layers: int, layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if layer_names is not None and len(layer_names) != num_layers:
            raise ValueError(f"got {len(layer_names)} layer_names for num_layers={num_layers}")
        self.num_layers = num_layers
        self.layer_names = [str(n) for n in layer_names] if layer_names is not None else [str(i) for i in range(num_layers)]
        self._keep_row_axis()

    def _keep_row_axis(self) -> None:
        """Wrap the public ``compute`` (torchmetrics' synced, cached one) so results keep their row axis.

        torchmetrics squeezes one-element results to 0-d tensors; a one-row metric must still return
        ``(1,)`` (or ``(1, 1)``) so callers can index rows without special cases.
        """
        synced_compute = self.compute

        @functools.wraps(synced_compute)
        def compute() -> dict[str, Tensor]:
            out = synced_compute()
            return {key: value.reshape((1,) * self.result_ndim.get(key, 1)) if value.dim() == 0 else value
                    for key, value in out.items()}

        self.compute = compute  # type: ignore[method-assign]  # as torchmetrics itself wraps compute

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # re-wraps compute (pickling and deepcopy drop the wrappers)
        self._keep_row_axis()

    def _check_layers(self, feats: Sequence[Any] | Tensor, what: str) -> None:
        if len(feats) != self.num_layers:
            raise ValueError(f"{type(self).__name__}: {what} has {len(feats)} layers, metric was built for "
                             f"num_layers={self.num_layers}")

    def plot(self, val: Any = None, ax: Any = None) -> tuple[Any, Any]:
        """Per-row curve of every result in ``plot_keys``; returns ``(figure, axes)``."""
        val = val if val is not None else self.compute()
        fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.get_figure(), ax))
        xs = list(range(self.num_layers))
        for key in self.plot_keys:
            if key in val:
                ax.plot(xs, torch.as_tensor(val[key]).detach().float().cpu().tolist(), marker="o", label=key)
        ax.set_xticks(xs)
        ax.set_xticklabels(self.layer_names, rotation=90 if self.num_layers > 12 else 0)
        ax.set_xlabel("row")
        ax.set_title(type(self).__name__)
        ax.legend()
        ax.grid(alpha=0.3)
        return fig, ax


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """Elementwise ``num / den`` in float64, NaN where ``den == 0``."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
