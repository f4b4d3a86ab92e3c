"""Pascal-5i few-shot foreground segmentation episodes from a VOC2012 tree and fold lists."""

from __future__ import annotations

import random
from pathlib import Path

from vkvtrain.data.perception.schema import (
    FewShotEpisode,
    SegSample,
    load_label_png,
    require_dir,
    require_file,
)
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

LAYOUT = """VOC2012/
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png      (palette PNG: 0 background, 1..20 classes, 255 void; or SegmentationClassAug/)
  ImageSets/Segmentation/<split>.txt   (used when no fold list is given)
fold list (optional, HSNet/PANet style): one '<id>__<class>' (or '<id> <class>') per line, e.g. 2007_000033__00001"""


def fold_classes(fold: int) -> list[int]:
    """The 5 VOC class ids of Pascal-5i fold ``fold`` (0..3): ``5*fold+1 .. 5*fold+5``."""
    if not 0 <= fold <= 3:
        raise DatasetError(f"Pascal-5i fold must be 0..3, got {fold}")
    return list(range(5 * fold + 1, 5 * fold + 6))


class Pascal5i:
    """1-way k-shot episodes of one Pascal-5i fold.

    Every (query image, class) pair of the fold list is an episode; its ``shots`` supports are other
    images of the same class drawn with ``random.Random(seed + index)`` (deterministic); classes with a
    single image give no episode. Without a fold
    list, pairs come from ``ImageSets/Segmentation/<split>.txt`` and the classes present in each mask.
    Class ids are VOC ids (1..20), so metrics should use ``num_classes=21``.
    """

    task = "fewshot"
    num_classes = len(VOC_CLASSES)

    def __init__(self, root: str | Path, fold: int = 0, split: str = "val", shots: int = 5,
                 fold_list: str | Path | None = None, seed: int = 0, limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "Pascal-5i", LAYOUT)
        self.images = require_dir(self.root / "JPEGImages", "Pascal-5i", LAYOUT)
        masks = self.root / "SegmentationClassAug"
        self.masks = masks if masks.is_dir() else require_dir(self.root / "SegmentationClass", "Pascal-5i", LAYOUT)
        self.shots, self.seed = shots, seed
        classes = set(fold_classes(fold))
        pairs = self._read_fold_list(Path(fold_list)) if fold_list else self._scan(split, classes)
        pairs = [(i, c) for i, c in pairs if c in classes]
        if not pairs:
            raise DatasetError(f"Pascal-5i: no (image, class) pairs of fold {fold} found under {self.root}")
        self.by_class: dict[int, list[str]] = {}
        for image_id, c in pairs:
            self.by_class.setdefault(c, []).append(image_id)
        lonely = {c: len(ids) for c, ids in self.by_class.items() if len(ids) < 2}
        pairs = [(i, c) for i, c in pairs if c not in lonely]  # a class needs a query and >= 1 support
        if not pairs:
            counts = ", ".join(f"{VOC_CLASSES[c]} has {n} image(s)" for c, n in lonely.items())
            raise DatasetError(f"Pascal-5i: no class of fold {fold} has >= 2 images ({counts}); an episode needs a "
                               f"query and >= 1 support")
        self.pairs = pairs[:limit] if limit else pairs

    def _read_fold_list(self, path: Path) -> list[tuple[str, int]]:
        require_file(path, "Pascal-5i", LAYOUT)
        pairs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("__") if "__" in line else line.split()
            if len(parts) != 2 or not parts[1].strip().isdigit():
                raise DatasetError(f"Pascal-5i: {path}:{n}: expected '<id>__<class>' or '<id> <class>', got {line!r}")
            pairs.append((parts[0].strip(), int(parts[1])))
        return pairs

    def _scan(self, split: str, classes: set[int]) -> list[tuple[str, int]]:
        ids = require_file(self.root / "ImageSets" / "Segmentation" / f"{split}.txt", "Pascal-5i", LAYOUT)
        pairs = []
        for image_id in ids.read_text().split():
            present = set(load_label_png(self._mask_path(image_id), "Pascal-5i").unique().tolist())
            pairs += [(image_id, c) for c in sorted(present & classes)]
        return pairs

    def _mask_path(self, image_id: str) -> Path:
        return require_file(self.masks / f"{image_id}.png", "Pascal-5i", LAYOUT)

    def sample(self, image_id: str, class_id: int) -> SegSample:
        """The image with the binary mask of ``class_id`` (void pixels in ``ignore``)."""
        label = load_label_png(self._mask_path(image_id), "Pascal-5i")
        image = load_image(require_file(self.images / f"{image_id}.jpg", "Pascal-5i", LAYOUT))
        return SegSample(image, label == class_id, class_id, VOC_CLASSES[class_id], image_id, ignore=label == 255,
                         text=VOC_CLASSES[class_id])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> FewShotEpisode:
        image_id, c = self.pairs[index]
        others = [i for i in self.by_class[c] if i != image_id]
        rng = random.Random(self.seed + index)
        support = rng.sample(others, min(self.shots, len(others)))
        return FewShotEpisode([self.sample(i, c) for i in support], self.sample(image_id, c), c, VOC_CLASSES[c])
