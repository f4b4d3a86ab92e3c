"""Probes of the image key/value tokens: torchmetrics metrics with one result per layer.

The math lives in :mod:`vkvtrain.probes.functional`; the protocols are documented in each metric's
docstring and in ``eval/PROBES.md``.
"""

from vkvtrain.probes.agnosticism import KeyInputAgnosticism
from vkvtrain.probes.correspondence import (
    KeypointCorrespondence,
    TemporalCorrespondence,
)
from vkvtrain.probes.functional import input_agnosticism
from vkvtrain.probes.segmentation import (
    CoSegmentation,
    FewShotSegmentation,
    TextGroundedSegmentation,
)

__all__ = [
    "CoSegmentation",
    "FewShotSegmentation",
    "KeyInputAgnosticism",
    "KeypointCorrespondence",
    "TemporalCorrespondence",
    "TextGroundedSegmentation",
    "input_agnosticism",
]
