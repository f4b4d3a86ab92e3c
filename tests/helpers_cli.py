"""A typed entry function registered by tests as a command with sub-commands (``organism build``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vkvtrain.outcome import Outcome


@dataclass
class WorldConfig:
    """A made-up config: ``size`` cells, ``shapes`` to draw."""

    size: int = 4
    shapes: list[str] = field(default_factory=lambda: ["circle"])


def build(config: WorldConfig, seed: int = 0) -> Outcome:
    """Build a made-up world (a test command).

    Args:
        seed: random seed.
    """
    return Outcome(title="organism build", figures={"size": str(config.size), "shapes": ",".join(config.shapes),
                                                    "seed": str(seed)})
