"""DAVIS-2017 (and DAVIS-2016) video object segmentation clips in the released layout."""

from __future__ import annotations

from pathlib import Path

import torch

from vkvtrain.data.perception.schema import (
    VideoClip,
    load_label_png,
    require_dir,
    require_file,
)
from vkvtrain.errors import DatasetError
from vkvtrain.images import load_image

LAYOUT = """DAVIS/
  JPEGImages/<resolution>/<sequence>/00000.jpg ...
  Annotations/<resolution>/<sequence>/00000.png ...  (palette PNG of object ids; DAVIS-2016: 0/255 binary)
  ImageSets/2017/<split>.txt                         (optional: sequence names; else every sequence)"""


class DAVIS:
    """One :class:`VideoClip` per sequence; masks are object ids (a 0/255 DAVIS-2016 mask becomes 0/1).

    ``max_frames`` keeps the first frames of each clip (short runs); ``stride`` subsamples frames.
    """

    task = "temporal"

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p",
                 sequences: list[str] | None = None, max_frames: int | None = None, stride: int = 1,
                 limit: int | None = None) -> None:
        self.root = require_dir(Path(root), "DAVIS", LAYOUT)
        self.frames_dir = require_dir(self.root / "JPEGImages" / resolution, "DAVIS", LAYOUT)
        self.masks_dir = require_dir(self.root / "Annotations" / resolution, "DAVIS", LAYOUT)
        listing = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if sequences is None:
            sequences = (listing.read_text().split() if listing.is_file()
                         else sorted(p.name for p in self.masks_dir.iterdir() if p.is_dir()))
        if not sequences:
            raise DatasetError(f"DAVIS: no sequences under {self.masks_dir}. Expected:\n{LAYOUT}")
        self.sequences = sequences[:limit] if limit else sequences
        self.max_frames, self.stride = max_frames, stride

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> VideoClip:
        seq = self.sequences[index]
        mask_files = sorted(require_dir(self.masks_dir / seq, "DAVIS", LAYOUT).glob("*.png"))[:: self.stride]
        if self.max_frames:
            mask_files = mask_files[: self.max_frames]
        if len(mask_files) < 2:
            raise DatasetError(f"DAVIS: sequence {seq!r} has {len(mask_files)} annotated frame(s); need >= 2")
        frames = [load_image(require_file(self.frames_dir / seq / f"{m.stem}.jpg", "DAVIS", LAYOUT))
                  for m in mask_files]
        masks = torch.stack([load_label_png(m, "DAVIS") for m in mask_files])
        values = set(masks.unique().tolist())
        if values <= {0, 255}:
            masks = (masks == 255).long()
        else:
            masks[masks == 255] = 0  # DAVIS-2017 palette index 255 marks void; treat it as background
        return VideoClip(seq, frames, masks, [int(o) for o in masks[0].unique() if o != 0])
