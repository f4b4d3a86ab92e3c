"""The organism's visual world: scenes of textured shapes with exact masks, identities, positions and parts.

A scene is a smooth random background with 1-4 non-overlapping objects. An object has a ``kind`` (its
outline), a ``colour``, a ``texture`` (the pattern it is painted with, in shades of its colour), a centre and a
size (the side of its square box). Every object pixel belongs to one of five ``PARTS`` defined in the
object's own frame (``u, v`` in [-1, 1] across its box): ``centre`` (max(|u|, |v|) < CENTRE_RADIUS), else
``top``/``bottom``/``left``/``right`` by the sector its direction from the box centre falls in. So "the top of
a shape" is the same part across instances of any colour, texture, size and position: a concept that the
pixels alone do not carry.

Rendering is numpy on the pixel grid, and the label maps come from the same membership tests as the pixels,
so masks, instance ids and parts are exact. A point ``(x, y)`` in [0, 1] lies in grid cell
``(floor(y * GRID), floor(x * GRID))`` of the base-resolution token grid, the rule
:mod:`vkvtrain.evaluation.latent` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

Rng = np.random.Generator

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "dome")
PARTS: tuple[str, ...] = ("top", "bottom", "left", "right", "centre")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35), "green": (40, 175, 60), "blue": (45, 80, 225),
    "yellow": (235, 205, 35), "purple": (150, 60, 200), "orange": (240, 130, 30),
}
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checks")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

IMAGE_SIZE = 64  # pixels per side
PATCH = 8  # pixels per token side
GRID = IMAGE_SIZE // PATCH  # tokens per side of the base grid
CENTRE_RADIUS = 0.4  # in box half-sides: the centre part is the inner square max(|u|, |v|) < this


@dataclass(frozen=True)
class WorldObject:
    """One object: ``kind``/``colour``/``texture`` names, box centre ``(cx, cy)`` and ``size`` in pixels.

    ``angle`` (radians) and ``phase`` (pixels) place the texture pattern.
    """

    kind: str
    colour: str
    texture: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    phase: float = 0.0

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in pixels."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass
class Scene:
    """A rendered scene.

    image: ``(S, S, 3)`` uint8. instances: ``(S, S)`` int, 0 background, ``i + 1`` = ``objects[i]``.
    parts: ``(S, S)`` int, 0 background, ``j + 1`` = ``PARTS[j]``. uv: ``(S, S, 2)`` float, each object pixel's
    coordinates in its object's frame (box half-sides from the box centre; 0 on the background).
    """

    objects: list[WorldObject]
    image: np.ndarray
    instances: np.ndarray
    parts: np.ndarray
    uv: np.ndarray
    background_seed: int = 0
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def mask(self, index: int) -> np.ndarray:
        """``(S, S)`` bool mask of ``objects[index]``."""
        return self.instances == index + 1

    def kind_map(self) -> np.ndarray:
        """``(S, S)`` int: 0 background, ``KINDS.index(kind) + 1`` on each object."""
        lut = np.array([0] + [KINDS.index(o.kind) + 1 for o in self.objects])
        return lut[self.instances]


# ------------------------------------------------------------------------------------------ geometry
def inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of object-frame coordinates ``u, v`` (box half-sides, y down) in ``kind``'s outline."""
    au, av = np.abs(u), np.abs(v)
    box = (au <= 1) & (av <= 1)
    if kind == "circle":
        return u**2 + v**2 <= 1
    if kind == "square":
        return (au <= 0.9) & (av <= 0.9)
    if kind == "triangle":  # apex up, base down
        return box & (au <= (v + 1) / 2)
    if kind == "diamond":
        return au + av <= 1
    if kind == "cross":
        return box & ((au <= 0.36) | (av <= 0.36))
    if kind == "dome":  # half-disc standing on its flat side, plus a base slab
        return box & ((u**2 + (v - 0.35) ** 2 / 1.35**2 <= 1) & (v <= 0.9))
    raise ValueError(f"unknown kind {kind!r}; kinds are {KINDS}")


