"""Figures: the Agg backend chosen once (files and W&B images only, never a window), ``pyplot`` for every module
that draws, and the one heatmap shared by the probe reports and the training-time validation logs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)  # files and W&B images only; never a window
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

pyplot = plt  # for modules that draw their own figures
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def heatmap_figure(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                   row_title: str, limits: tuple[float, float] | None = (0.0, 1.0)) -> Figure:
    """A (rows x cols) heatmap; NaN cells are left blank. ``limits`` fixes the colour scale (None: data range).

    Args:
        values: (len(row_labels), len(col_labels)) numbers.
    """
    data = np.asarray(values, dtype=float)
    if data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values {data.shape} do not match {len(row_labels)} rows x {len(col_labels)} columns")
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(col_labels) + 1.5, 0.32 * len(row_labels) + 2.0))
    vmin, vmax = limits if limits is not None else (None, None)
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), list(col_labels), rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), list(row_labels), fontsize=7)
    ax.set_ylabel(row_title)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Free a figure's memory (pyplot keeps every open figure)."""
    plt.close(fig)
