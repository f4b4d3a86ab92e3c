"""Leakage guard: recognise a training image that BLINK itself shows, by a perceptual hash of its pixels.

BLINK's images are its source datasets' photos with markers drawn in and re-encoded (sometimes resized), so
byte hashes never match; a 64-bit DCT hash (grey 32x32 area-averaged image, 2-D DCT, the 8x8 lowest
frequencies without the constant term, each bit = coefficient above their median) changes by a few bits for
small markers, JPEG and resizing, and by ~32 bits between unrelated photos. Two images match when their
hashes differ in at most ``max_distance`` bits (default 10). Crops of a photo are not recognised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from scipy.fft import dctn

from vkvtrain.data.blink import (
    BLINK_SPLITS,
    BLINK_SUBTASKS,
    IMAGE_FIELDS,
    load_blink_datasets,
)
from vkvtrain.errors import DatasetError
from vkvtrain.images import decode_image


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT hash of ``image`` (see module docstring)."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64)
    low = dctn(grey, norm="ortho")[:8, :8].reshape(-1)[1:]  # 63 lowest frequencies, constant term dropped
    bits = low > np.median(low)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return int.bit_count(a ^ b)


class ImageHashIndex:
    """Perceptual hashes of a set of images; ``matches(image)`` tells whether one of them looks the same."""

    def __init__(self, hashes: Iterable[int], max_distance: int = 10) -> None:
        self.hashes = np.array(sorted(set(hashes)), dtype=np.uint64)
        self.max_distance = max_distance

    def __len__(self) -> int:
        return len(self.hashes)

    def distance(self, image: Image.Image) -> int:
        """Bits between ``image``'s hash and the nearest indexed one (64 for an empty index)."""
        if len(self.hashes) == 0:
            return 64
        xor = np.bitwise_xor(self.hashes, np.uint64(perceptual_hash(image)))
        return int(np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(1).min())

    def matches(self, image: Image.Image) -> bool:
        return self.distance(image) <= self.max_distance

    @classmethod
    def from_blink(cls, root: str | Path, max_distance: int = 10) -> ImageHashIndex:
        """Every image of a local BLINK copy (``root/<Subtask>/<split>[-*].parquet`` or save_to_disk
        folders, both splits, every subtask present)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"BLINK copy {root} for the leakage check is not a directory; give the folder "
                               "with one sub-folder per subtask (as for evaluate --data.root), or leave it unset")
        subtasks = [s for s in BLINK_SUBTASKS if (root / s).is_dir()]
        if not subtasks:
            raise DatasetError(f"no BLINK subtask folder under {root} (expected e.g. {root / BLINK_SUBTASKS[0]})")
        hashes = []
        for split in BLINK_SPLITS:
            for name in subtasks:
                try:
                    ds = load_blink_datasets([name], split, root=root)[name]
                except DatasetError:
                    continue  # this split is not in the copy
                for i in range(len(ds)):
                    row = ds[i]
                    for field in IMAGE_FIELDS:
                        image = decode_image(row[field], f"{root / name} ({split}) row {i}, {field}")
                        if image is not None:
                            hashes.append(perceptual_hash(image))
        if not hashes:
            raise DatasetError(f"no BLINK image found under {root}; check the folder")
        return cls(hashes, max_distance)