def part_of(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Part index (into PARTS) of object-frame coordinates: the centre square, else the sector."""
    au, av = np.abs(u), np.abs(v)
    sector = np.where(av >= au, np.where(v < 0, 0, 1), np.where(u < 0, 2, 3))
    return np.where(np.maximum(au, av) < CENTRE_RADIUS, 4, sector)


def _texture(obj: WorldObject, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Pattern weight in [0, 1] (1 = the darker shade) at pixel centres ``xx, yy``."""
    if obj.texture == "plain":
        return np.zeros_like(xx)
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    a = (xx - obj.cx) * c + (yy - obj.cy) * s + obj.phase
    b = -(xx - obj.cx) * s + (yy - obj.cy) * c + obj.phase
    if obj.texture == "stripes":  # period 4 px
        return (np.mod(a, 4.0) < 2.0).astype(np.float64)
    if obj.texture == "dots":  # dots of radius 1.3 px on a 5 px lattice
        da, db = np.mod(a, 5.0) - 2.5, np.mod(b, 5.0) - 2.5
        return (da**2 + db**2 <= 1.3**2).astype(np.float64)
    if obj.texture == "checks":  # 3 px squares
        return ((np.floor(a / 3.0) + np.floor(b / 3.0)) % 2 == 0).astype(np.float64)
    raise ValueError(f"unknown texture {obj.texture!r}; textures are {TEXTURES}")


def background(seed: int, size: int = IMAGE_SIZE, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``(size, size, 3)`` float smooth random colour field (a bicubic-like upsampled 5x5 grid of colours).

    ``shift`` = ``(dx, dy)`` pixels samples the same infinite field translated (camera moves, for
    Visual_Correspondence): the field is defined on a 3x larger canvas centred on the image.
    """
    rng = np.random.default_rng([seed, 7])
    coarse = rng.uniform(25, 230, size=(7, 7, 3))
    coarse = coarse * 0.6 + coarse.mean(-1, keepdims=True) * 0.4  # somewhat desaturated
    # the 7x7 lattice spans a canvas of 3x the image; pixel (x, y) sits at canvas (x + size + dx, ...)
    big = 3 * size
    pos = (np.arange(size) + 0.5)
    gx = (pos + size + shift[0]) / big * 6
    gy = (pos + size + shift[1]) / big * 6
    return _bilinear(coarse, gy, gx)


def _bilinear(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Sample ``grid (h, w, C)`` at fractional rows ``gy (H,)`` x cols ``gx (W,)`` with smoothstep weights."""
    y0 = np.clip(np.floor(gy).astype(int), 0, grid.shape[0] - 2)
    x0 = np.clip(np.floor(gx).astype(int), 0, grid.shape[1] - 2)
    ty, tx = np.clip(gy - y0, 0, 1), np.clip(gx - x0, 0, 1)
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    top = g00 * (1 - tx)[None, :, None] + g01 * tx[None, :, None]
    bottom = g10 * (1 - tx)[None, :, None] + g11 * tx[None, :, None]
    return top * (1 - ty)[:, None, None] + bottom * ty[:, None, None]


def render(objects: list[WorldObject], background_seed: int, size: int = IMAGE_SIZE,
           shift: tuple[int, int] = (0, 0), light: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Scene:
    """Draw ``objects`` (later ones on top) over the background; label maps from the same geometry.

    ``shift`` moves the camera by ``(dx, dy)`` pixels (objects and background move by ``-shift``);
    ``light`` scales the R, G, B channels of the whole image (a lighting change).
    """
    image = background(background_seed, size, shift)
    instances = np.zeros((size, size), dtype=np.int64)
    parts = np.zeros((size, size), dtype=np.int64)
    uv = np.zeros((size, size, 2), dtype=np.float32)
    for i, obj in enumerate(objects):
        # only the pixels of the object's box (in image coordinates after the camera shift) can change
        x0, y0, x1, y1 = obj.box
        c0, c1 = max(int(np.floor(x0 - shift[0])), 0), min(int(np.ceil(x1 - shift[0])) + 1, size)
        r0, r1 = max(int(np.floor(y0 - shift[1])), 0), min(int(np.ceil(y1 - shift[1])) + 1, size)
        if c0 >= c1 or r0 >= r1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
        xx, yy = xx + shift[0], yy + shift[1]
        half = obj.size / 2
        u, v = (xx - obj.cx) / half, (yy - obj.cy) / half
        member = inside(obj.kind, u, v)
        base = np.array(COLOURS[obj.colour], dtype=np.float64)
        paint = base * (1 - 0.5 * _texture(obj, xx, yy)[..., None])
        window = image[r0:r1, c0:c1]
        window[member] = paint[member]
        instances[r0:r1, c0:c1][member] = i + 1
        parts[r0:r1, c0:c1][member] = part_of(u[member], v[member]) + 1
        uv[r0:r1, c0:c1][member] = np.stack([u[member], v[member]], -1)
    image = np.clip(image * np.asarray(light)[None, None], 0, 255).astype(np.uint8)
    return Scene(list(objects), image, instances, parts, uv, background_seed)


# ------------------------------------------------------------------------------------------ sampling
def random_object(rng: Rng, size_range: tuple[float, float], kind: str | None = None, colour: str | None = None,
                  texture: str | None = None, image_size: int = IMAGE_SIZE) -> WorldObject:
    """An object with the given attributes (random where None), placed anywhere fully inside the image."""
    side = float(rng.uniform(*size_range))
    margin = side / 2 + 1
    return WorldObject(
        kind=kind or str(rng.choice(KINDS)),
        colour=colour or str(rng.choice(COLOUR_NAMES)),
        texture=texture or str(rng.choice(TEXTURES)),
        cx=float(rng.uniform(margin, image_size - margin)),
        cy=float(rng.uniform(margin, image_size - margin)),
        size=side,
        angle=float(rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])),
        phase=float(rng.uniform(0, 6)),
    )


def _apart(a: WorldObject, b: WorldObject, gap: float) -> bool:
    """Boxes separated by at least ``gap`` pixels along x or y."""
    return (abs(a.cx - b.cx) >= (a.size + b.size) / 2 + gap) or (abs(a.cy - b.cy) >= (a.size + b.size) / 2 + gap)


def place(rng: Rng, objects: list[WorldObject], image_size: int = IMAGE_SIZE, gap: float = 2.0,
          tries: int = 200) -> list[WorldObject] | None:
    """Move ``objects`` to random non-overlapping positions (same sizes); None when they do not fit."""
    placed: list[WorldObject] = []
    for obj in objects:
        margin = obj.size / 2 + 1
        for _ in range(tries):
            cand = replace(obj, cx=float(rng.uniform(margin, image_size - margin)),
                           cy=float(rng.uniform(margin, image_size - margin)))
            if all(_apart(cand, p, gap) for p in placed):
                placed.append(cand)
                break
        else:
            return None
    return placed


def random_scene(rng: Rng, n_objects: int | None = None, size_range: tuple[float, float] | None = None,
                 distinct: bool = True, image_size: int = IMAGE_SIZE) -> Scene:
    """A random scene of ``n_objects`` (1-4 when None) with distinct kinds and colours when ``distinct``.

    Sizes default to 34-58 px for one object and shrink with the count so that the objects fit apart.
    """
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    if size_range is None:
        size_range = {1: (34.0, 58.0), 2: (20.0, 30.0), 3: (17.0, 25.0)}.get(n, (15.0, 21.0))
    while True:
        kinds = rng.choice(KINDS, n, replace=not distinct)
        colours = rng.choice(COLOUR_NAMES, n, replace=not distinct)
        objects = [random_object(rng, size_range, str(k), str(c), image_size=image_size)
                   for k, c in zip(kinds, colours)]
        placed = place(rng, objects, image_size)
        if placed is not None:
            return render(placed, int(rng.integers(2**31)), image_size)


# ------------------------------------------------------------------------------------------ grid views
def cell_fractions(labels: np.ndarray, n_classes: int, grid: int = GRID) -> np.ndarray:
    """``(grid, grid, n_classes)`` share of each cell's pixels carrying each label of ``labels (S, S)``."""
    size = labels.shape[0]
    p = size // grid
    cells = (np.arange(size) // p)
    cell = (cells[:, None] * grid + cells[None, :]) * n_classes + labels  # (S, S) joint (cell, label) index
    counts = np.bincount(cell.ravel(), minlength=grid * grid * n_classes)
    return (counts.reshape(grid, grid, n_classes) / (p * p)).astype(np.float32)


def cell_of(point: tuple[float, float], grid: int = GRID) -> tuple[int, int]:
    """``(row, col)`` of the grid cell holding the normalised point ``(x, y)``."""
    x, y = point
    return min(max(int(y * grid), 0), grid - 1), min(max(int(x * grid), 0), grid - 1)


def part_point(scene: Scene, index: int, part: str, grid: int = GRID, min_share: float = 0.5,
               rng: Rng | None = None) -> tuple[float, float] | None:
    """A normalised point on ``part`` of ``objects[index]`` whose grid cell is mostly (>= ``min_share``) that part.

    The cell is the one where the part covers the most pixels (random among ties when ``rng`` is given);
    the point is the part pixel of that cell nearest the cell centre. None when no cell qualifies.
    """
    mine = (scene.instances == index + 1) & (scene.parts == PARTS.index(part) + 1)
    share = cell_fractions(mine.astype(np.int64), 2, grid)[..., 1]
    best = share.max()
    if best < min_share:
        return None
    rows, cols = np.nonzero(share >= best - 1e-6)
    pick = int(rng.integers(len(rows))) if rng is not None else 0
    r, c = int(rows[pick]), int(cols[pick])
    p = scene.size // grid
    ys, xs = np.nonzero(mine[r * p:(r + 1) * p, c * p:(c + 1) * p])
    centre = (p - 1) / 2
    k = int(np.argmin((ys - centre) ** 2 + (xs - centre) ** 2))
    return (float((c * p + xs[k] + 0.5) / scene.size), float((r * p + ys[k] + 0.5) / scene.size))
