"""Synthetic perception data with exact ground truth, one generator per probe task.

Every generator is deterministic in ``(seed, index)``, renders on the fly with PIL and returns the schema
of :mod:`vkvtrain.data.perception.schema`. Scenes are coloured shapes (circle, square, triangle) on a
smooth random-texture background; masks are rendered with the same geometry, so they are exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from vkvtrain.data.perception.schema import (
    CosegGroup,
    FewShotEpisode,
    KeypointPair,
    SegSample,
    VideoClip,
)

SHAPES = ("circle", "square", "triangle")  # class ids 1, 2, 3 (0 = background)
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}


@dataclass
class Shape:
    """A shape of class ``kind`` filling the box ``(x0, y0, x1, y1)``."""

    kind: str
    box: tuple[float, float, float, float]
    color: str

    @property
    def class_id(self) -> int:
        return SHAPES.index(self.kind) + 1

    def draw(self, draw: ImageDraw.ImageDraw, fill: float | tuple[int, ...] | str) -> None:
        x0, y0, x1, y1 = self.box
        if self.kind == "circle":
            draw.ellipse(self.box, fill=fill)
        elif self.kind == "square":
            draw.rectangle(self.box, fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def background(size: int, rng: random.Random) -> Image.Image:
    """A smooth random texture: 4x4 random colours upsampled bicubically to ``size``, muted to grey."""
    nrng = np.random.default_rng(rng.randrange(2**31))
    coarse = (nrng.uniform(60, 190, (4, 4, 3))).astype(np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def random_shape(size: int, rng: random.Random, kind: str | None = None, color: str | None = None,
                 min_frac: float = 0.3, max_frac: float = 0.55) -> Shape:
    """A random shape whose side is ``min_frac..max_frac`` of the image, fully inside it."""
    side = rng.uniform(min_frac, max_frac) * size
    x0 = rng.uniform(0.05 * size, size * 0.95 - side)
    y0 = rng.uniform(0.05 * size, size * 0.95 - side)
    return Shape(kind or rng.choice(SHAPES), (x0, y0, x0 + side, y0 + side), color or rng.choice(list(COLORS)))


def render(shapes: list[Shape], size: int, rng: random.Random,
           bg: Image.Image | None = None) -> tuple[Image.Image, torch.Tensor]:
    """Draw ``shapes`` in order (later on top) -> image and ``(H, W)`` long label map (0 bg, i+1 = shape i)."""
    image = (bg or background(size, rng)).copy()
    labels = Image.new("L", (size, size), 0)
    d_img, d_lab = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for i, shape in enumerate(shapes):
        shape.draw(d_img, COLORS[shape.color])
        shape.draw(d_lab, i + 1)
    return image, torch.from_numpy(np.array(labels).astype("int64"))


def shape_sample(size: int, rng: random.Random, kind: str, image_id: str, text: str | None = None) -> SegSample:
    """One image holding a single shape of ``kind`` and its mask."""
    shape = random_shape(size, rng, kind)
    image, labels = render([shape], size, rng)
    return SegSample(image, labels == 1, shape.class_id, kind, image_id, text=text or kind)


class _Generator:
    task = ""
    num_classes = len(SHAPES) + 1

    def __init__(self, n: int = 8, size: int = 64, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def _rng(self, index: int) -> random.Random:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return random.Random(f"{type(self).__name__}/{self.seed}/{index}")


class SyntheticFewShot(_Generator):
    """k-shot episodes: supports and query each hold one shape of the episode's class (cycling classes)."""

    task = "fewshot"

    def __init__(self, n: int = 8, shots: int = 5, size: int = 64, seed: int = 0) -> None:
        super().__init__(n, size, seed)
        self.shots = shots

    def __getitem__(self, index: int) -> FewShotEpisode:
        rng = self._rng(index)
        kind = SHAPES[index % len(SHAPES)]
        items = [shape_sample(self.size, rng, kind, f"ep{index}/{j}") for j in range(self.shots + 1)]
        return FewShotEpisode(items[:-1], items[-1], SHAPES.index(kind) + 1, kind)


class SyntheticCoseg(_Generator):
    """Groups of ``group_size`` images sharing one shape class (colour and background vary)."""

    task = "coseg"

    def __init__(self, n: int = 4, group_size: int = 4, size: int = 64, seed: int = 0) -> None:
        super().__init__(n, size, seed)
        self.group_size = group_size

    def __getitem__(self, index: int) -> CosegGroup:
        rng = self._rng(index)
        kind = SHAPES[index % len(SHAPES)]
        return CosegGroup(kind, [shape_sample(self.size, rng, kind, f"g{index}/{j}") for j in range(self.group_size)])


class SyntheticSemantic(_Generator):
    """One shape per image; ``text`` is its class name (the semantic-segmentation prompt)."""

    task = "semantic"

    def __getitem__(self, index: int) -> SegSample:
        return shape_sample(self.size, self._rng(index), SHAPES[index % len(SHAPES)], f"sem{index}")


