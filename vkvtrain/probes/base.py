"""Shared base of the layer-wise probe metrics: one metric holds every layer's result."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class LayerwiseMetric(Metric):
    """A torchmetrics ``Metric`` whose ``compute()`` returns a dict of ``(num_layers,)`` tensors.

    ``layer_names`` label the rows (e.g. ``["embeds", "0", "1", ...]``); ``plot()`` draws one curve per
    scalar-per-layer result against the layer. Subclasses declare fixed-size states with
    ``dist_reduce_fx="sum"`` so distributed reduction is exact.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    #: keys of ``compute()`` that ``plot()`` draws
    plot_keys: tuple[str, ...] = ()

    def __init__(self, num_layers: int, layer_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if layer_names is not None and len(layer_names) != num_layers:
            raise ValueError(f"got {len(layer_names)} layer_names for num_layers={num_layers}")
        self.num_layers = num_layers
        self.layer_names = [str(n) for n in layer_names] if layer_names is not None else [str(i) for i in range(num_layers)]

    def _wrap_compute(self, compute: Callable) -> Callable:
        # torchmetrics squeezes one-element results; keep (L,) shapes even when L == 1.
        def recording(*args: Any, **kwargs: Any) -> Any:
            out = compute(*args, **kwargs)
            self._result_shapes = {key: tuple(v.shape) for key, v in out.items()}
            return out

        inner = super()._wrap_compute(recording)

        @functools.wraps(compute)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            return {key: v.reshape(self._result_shapes[key]) for key, v in out.items()}

        return wrapped

    def _check_layers(self, feats: Sequence[Any] | Tensor, what: str) -> None:
        if len(feats) != self.num_layers:
            raise ValueError(f"{type(self).__name__}: {what} has {len(feats)} layers, metric was built for "
                             f"num_layers={self.num_layers}")

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any = None) -> tuple[Any, Any]:
        """Per-layer curve of every result in ``plot_keys``; returns ``(figure, axes)``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        val = val if val is not None else self.compute()
        fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.get_figure(), ax))
        xs = list(range(self.num_layers))
        for key in self.plot_keys:
            if key in val:
                ax.plot(xs, torch.as_tensor(val[key]).detach().float().cpu().tolist(), marker="o", label=key)
        ax.set_xticks(xs)
        ax.set_xticklabels(self.layer_names, rotation=90 if self.num_layers > 12 else 0)
        ax.set_xlabel("layer")
        ax.set_title(type(self).__name__)
        ax.legend()
        ax.grid(alpha=0.3)
        return fig, ax


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """Elementwise ``num / den`` in float64, NaN where ``den == 0``."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
