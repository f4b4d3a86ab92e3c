"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions in the refer API's layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from vkvtrain.data.perception.plain_pickle import load_plain_pickle
from vkvtrain.data.perception.schema import SegSample, require_dir, require_file
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """<root>/
  refcoco/refs(unc).p          pickle: list of refs {ref_id, ann_id, image_id, split, sentences[{sent}], category_id}
  refcoco/instances.json       COCO json: images[{id, file_name, height, width}], annotations[{id, segmentation}],
                               categories[{id, name}]
  images/mscoco/images/train2014/COCO_train2014_<id>.jpg   (or pass images_dir)"""


def polygons_to_mask(segmentation: Any, height: int, width: int, where: str) -> torch.Tensor:
    """COCO polygons (list of flat ``[x0, y0, x1, y1, ...]``) or uncompressed RLE -> ``(H, W)`` bool."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segmentation:
            if len(poly) < 6:
                raise DatasetError(f"RefCOCO: {where}: polygon with < 3 points")
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1)
        return torch.from_numpy(np.array(canvas) > 0)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        flat = np.zeros(height * width, dtype=bool)
        pos, val = 0, False
        for run in segmentation["counts"]:
            flat[pos:pos + run] = val
            pos, val = pos + run, not val
        return torch.from_numpy(flat.reshape(width, height).T.copy())  # COCO RLE is column-major
    raise DatasetError(f"RefCOCO: {where}: unsupported segmentation (compressed RLE needs pycocotools); "
                       f"convert it to polygons or uncompressed RLE")


class RefCOCO:
    """One :class:`SegSample` per (referring expression, split); ``text`` is the sentence."""

    task = "referring"

    def __init__(self, root: str | Path, dataset: str = "refcoco", split_by: str = "unc", split: str = "val",
                 images_dir: str | Path | None = None, limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "RefCOCO", LAYOUT)
        folder = require_dir(self.root / dataset, "RefCOCO", LAYOUT)
        refs_path = require_file(folder / f"refs({split_by}).p", "RefCOCO", LAYOUT)
        inst_path = require_file(folder / "instances.json", "RefCOCO", LAYOUT)
        self.images_dir = Path(images_dir) if images_dir else self.root / "images" / "mscoco" / "images" / "train2014"
        require_dir(self.images_dir, "RefCOCO", LAYOUT)
        refs = load_plain_pickle(refs_path, "RefCOCO")  # plain data only: a crafted file cannot run code
        try:
            inst = json.loads(inst_path.read_text())
            self.imgs = {im["id"]: im for im in inst["images"]}
            self.anns = {a["id"]: a for a in inst["annotations"]}
            self.cats = {c["id"]: c["name"] for c in inst["categories"]}
            self.samples = [(r, s["sent"]) for r in refs if r["split"] == split for s in r["sentences"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(f"RefCOCO: malformed {refs_path.name} or instances.json under {folder} ({err!r}). "
                               f"Expected:\n{LAYOUT}") from err
        if not self.samples:
            raise DatasetError(f"RefCOCO: no expressions in split {split!r} of {refs_path}")
        if limit:
            self.samples = self.samples[:limit]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> SegSample:
        ref, sent = self.samples[index]
        try:
            meta, ann = self.imgs[ref["image_id"]], self.anns[ref["ann_id"]]
        except KeyError as err:
            raise DatasetError(f"RefCOCO: ref {ref.get('ref_id')} points at a missing image/annotation {err}") from err
        image = load_image(require_file(self.images_dir / meta["file_name"], "RefCOCO", LAYOUT))
        mask = polygons_to_mask(ann["segmentation"], image.size[1], image.size[0], f"ann {ann['id']}")
        cid = int(ref["category_id"])
        return SegSample(image, mask, cid, self.cats.get(cid, str(cid)), f"ref{ref['ref_id']}", text=sent)
