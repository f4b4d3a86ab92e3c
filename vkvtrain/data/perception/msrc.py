"""MSRC co-segmentation groups in the layout of Rubinstein et al.'s co-segmentation release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vkvtrain.data.perception.schema import CosegGroup, SegSample, require_dir
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """MSRC/
  <group>/<name>.(jpg|png|bmp)          one folder per object class (e.g. cow, plane, car)
  <group>/GroundTruth/<name>.(png|bmp)  binary masks, non-zero = common foreground"""

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class MSRCCoseg:
    """One :class:`CosegGroup` per class folder (sorted), images paired with their GroundTruth masks."""

    task = "coseg"
    num_classes = 2

    def __init__(self, root: str | Path, groups: list[str] | None = None, max_images: int | None = None,
                 limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "MSRC", LAYOUT)
        names = groups or sorted(p.name for p in self.root.iterdir() if (p / "GroundTruth").is_dir())
        if not names:
            raise DatasetError(f"MSRC: no <group>/GroundTruth folders under {self.root}. Expected:\n{LAYOUT}")
        self.groups: list[tuple[str, list[tuple[Path, Path]]]] = []
        for name in names[:limit] if limit else names:
            folder = require_dir(self.root / name, "MSRC", LAYOUT)
            gt_dir = require_dir(folder / "GroundTruth", "MSRC", LAYOUT)
            gts = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
            items = []
            for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS):
                if img.stem not in gts:
                    raise DatasetError(f"MSRC: {img} has no mask {gt_dir}/{img.stem}.png|bmp")
                items.append((img, gts[img.stem]))
            if len(items) < 2:
                raise DatasetError(f"MSRC: group {name!r} has {len(items)} image(s); co-segmentation needs >= 2")
            self.groups.append((name, items[:max_images] if max_images else items))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> CosegGroup:
        name, items = self.groups[index]
        samples = []
        for img_path, gt_path in items:
            with Image.open(gt_path) as gt:
                mask = torch.from_numpy(np.array(gt.convert("L")) > 0)
            samples.append(SegSample(load_image(img_path), mask, 1, name, f"{name}/{img_path.stem}", text=name))
        return CosegGroup(name, samples)