class SyntheticReferring(_Generator):
    """Two shapes differing in kind and colour; ``text`` ("the red circle") refers to exactly one."""

    task = "referring"

    def __getitem__(self, index: int) -> SegSample:
        rng = self._rng(index)
        kinds = rng.sample(SHAPES, 2)
        colors = rng.sample(list(COLORS), 2)
        half = self.size / 2
        a = random_shape(int(half), rng, kinds[0], colors[0], 0.6, 0.85)
        b = random_shape(int(half), rng, kinds[1], colors[1], 0.6, 0.85)
        left_right = rng.random() < 0.5
        dx, dy = (half, 0.0) if left_right else (0.0, half)
        b.box = (b.box[0] + dx, b.box[1] + dy, b.box[2] + dx, b.box[3] + dy)
        image, labels = render([a, b], self.size, rng)
        target = rng.randrange(2)
        shape = (a, b)[target]
        return SegSample(image, labels == target + 1, shape.class_id, shape.kind, f"ref{index}",
                         text=f"the {shape.color} {shape.kind}")


class SyntheticKeypointPairs(_Generator):
    """A shape image and a warped copy with keypoints mapped exactly.

    ``warp="affine"``: the target is the source scaled by ``s`` in [0.8, 1.2] about the centre and shifted
    by up to 10% of the size (keypoints follow the same map); ``warp="identity"``: the target is the source.
    Keypoints are interior pixels of the shape; ``*_bbox`` are the shape's boxes.
    """

    task = "keypoints"

    def __init__(self, n: int = 8, size: int = 64, n_kps: int = 6, warp: str = "affine", seed: int = 0) -> None:
        super().__init__(n, size, seed)
        if warp not in ("affine", "identity"):
            raise ValueError(f"warp must be 'affine' or 'identity', got {warp!r}")
        self.n_kps, self.warp = n_kps, warp

    def __getitem__(self, index: int) -> KeypointPair:
        rng = self._rng(index)
        shape = random_shape(self.size, rng, min_frac=0.35, max_frac=0.5)
        source, labels = render([shape], self.size, rng)
        x0, y0, x1, y1 = shape.box
        inner = labels == 1  # keypoints sit on interior pixels (their 3x3 neighbourhood is all shape)
        inner = torch.nn.functional.max_pool2d((~inner).float()[None, None], 3, 1, 1)[0, 0] == 0
        ys, xs = inner.nonzero(as_tuple=True)
        picks = [rng.randrange(len(xs)) for _ in range(self.n_kps)]
        kps = torch.tensor([[float(xs[i]), float(ys[i])] for i in picks])
        box = torch.tensor(shape.box)
        if self.warp == "identity":
            return KeypointPair(source, source.copy(), kps, kps.clone(), box, box.clone(), shape.kind, f"pair{index}")
        s = rng.uniform(0.8, 1.2)
        c = self.size / 2
        lim = 0.1 * self.size
        # the shift keeps the warped box inside the image
        lo_x, hi_x = max(-lim, 1 - (s * (x0 - c) + c)), min(lim, self.size - 1 - (s * (x1 - c) + c))
        lo_y, hi_y = max(-lim, 1 - (s * (y0 - c) + c)), min(lim, self.size - 1 - (s * (y1 - c) + c))
        tx = rng.uniform(lo_x, hi_x) if lo_x <= hi_x else (lo_x + hi_x) / 2
        ty = rng.uniform(lo_y, hi_y) if lo_y <= hi_y else (lo_y + hi_y) / 2
        # forward map p' = s * (p - c) + c + t; PIL wants the inverse map target -> source
        inv = (1 / s, 0.0, c - (c + tx) / s, 0.0, 1 / s, c - (c + ty) / s)
        target = source.transform(source.size, Image.Transform.AFFINE, inv, resample=Image.Resampling.BILINEAR)

        def fwd(p: torch.Tensor) -> torch.Tensor:
            return s * (p - c) + c + torch.tensor([tx, ty])

        tbox = torch.cat([fwd(box[:2]), fwd(box[2:])])
        return KeypointPair(source, target, kps, fwd(kps), box, tbox, shape.kind, f"pair{index}")


class SyntheticClips(_Generator):
    """Clips of ``frames`` frames: 1-2 shapes moving in straight lines over a fixed background."""

    task = "temporal"

    def __init__(self, n: int = 4, frames: int = 6, size: int = 64, n_objects: int = 2, seed: int = 0) -> None:
        super().__init__(n, size, seed)
        self.frames, self.n_objects = frames, n_objects

    def __getitem__(self, index: int) -> VideoClip:
        rng = self._rng(index)
        bg = background(self.size, rng)
        shapes = [random_shape(self.size, rng, min_frac=0.25, max_frac=0.35) for _ in range(self.n_objects)]
        for i, sh in enumerate(shapes):
            sh.color = list(COLORS)[i % len(COLORS)]
        steps = [(rng.uniform(-1.5, 1.5) * self.size / 64, rng.uniform(-1.5, 1.5) * self.size / 64) for _ in shapes]
        frames, masks = [], []
        for t in range(self.frames):
            moved = [Shape(sh.kind, _clamp_box(sh.box, dx * t, dy * t, self.size), sh.color)
                     for sh, (dx, dy) in zip(shapes, steps)]
            image, labels = render(moved, self.size, rng, bg=bg)
            frames.append(image)
            masks.append(labels)
        mask = torch.stack(masks)
        return VideoClip(f"clip{index}", frames, mask, [int(o) for o in mask[0].unique() if o != 0])


def _clamp_box(box: tuple[float, float, float, float], dx: float, dy: float, size: int
               ) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    dx = min(max(dx, -x0), size - 1 - x1)
    dy = min(max(dy, -y0), size - 1 - y1)
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
