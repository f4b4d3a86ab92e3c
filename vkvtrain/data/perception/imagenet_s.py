"""ImageNet-S semantic segmentation (validation split) in its released layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vkvtrain.data.perception.schema import SegSample, require_dir, require_file
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """ImageNetS919/   (or ImageNetS50 / ImageNetS300)
  validation/<wnid>/<name>.JPEG
  validation-segmentation/<wnid>/<name>.png   (RGB PNG, class id = R + 256 * G; 0 background, 1000 ignore)
names file (optional): lines '<wnid> <name>[, synonyms]' (ImageNet's LOC_synset_mapping.txt)"""

IGNORE_ID = 1000


class ImageNetS:
    """One :class:`SegSample` per validation image: the mask of the image's own class.

    The class id is the most frequent non-background, non-ignore label of the mask (ImageNet-S images
    hold one main class); ``text`` is its class name (first synonym of the names file, else the wnid).
    Pixels labelled 1000 are ``ignore``. Metrics should use ``num_classes=1001`` (``self.num_classes``).
    """

    task = "semantic"
    num_classes = IGNORE_ID + 1

    def __init__(self, root: str | Path, split: str = "validation", names_file: str | Path | None = None,
                 limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "ImageNet-S", LAYOUT)
        self.images = require_dir(self.root / split, "ImageNet-S", LAYOUT)
        self.labels = require_dir(self.root / f"{split}-segmentation", "ImageNet-S", LAYOUT)
        self.names: dict[str, str] = {}
        if names_file:
            for line in require_file(Path(names_file), "ImageNet-S", LAYOUT).read_text().splitlines():
                if line.strip():
                    wnid, _, rest = line.strip().partition(" ")
                    self.names[wnid] = rest.split(",")[0].strip() or wnid
        self.items = sorted((d.name, p) for d in self.labels.iterdir() if d.is_dir() for p in d.glob("*.png"))
        if not self.items:
            raise DatasetError(f"ImageNet-S: no masks under {self.labels}. Expected:\n{LAYOUT}")
        if limit:
            self.items = self.items[:limit]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegSample:
        wnid, label_path = self.items[index]
        with Image.open(label_path) as im:
            if im.mode != "RGB":
                raise DatasetError(f"ImageNet-S: {label_path} has mode {im.mode}; expected an RGB label PNG")
            arr = np.array(im).astype("int64")
        label = torch.from_numpy(arr[..., 0] + 256 * arr[..., 1])
        valid = label[(label != 0) & (label != IGNORE_ID)]
        if valid.numel() == 0:
            raise DatasetError(f"ImageNet-S: {label_path} holds no foreground class")
        class_id = int(torch.bincount(valid).argmax())
        img_path = self.images / wnid / f"{label_path.stem}.JPEG"
        if not img_path.is_file():
            img_path = require_file(self.images / wnid / f"{label_path.stem}.jpg", "ImageNet-S", LAYOUT)
        name = self.names.get(wnid, wnid)
        return SegSample(load_image(img_path), label == class_id, class_id, name, f"{wnid}/{label_path.stem}",
                         ignore=label == IGNORE_ID, text=name)
