"""One rule for LM layer indices, used by every command, metric and intervention.

Indices count from 0; negative ones count from the end (-1 is the last layer), so a recipe written for
several model sizes can name "the last four layers" as [-4, -3, -2, -1].
"""

from __future__ import annotations

from collections.abc import Sequence

from vkvtrain.errors import LayerError


def resolve_layers(layers: Sequence[int] | None, num_layers: int, owner: str = "layers") -> list[int]:
    """Sorted distinct indices in ``0..num_layers-1``; None means every layer.

    Args:
        layers: indices as written (negative ones count from the end), or None.
        num_layers: the LM's layer count.
        owner: what asked (a recipe key, a flag), named in the error.
    Raises:
        LayerError: an index outside ``-num_layers..num_layers-1``, naming it, the owner and the valid range.

    >>> resolve_layers([-1, 0, 3], 4)
    [0, 3]
    >>> resolve_layers(None, 3)
    [0, 1, 2]
    """
    if layers is None:
        return list(range(num_layers))
    resolved = set()
    for layer in layers:
        index = int(layer)
        if not -num_layers <= index < num_layers:
            raise LayerError(
                f"{owner}: layer {layer} does not exist; the LM has {num_layers} layers "
                f"(0..{num_layers - 1}, or -{num_layers}..-1 counting from the end)."
            )
        resolved.add(index % num_layers)
    return sorted(resolved)
