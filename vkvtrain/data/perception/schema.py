"""The one schema every perception dataset returns (real loaders and synthetic generators alike).

Conventions: images are RGB ``PIL.Image``; masks are ``torch.bool`` ``(H, W)`` at the image's size;
keypoints are float ``(K, 2)`` pixel ``(x, y)``; boxes are ``(x0, y0, x1, y1)`` pixels.

=========== ===================== ==============================================================
task        item                  fields used by the probe
=========== ===================== ==============================================================
fewshot     :class:`FewShotEpisode`  support samples (image, mask), query sample, class id
coseg       :class:`CosegGroup`      samples (image, mask) of one common object class
semantic    :class:`SegSample`       image, mask of ``text`` (the class name), class id
referring   :class:`SegSample`       image, mask of ``text`` (the referring expression)
keypoints   :class:`KeypointPair`    both images, keypoints, target box
temporal    :class:`VideoClip`       frames, ``(T, H, W)`` long masks (0 = background, 1.. objects)
=========== ===================== ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from PIL import Image

from vkvtrain.errors import DatasetError


@dataclass
class SegSample:
    """One image with a binary target mask.

    ``ignore`` marks pixels left out of scoring (VOC's 255 border, ImageNet-S's 1000). ``text`` is the
    class name (semantic) or the referring expression (referring); ``class_id`` indexes the dataset's
    class list (0 is background where the dataset has one).
    """

    image: Image.Image
    mask: torch.Tensor  # (H, W) bool
    class_id: int
    class_name: str
    image_id: str
    ignore: torch.Tensor | None = None  # (H, W) bool
    text: str | None = None

    def __post_init__(self) -> None:
        w, h = self.image.size
        if tuple(self.mask.shape) != (h, w):
            raise DatasetError(f"{self.image_id}: mask {tuple(self.mask.shape)} does not match image (H, W)={(h, w)}")
        self.mask = self.mask.bool()


@dataclass
class FewShotEpisode:
    """k support samples and one query sample of the same class."""

    support: list[SegSample]
    query: SegSample
    class_id: int
    class_name: str


@dataclass
class CosegGroup:
    """Images sharing a common foreground object class."""

    name: str
    samples: list[SegSample]


@dataclass
class KeypointPair:
    """A source/target image pair with matching keypoints (row i of each corresponds)."""

    source: Image.Image
    target: Image.Image
    source_kps: torch.Tensor  # (K, 2) float (x, y)
    target_kps: torch.Tensor  # (K, 2)
    source_bbox: torch.Tensor  # (4,) float
    target_bbox: torch.Tensor  # (4,)
    category: str
    pair_id: str


@dataclass
class VideoClip:
    """Frames of one sequence and their object masks."""

    name: str
    frames: list[Image.Image]
    masks: torch.Tensor  # (T, H, W) long, 0 = background
    object_ids: list[int] = field(default_factory=list)


Item = TypeVar("Item", covariant=True)


@runtime_checkable
class PerceptionDataset(Protocol[Item]):
    """What a loader or generator offers: ``task`` (the probe task whose items it returns, see the table above),
    ``len`` and indexing."""

    task: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...


def require_dir(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a directory, else a :class:`DatasetError` describing the expected layout."""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: directory {str(path)!r} is missing. Expected the native layout:\n{layout}\n"
                           f"Point the config's data root at the folder that holds it.")
    return path


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` describing the expected layout."""
    if not path.is_file():
        raise DatasetError(f"{dataset}: file {str(path)!r} is missing. Expected the native layout:\n{layout}")
    return path


def load_label_png(path: Path, dataset: str) -> torch.Tensor:
    """A palette/grey label PNG -> ``(H, W)`` long tensor of its indices."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1", "I", "I;16"):
                raise DatasetError(f"{dataset}: label image {str(path)!r} has mode {im.mode}; expected a palette "
                                   f"or greyscale index PNG")
            return torch.from_numpy(np.array(im).astype("int64"))
    except (OSError, SyntaxError) as err:
        raise DatasetError(f"{dataset}: label image {str(path)!r} is unreadable ({err})") from err
