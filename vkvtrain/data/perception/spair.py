"""SPair-71k semantic keypoint pairs in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vkvtrain.data.perception.schema import KeypointPair, require_dir, require_file
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """SPair-71k/
  JPEGImages/<category>/<imname>.jpg
  PairAnnotation/<split>/<pair>.json    (split: trn | val | test) with src_imname, trg_imname, category,
                                         src_kps, trg_kps ([[x, y], ...]), src_bndbox, trg_bndbox ([x0, y0, x1, y1])
  Layout/large/<split>.txt              (optional: pair order, '<pair>:<category>' per line)"""

FIELDS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox")


class SPair71k:
    """One :class:`KeypointPair` per pair annotation file; PCK is normalised by the target box."""

    task = "keypoints"

    def __init__(self, root: str | Path, split: str = "test", categories: list[str] | None = None,
                 limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "SPair-71k", LAYOUT)
        self.images = require_dir(self.root / "JPEGImages", "SPair-71k", LAYOUT)
        ann_dir = require_dir(self.root / "PairAnnotation" / split, "SPair-71k", LAYOUT)
        layout = self.root / "Layout" / "large" / f"{split}.txt"
        if layout.is_file():
            names = [ln.split(":")[0].strip() for ln in layout.read_text().splitlines() if ln.strip()]
            self.files = [require_file(ann_dir / f"{n}.json", "SPair-71k", LAYOUT) for n in names]
        else:
            self.files = sorted(ann_dir.glob("*.json"))
        if categories:
            self.files = [f for f in self.files if f.stem.rsplit(":", 1)[-1] in categories
                          or self._read(f)["category"] in categories]
        if not self.files:
            raise DatasetError(f"SPair-71k: no pair annotations in {ann_dir}. Expected:\n{LAYOUT}")
        if limit:
            self.files = self.files[:limit]

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            ann = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"SPair-71k: {path} is not valid JSON ({err})") from err
        missing = [k for k in FIELDS if k not in ann]
        if missing:
            raise DatasetError(f"SPair-71k: {path} lacks fields {missing}. Expected:\n{LAYOUT}")
        return ann

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> KeypointPair:
        ann = self._read(self.files[index])
        cat = ann["category"]
        src = load_image(require_file(self.images / cat / ann["src_imname"], "SPair-71k", LAYOUT))
        trg = load_image(require_file(self.images / cat / ann["trg_imname"], "SPair-71k", LAYOUT))
        src_kps = torch.tensor(ann["src_kps"], dtype=torch.float32).reshape(-1, 2)
        trg_kps = torch.tensor(ann["trg_kps"], dtype=torch.float32).reshape(-1, 2)
        if src_kps.shape != trg_kps.shape:
            raise DatasetError(f"SPair-71k: {self.files[index]} has {len(src_kps)} source but {len(trg_kps)} target kps")
        return KeypointPair(src, trg, src_kps, trg_kps, torch.tensor(ann["src_bndbox"], dtype=torch.float32),
                            torch.tensor(ann["trg_bndbox"], dtype=torch.float32), cat, self.files[index].stem)
