"""BLINK's point markers both ways: draw them, and find them again in the pixels.

BLINK marks a point with a small ring (red; white on Relative_Reflectance) and writes its label ("REF", "A",
"B", ...) in white on a black box centred above the ring (below it when there is no room above; moved
sideways to stay inside the image). The hub data ships only the pixels, so the latent point probes need the
ring centres found again.

Drawing: :func:`draw_markers` renders that look (anti-aliased ring at the exact sub-pixel centre, label in
DejaVu Sans Bold, the font matplotlib ships) and returns the exact normalised centres it drew.

Finding (:func:`find_markers`, :func:`locate_markers`): classical image processing written for this module
(numpy + scipy.ndimage; no learned model), in three steps.

1. Label text: connected components of white, low-chroma pixels whose outer boundary is mostly black (the
   box), at three luminance thresholds (text that a 1 px box edge no longer separates from a bright
   surround separates at a higher one); pieces that touch, and glyphs side by side at one height, form a
   word.
2. Label reading (template matching): the word's ink, normalised between the box black and the text white,
   is correlated (Pearson, on a 24 px high grid) with the possible labels rendered in DejaVu Sans and DejaVu
   Sans Bold at the word's own pixel size, and with a ring (a white ring is a white shape on a dark
   surround too). Words whose aspect ratio differs by more than ``ASPECT_TOLERANCE`` are not compared. A
   word is read only when a label scores >= ``MIN_LABEL_SCORE`` and beats every other candidate by
   ``MIN_LABEL_MARGIN``; of overlapping readings the whole word wins over its parts.
3. Ring: where BLINK puts it (centred under the label box, or above it when the label did not fit above
   the ring, entirely inside the image, clear of the box), a matched filter over radii from 0.25 to 1.1
   text heights (mean colour score on an annulus minus the mean on a band just outside, the box's pixels
   neutralised) on a red score ``R - max(G, B)`` (or a white score ``min(R, G, B) - chroma``) proposes
   rings. A ring must beat its surroundings by ``MIN_RING_CONTRAST`` (``QUIET_RING_CONTRAST`` where the
   window's score is quiet: 4 robust noise sigmas), be closed (every eighth of it at least
   ``SECTOR_SHARE`` of that contrast above them) and have a hole (``HOLE_SHARE``): red edges, arcs and
   blobs of busy or red backgrounds fail. Of rings nearly as pure as the purest (``NEAR_TIE``), the one
   nearest the label wins. The centre is refined to sub-pixel precision by a least-squares circle through
   the middle of the stroke along 48 rays (:func:`_refine`).

Coordinates are normalised: x = column / width, y = row / height, with pixel (i, j) covering
[j, j + 1) x [i, i + 1), the convention of :mod:`vkvtrain.evaluation.latent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from vkvtrain.errors import DatasetError

Point = tuple[float, float]
Color = tuple[int, int, int]

RED: Color = (255, 0, 0)
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
LABELS: tuple[str, ...] = ("REF", "A", "B", "C", "D", "E")  # every label BLINK draws next to a point

# Reading thresholds (checked on the BLINK slides and on renderings; see eval/README.md "Marker localisation").
MIN_LABEL_SCORE = 0.55
MIN_LABEL_MARGIN = 0.08
ASPECT_TOLERANCE = 1.7
MIN_RING_CONTRAST = 45.0
QUIET_RING_CONTRAST = 20.0  # the bar in quiet surroundings: 4 noise sigmas (robust, from the MAD), at least this
SECTOR_SHARE = 0.3
HOLE_SHARE = 0.25
NEAR_TIE = 0.85  # rings this close to the purest one are told apart by their distance to the label
_TEXT_HEIGHTS = (5, 90)  # px range of label text heights searched


# ----------------------------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class MarkerStyle:
    """Pixel sizes of one marker.

    radius: ring radius to the middle of its stroke. stroke: ring stroke width. font_size: label font size
    (DejaVu Sans Bold). pad: box margin around the text. gap: between the ring's outer edge and the box.
    """

    radius: float
    stroke: float
    font_size: int
    pad: int
    gap: int
    ring_color: Color = RED

    @classmethod
    def for_image(cls, width: int, height: int, ring_color: Color = RED) -> MarkerStyle:
        """BLINK's proportions: on a 640 px image a ring of outer radius ~6 px and a ~13 px label box."""
        s = max(width, height) / 640
        radius = max(2.0, 4.75 * s)
        return cls(radius=radius, stroke=max(1.0, 2.5 * s), font_size=max(7, round(12 * s)),
                   pad=max(1, round(2 * s)), gap=max(1, round(3 * s)), ring_color=ring_color)

    @property
    def outer_radius(self) -> float:
        return self.radius + self.stroke / 2


@lru_cache(maxsize=None)
def _font_path(bold: bool = True) -> Path:
    import matplotlib  # lazy: only to locate the DejaVu fonts it ships

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


@lru_cache(maxsize=64)
def _font(size: int, bold: bool = True) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path(bold)), size)


def _draw_ring(pixels: np.ndarray, center: tuple[float, float], style: MarkerStyle) -> None:
    """Blend an anti-aliased ring (4x4 supersampled coverage) into ``pixels`` (H, W, 3) float, in place."""
    cx, cy = center
    H, W = pixels.shape[:2]
    reach = style.outer_radius + 1
    x0, x1 = max(0, int(cx - reach)), min(W, int(np.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(cy - reach)), min(H, int(np.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    sub = (np.arange(4) + 0.5) / 4
    xs = (np.arange(x0, x1)[:, None] + sub[None]).reshape(-1)  # (w*4,) sample columns
    ys = (np.arange(y0, y1)[:, None] + sub[None]).reshape(-1)
    d = np.hypot(xs[None, :] - cx, ys[:, None] - cy)  # (h*4, w*4)
    inside = (np.abs(d - style.radius) <= style.stroke / 2).astype(np.float64)
    alpha = inside.reshape(y1 - y0, 4, x1 - x0, 4).mean((1, 3))[..., None]  # (h, w, 1) coverage
    patch = pixels[y0:y1, x0:x1]
    patch[:] = patch * (1 - alpha) + np.asarray(style.ring_color, np.float64) * alpha


def label_box(label: str, center: tuple[float, float], style: MarkerStyle, size: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), exclusive ends, of ``label``'s black box for a ring at ``center`` (px)."""
    W, H = size
    left, top, right, bottom = _font(style.font_size).getbbox(label, anchor="lt")
    bw, bh = int(right - left) + 2 * style.pad, int(bottom - top) + 2 * style.pad
    x0 = int(round(center[0] - bw / 2))
    x0 = min(max(x0, 0), max(W - bw, 0))
    above = int(np.floor(center[1] - style.outer_radius)) - style.gap - bh
    y0 = above if above >= 0 else int(np.ceil(center[1] + style.outer_radius)) + style.gap
    return x0, y0, x0 + bw, y0 + bh


def draw_markers(image: Image.Image, marks: Mapping[str, Point], style: MarkerStyle | None = None
                 ) -> tuple[Image.Image, dict[str, Point]]:
    """Draw BLINK-style markers on a copy of ``image``.

    marks: label -> (x, y) in [0, 1]. style: None = :meth:`MarkerStyle.for_image` of the image.
    Returns (marked RGB copy, label -> exact normalised ring centre drawn). Rings are drawn first, then every
    label box on top, as BLINK's do not cover other rings when points are apart.
    """
    rgb = image.convert("RGB")
    W, H = rgb.size
    style = style or MarkerStyle.for_image(W, H)
    pixels = np.asarray(rgb, dtype=np.float64).copy()
    for label, (x, y) in marks.items():
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise DatasetError(f"marker {label!r} at {(x, y)} is outside the image; give coordinates in [0, 1] "
                               "(x = column / width, y = row / height)")
        _draw_ring(pixels, (x * W, y * H), style)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for label, (x, y) in marks.items():
        x0, y0, x1, y1 = label_box(label, (x * W, y * H), style, (W, H))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=BLACK)
        draw.text((x0 + style.pad, y0 + style.pad), label, font=_font(style.font_size), fill=WHITE, anchor="lt")
    return out, {label: (float(x), float(y)) for label, (x, y) in marks.items()}


# ----------------------------------------------------------------------------------------------- finding
@dataclass(frozen=True)
class FoundMarker:
    """One marker found in an image: its label, the ring centre (normalised) and how sure each part is.

    label_score: Pearson correlation of the label with its template (margin: over the next label).
    ring_contrast: ring colour score minus its surroundings (0-255 scale). box: the label text's pixel
    bounding box (x0, y0, x1, y1), exclusive ends. color: "red" or "white".
    """

    label: str
    xy: Point
    label_score: float
    label_margin: float
    ring_contrast: float
    box: tuple[int, int, int, int]
    color: str


@dataclass(frozen=True)
class MarkerSearch:
    """The result of :func:`locate_markers`: ``points`` (label -> normalised centre) when every expected
    label was found exactly once and nothing else was, else None with the reason in ``problem``."""

    points: dict[str, Point] | None
    problem: str | None
    found: tuple[FoundMarker, ...]


@dataclass
class _Word:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the ink, exclusive ends
    mask: np.ndarray  # (h, w) bool ink pixels inside box


def _float_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


_INK_LEVELS = (140, 185, 225)  # luminance thresholds of label text: one splits text from a bright surround


def _glyph_words(rgb: np.ndarray) -> list[_Word]:
    """Candidate label words: white glyphs whose boundary is mostly black, grouped per label box.

    Run at each of ``_INK_LEVELS`` (text touching a bright surround separates from it at a higher level);
    the same word found at several levels is resolved later by its reading score.
    """
    lum = rgb.mean(-1)
    chroma = rgb.max(-1) - rgb.min(-1)
    words: list[_Word] = []
    for level in _INK_LEVELS:
        # "black" around the text: clearly darker than this level (blur and JPEG lift a 1 px box edge)
        words += _words_at((lum >= level) & (chroma <= 90), lum <= min(120, level - 40))
    return words


def _words_at(white: np.ndarray, dark: np.ndarray) -> list[_Word]:
    labels, n = ndi.label(white, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    # share of each component's outer boundary (pixels next to it, off the image excluded) that is black
    grown = ndi.grey_dilation(labels, size=(3, 3))
    boundary = (grown > 0) & ~white
    n_boundary = np.bincount(grown[boundary], minlength=n + 1)[1:]
    n_dark = np.bincount(grown[boundary & dark], minlength=n + 1)[1:]
    lo, hi = _TEXT_HEIGHTS
    pieces: list[tuple[int, int, int, int, int]] = []  # x0, y0, x1, y1, component id
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or n_boundary[k - 1] == 0 or n_dark[k - 1] < 0.6 * n_boundary[k - 1]:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if y1 - y0 <= hi and x1 - x0 <= 4.5 * hi:
            pieces.append((x0, y0, x1, y1, k))
    groups = _group(pieces)
    words = []
    for members in groups:
        x0 = min(p[0] for p in members)
        y0 = min(p[1] for p in members)
        x1 = max(p[2] for p in members)
        y1 = max(p[3] for p in members)
        if lo <= y1 - y0 <= hi and x1 - x0 <= 4.5 * (y1 - y0):
            words.append(_Word((x0, y0, x1, y1), np.isin(labels[y0:y1, x0:x1], [p[4] for p in members])))
    return words


def _group(pieces: list[tuple[int, int, int, int, int]]) -> list[list[tuple[int, int, int, int, int]]]:
    """Union pieces of one glyph (touching boxes) and glyphs of one word (side by side at one height)."""
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(pieces)), key=lambda i: pieces[i][0])
    for a_i, a in enumerate(order):
        ax0, ay0, ax1, ay1, _ = pieces[a]
        for b in order[a_i + 1:]:
            bx0, by0, bx1, by1, _ = pieces[b]
            ha, hb = ay1 - ay0, by1 - by0
            if bx0 - ax1 > 0.8 * max(ha, hb) + 1:
                break
            touching = bx0 <= ax1 and by0 <= ay1 and ay0 <= by1
            overlap = min(ay1, by1) - max(ay0, by0)
            side_by_side = overlap >= 0.6 * min(ha, hb) and max(ha, hb) <= 1.5 * min(ha, hb)
            if touching or side_by_side:
                parent[root(b)] = root(a)
    groups: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for i, piece in enumerate(pieces):
        groups.setdefault(root(i), []).append(piece)
    return list(groups.values())


def _resize(a: np.ndarray, shape: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """(h, w) float -> ``shape`` (rows, cols) float via PIL's float mode."""
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((shape[1], shape[0]), resample))


@lru_cache(maxsize=None)
def _template(label: str, bold: bool) -> np.ndarray:
    """(h, w) float ink of ``label`` rendered at 64 px (RING: a marker ring, thick if ``bold``), cropped."""
    if label == RING:
        canvas_f = np.zeros((64, 64, 3))
        _draw_ring(canvas_f, (32.0, 32.0), MarkerStyle(radius=24, stroke=(12.6 if bold else 6.0), font_size=8,
                                                      pad=1, gap=1, ring_color=WHITE))
        a = canvas_f[..., 0].astype(np.float32) / 255
        rows, cols = np.nonzero(a > 0.5)
        return a[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    font = _font(64, bold)
    left, top, right, bottom = font.getbbox(label, anchor="lt")
    canvas = Image.new("L", (int(right) + 8, int(bottom) + 8), 0)
    ImageDraw.Draw(canvas).text((4, 4), label, font=font, fill=255, anchor="lt")
    a = np.asarray(canvas, np.float32) / 255
    rows, cols = np.nonzero(a > 0.5)
    return a[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


_CANON_H = 24


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else -1.0


# Shapes that are no label but can look like one: a white ring (Relative_Reflectance) is itself a white
# shape on a dark surround. A word read as one of these is no label.
RING = "ring"
NOT_LABELS: tuple[str, ...] = (RING,)


def read_label(ink: np.ndarray, labels: Sequence[str] = LABELS) -> tuple[str, float, float]:
    """Read a label from its ink (h, w) in [0, 1]: (best match, its score, margin over the next match).

    The matches compared are ``labels`` and :data:`NOT_LABELS`; a best match among the latter is no label.
    """
    h, w = ink.shape
    scores: dict[str, float] = {}
    for label in (*labels, *NOT_LABELS):
        best = -1.0
        for bold in (True, False):
            t = _template(label, bold)
            ratio = (w / h) / (t.shape[1] / t.shape[0])
            if not (1 / ASPECT_TOLERANCE <= ratio <= ASPECT_TOLERANCE):
                continue
            canon = (_CANON_H, max(4, round(_CANON_H * t.shape[1] / t.shape[0])))
            low = _resize(t, (h, w), Image.Resampling.BOX)  # the template at the candidate's resolution
            best = max(best, _pearson(_resize(low, canon, Image.Resampling.BILINEAR),
                                      _resize(ink, canon, Image.Resampling.BILINEAR)))
        scores[label] = best
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    top, score = ranked[0]
    margin = score - (ranked[1][1] if len(ranked) > 1 else -1.0)
    return top, score, margin


def _word_ink(rgb: np.ndarray, word: _Word) -> np.ndarray:
    """(h, w) ink in [0, 1] of the word: luminance normalised between the box black and the text white."""
    x0, y0, x1, y1 = word.box
    lum = rgb[y0:y1, x0:x1].mean(-1)
    white = float(np.percentile(lum[word.mask], 90)) if word.mask.any() else 255.0
    black = float(np.percentile(lum[~word.mask], 10)) if (~word.mask).any() else 0.0
    return np.clip((lum - black) / max(white - black, 1.0), 0.0, 1.0)


RING_COLORS: tuple[str, ...] = ("red", "white")


def _color_score(rgb: np.ndarray, color: str) -> np.ndarray:
    """(H, W) ring colour score in [0, 255]: red = R - max(G, B); white = min(R, G, B) - chroma."""
    if color == "red":
        score = rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])
    elif color == "white":
        hi, lo = rgb.max(-1), rgb.min(-1)
        score = lo - (hi - lo)
    else:
        raise ValueError(f"unknown ring colour {color!r}; choose from {list(RING_COLORS)}")
    return np.clip(score, 0, 255)


@lru_cache(maxsize=256)
def _ring_kernels(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Annulus and outer-band weights (each summing to 1), the annulus' sector index (0-7, -1 outside) and the
    kernel half-size, for a ring of stroke-centre ``radius`` with stroke ~radius/2."""
    stroke = max(1.0, 0.5 * radius)
    outer_lo = radius + stroke / 2 + 1.0
    outer_hi = outer_lo + max(1.5, 0.5 * radius)
    half = int(np.ceil(outer_hi)) + 1
    yy, xx = np.mgrid[-half: half + 1, -half: half + 1].astype(np.float64)
    d = np.hypot(xx, yy)
    ann = np.abs(d - radius) <= stroke / 2 + 0.25
    out = (d >= outer_lo) & (d <= outer_hi)
    sector = np.where(ann, ((np.arctan2(yy, xx) + np.pi) / (2 * np.pi) * 8).astype(int) % 8, -1)
    return ann / ann.sum(), out / out.sum(), sector, half


@dataclass(frozen=True)
class _Ring:
    center: tuple[float, float]  # px (x, y), continuous coordinates
    contrast: float
    color: str


def _find_ring(rgb: np.ndarray, score: np.ndarray, color: str, box: tuple[int, int, int, int]) -> _Ring | None:
    """The closed ring that sits where BLINK puts a label's ring: next to the label box above or below it.

    score: (H, W) colour score of ``color``. Rings of stroke-centre radius 0.25 to 1.1 text heights whose
    centre lies within 3.5 text heights above or below the text (not beside it) and that stay clear of the
    label box are candidates (local maxima of the matched filter over radius; the box's pixels count as
    the surroundings' median score, so its black does not pass for a ring's dark surround). Among the
    closed ones whose mean colour score on the annulus is within ``NEAR_TIE`` of the best (BLINK's rings
    are pure colour, a ring-shaped patch of a red surface is not), the one nearest the label wins:
    horizontal offset from the text centre plus the gap between ring and text, in text heights.
    """
    x0b, y0b, x1b, y1b = box
    th = y1b - y0b
    H, W = score.shape
    reach_x = int(round(1.2 * th))
    wx0, wy0, wx1, wy1 = _clip((x0b - reach_x, y0b - int(3.5 * th), x1b + reach_x, y1b + int(3.5 * th)), W, H)
    radii = sorted({max(1.5, round(float(r) * 4) / 4) for r in th * np.geomspace(0.25, 1.1, 14)})
    pad = _ring_kernels(radii[-1])[3] + 1
    if min(wy1 - wy0, wx1 - wx0) < 1:
        return None
    # everything below is in window coordinates: the window plus ``pad``, edge-replicated past the image
    y0, y1, x0, x1 = wy0 - pad, wy1 + pad, wx0 - pad, wx1 + pad
    widths = ((max(0, -y0), max(0, y1 - H)), (max(0, -x0), max(0, x1 - W)))
    inside = (slice(max(0, y0), min(H, y1)), slice(max(0, x0), min(W, x1)))
    local = np.pad(score[inside].astype(np.float64), widths, mode="edge")
    colors = np.pad(rgb[inside], (*widths, (0, 0)), mode="edge")
    bx0, by0, bx1, by1 = _label_box(rgb, box)
    lbx0, lby0, lbx1, lby1 = bx0 - x0, by0 - y0, bx1 - x0, by1 - y0
    frame = np.zeros(local.shape, bool)
    frame[max(lby0 - 2, 0): lby1 + 2, max(lbx0 - 2, 0): lbx1 + 2] = True
    frame[lby0:lby1, lbx0:lbx1] = False
    if frame.any():
        local[lby0:lby1, lbx0:lbx1] = np.median(local[frame])
    resp = np.stack([fftconvolve(local, (_ring_kernels(r)[0] - _ring_kernels(r)[1])[::-1, ::-1], mode="same")
                     for r in radii])  # (R, h, w)
    rows = np.arange(y1 - y0)
    cols = np.arange(x1 - x0)
    in_window = (((rows >= wy0 - y0) & (rows < wy1 - y0))[:, None]
                 & ((cols >= wx0 - x0) & (cols < wx1 - x0))[None, :])
    for ri, radius in enumerate(radii):  # the ring lies wholly above or below the label box, never on it
        outer = radius + max(1.0, 0.5 * radius) / 2
        clear = (rows + 0.5 - outer >= lby1 - 0.5) | (rows + 0.5 + outer <= lby0 + 0.5)
        resp[ri][~(in_window & clear[:, None])] = -np.inf
    flat = resp.max(axis=0)
    sigma = 1.4826 * float(np.median(np.abs(local - np.median(local))))
    bar = min(MIN_RING_CONTRAST, max(QUIET_RING_CONTRAST, 4 * sigma))
    peaks = (flat == ndi.maximum_filter(flat, size=3)) & (flat >= bar)
    at_border = bx0 <= 1 or bx1 >= W - 1
    candidates = []
    for r, c in zip(*np.nonzero(peaks)):
        ri = int(np.argmax(resp[:, r, c]))
        radius, contrast = radii[ri], float(resp[ri, r, c])
        ann, out, sector, half = _ring_kernels(radius)
        cxa, cya, outer = c + 0.5 + x0, r + 0.5 + y0, radius + max(1.0, 0.5 * radius) / 2
        if not (outer <= cxa <= W - outer and outer <= cya <= H - outer):
            continue  # the ring must lie inside the image
        if not _where_blink_puts_it(cxa, cya, radius, (bx0, by0, bx1, by1), th, at_border):
            continue
        if _closed(local, (int(c), int(r)), radius, contrast):
            level = float((local[r - half: r + half + 1, c - half: c + half + 1] * ann).sum())
            candidates.append((level, radius, int(c), int(r), contrast))
    if not candidates:
        return None
    strongest = max(cand[0] for cand in candidates)

    def distance(cand: tuple[float, float, int, int, float]) -> float:
        _, radius, cx, cy = cand[:4]
        cx, cy = cx + x0, cy + y0
        outer = radius * 1.25
        gap = (cy - outer - y1b) if cy >= y1b else (y0b - cy - outer)
        return abs(cx + 0.5 - (x0b + x1b) / 2) / th + abs(gap) / th

    _, radius, cx, cy, contrast = min((cand for cand in candidates if cand[0] >= NEAR_TIE * strongest), key=distance)
    fx, fy = _refine(colors, local, (cx, cy), radius)
    return _Ring((fx + x0, fy + y0), contrast, color)


def _where_blink_puts_it(cx: float, cy: float, radius: float, box: tuple[int, int, int, int], th: int,
                         at_border: bool) -> bool:
    """BLINK's placement: the label box is centred over its ring (shifted sideways only where it would leave
    the image) and above it, below only when there is no room above (the ring is near the image's top).
    ``box`` and the centre are in the same coordinates, y from the image's top."""
    bx0, by0, bx1, by1 = box
    outer = radius + max(1.0, 0.5 * radius) / 2
    if not at_border and abs(cx - (bx0 + bx1) / 2) > 0.3 * th + 1.5:
        return False
    if cy < by0:  # ring above its label: only when the label did not fit above the ring
        return cy - outer - (by1 - by0) < 0.8 * th
    return True


def _label_box(rgb: np.ndarray, ink: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The black box around a label's ink: the ink box grown side by side while the next line of pixels is
    at least 60% near-black, by at most 0.45 text heights (on a black surround the cap is the box)."""
    x0, y0, x1, y1 = ink
    H, W = rgb.shape[:2]
    cap = max(1, int(round(0.45 * (y1 - y0))))
    ox, oy = max(0, x0 - cap - 1), max(0, y0 - cap - 1)
    black = rgb[oy: y1 + cap + 1, ox: x1 + cap + 1].max(-1) <= 80  # local: offsets (oy, ox)
    x0, x1, y0, y1 = x0 - ox, x1 - ox, y0 - oy, y1 - oy
    h, w = black.shape
    grown = [0, 0, 0, 0]
    while grown[0] < cap and y0 - grown[0] - 1 >= 0 and black[y0 - grown[0] - 1, x0:x1].mean() >= 0.6:
        grown[0] += 1
    while grown[1] < cap and y1 + grown[1] < h and black[y1 + grown[1], x0:x1].mean() >= 0.6:
        grown[1] += 1
    while grown[2] < cap and x0 - grown[2] - 1 >= 0 and black[y0:y1, x0 - grown[2] - 1].mean() >= 0.6:
        grown[2] += 1
    while grown[3] < cap and x1 + grown[3] < w and black[y0:y1, x1 + grown[3]].mean() >= 0.6:
        grown[3] += 1
    return x0 - grown[2] + ox, y0 - grown[0] + oy, x1 + grown[3] + ox, y1 + grown[1] + oy


def _closed(score: np.ndarray, center: tuple[int, int], radius: float, contrast: float) -> bool:
    """A ring, not an arc or a blob: every eighth of the annulus beats the surroundings by SECTOR_SHARE of
    the ring's contrast, and the hole is below the annulus by HOLE_SHARE of it (a filled disc has none)."""
    ann, out, sector, half = _ring_kernels(radius)
    cx, cy = center
    patch = score[cy - half: cy + half + 1, cx - half: cx + half + 1]
    background = float((patch * out).sum())
    for s in range(8):
        part = sector == s
        if not part.any() or float(patch[part].mean()) - background < SECTOR_SHARE * contrast:
            return False
    yy, xx = np.mgrid[-half: half + 1, -half: half + 1]
    hole = np.hypot(xx, yy) <= radius - max(1.0, 0.5 * radius) / 2 - 0.5
    level = float((patch * ann).sum())
    return not hole.any() or float(patch[hole].mean()) <= level - HOLE_SHARE * contrast


def _refine(rgb: np.ndarray, score: np.ndarray, center: tuple[int, int], radius: float) -> tuple[float, float]:
    """Sub-pixel ring centre: least-squares circle through the middle of the ring's stroke along 48 rays.

    The ring's colour is the median colour of the annulus' most ring-coloured tenth (by ``score``). Along
    each ray from the detected centre, "ringness" (1 - RGB distance to that colour / tau, clipped to [0, 1];
    tau = 0.4 x the distance from the ring's colour to the median colour just outside it, at least 30) is
    sampled every 0.1 px (bilinear); the stroke's inner and outer 0.5 crossings give the ray's mid-stroke
    point. Rays without both crossings (the ring runs into a surface of its own colour) or with an
    implausible stroke width are dropped; an algebraic circle fit through the rest, refitted once without
    outliers (> 3 MADs), is the centre. With fewer than 12 rays the detected pixel centre is kept.
    """
    H, W = score.shape
    cx, cy = center[0] + 0.5, center[1] + 0.5
    stroke = max(1.0, 0.5 * radius)
    reach = radius + stroke / 2 + 2.5
    x0, x1 = max(0, int(cx - reach - 2)), min(W, int(cx + reach + 3))
    y0, y1 = max(0, int(cy - reach - 2)), min(H, int(cy + reach + 3))
    colors = rgb[y0:y1, x0:x1].astype(np.float64)
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    d = np.hypot(xx - cx, yy - cy)
    band = np.abs(d - radius) <= stroke / 2
    outside = (d > radius + stroke / 2 + 1) & (d <= reach)
    if band.sum() < 4 or not outside.any():
        return cx, cy
    patch = score[y0:y1, x0:x1]
    ring_color = np.median(colors[band & (patch >= np.percentile(patch[band], 90))], axis=0)
    tau = max(30.0, 0.4 * float(np.linalg.norm(np.median(colors[outside], axis=0) - ring_color)))
    ringness = np.clip(1 - np.linalg.norm(colors - ring_color, axis=-1) / tau, 0, 1)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    t = np.arange(max(0.0, radius - stroke - 2), radius + stroke + 2, 0.1)
    for _ in range(2):
        xs = cx + np.cos(angles)[:, None] * t[None]  # (48, T) sample points, continuous coordinates
        ys = cy + np.sin(angles)[:, None] * t[None]
        prof = ndi.map_coordinates(ringness, [ys - 0.5 - y0, xs - 0.5 - x0], order=1, mode="constant", cval=0.0)
        points = []
        for k in range(len(angles)):
            on = prof[k] >= 0.5
            i = int(np.argmin(np.abs(t - radius)))
            if not on[i]:
                near = np.nonzero(on)[0]
                if len(near) == 0:
                    continue
                i = int(near[np.argmin(np.abs(near - i))])
            lo, hi = i, i
            while lo > 0 and on[lo - 1]:
                lo -= 1
            while hi < len(t) - 1 and on[hi + 1]:
                hi += 1
            if lo == 0 or hi == len(t) - 1:
                continue  # no edge on one side: the ring runs into its own colour here
            inner = t[lo - 1] + (0.5 - prof[k, lo - 1]) / (prof[k, lo] - prof[k, lo - 1]) * 0.1
            outer = t[hi] + (prof[k, hi] - 0.5) / (prof[k, hi] - prof[k, hi + 1]) * 0.1
            if not 0.3 * stroke <= outer - inner <= 2.5 * stroke:
                continue
            mid = (inner + outer) / 2
            points.append((cx + np.cos(angles[k]) * mid, cy + np.sin(angles[k]) * mid))
        if len(points) < 12:
            return cx, cy
        fit = _circle_fit(np.asarray(points))
        if fit is None or np.hypot(fit[0] - cx, fit[1] - cy) > stroke + 1:
            return cx, cy
        cx, cy = fit
    return cx, cy


def _circle_fit(points: np.ndarray) -> tuple[float, float] | None:
    """Centre of the algebraic (Kasa) least-squares circle through (n, 2) points, refitted without points
    whose radial residual exceeds 3 median absolute deviations."""
    keep = np.ones(len(points), bool)
    center = None
    for _ in range(2):
        p = points[keep]
        if len(p) < 8:
            return center
        design = np.column_stack([p, np.ones(len(p))])
        sol = np.linalg.lstsq(design, -(p ** 2).sum(1), rcond=None)[0]
        center = (float(-sol[0] / 2), float(-sol[1] / 2))
        r = np.hypot(points[:, 0] - center[0], points[:, 1] - center[1])
        res = np.abs(r - np.median(r[keep]))
        keep = res <= max(3 * float(np.median(res[keep])), 0.25)
    return center


def find_markers(image: Image.Image, labels: Sequence[str] = LABELS, ring_colors: Sequence[str] = ("red",)
                 ) -> list[FoundMarker]:
    """Every marker read with confidence: a label among ``labels`` and a closed ring next to its box.

    ring_colors: ring colours looked for, in order of preference (BLINK: red; white on Relative_Reflectance).
    """
    rgb = _float_rgb(image)
    H, W = rgb.shape[:2]
    words = _glyph_words(rgb)
    scores = {color: _color_score(rgb, color) for color in ring_colors}
    readings = []
    for word in words:
        label, score, margin = read_label(_word_ink(rgb, word), labels)
        if label in labels and score >= MIN_LABEL_SCORE and margin >= MIN_LABEL_MARGIN:
            readings.append((score, margin, label, word))
    if "white" in scores:
        for _, _, _, word in readings:  # label text is white: it must not pass for a white ring
            x0, y0, x1, y1 = word.box
            scores["white"][max(0, y0 - 1): y1 + 1, max(0, x0 - 1): x1 + 1] = 0
    found: list[FoundMarker] = []
    kept: list[tuple[int, int, int, int]] = []
    # the whole word before its parts (an ink level that splits "REF" may read its "E" alone), then by score
    for score, margin, label, word in sorted(readings, key=lambda r: (-_area(r[3].box), -r[0])):
        if any(_overlap(word.box, box) > 0.3 for box in kept):
            continue  # the same text read at another ink level
        kept.append(word.box)
        ring = next((r for c in ring_colors if (r := _find_ring(rgb, scores[c], c, word.box)) is not None), None)
        if ring is not None:
            found.append(FoundMarker(label, (ring.center[0] / W, ring.center[1] / H), score, margin,
                                     ring.contrast, word.box, ring.color))
    return found


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area (a word read again in part counts as overlapping)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _clip(window: tuple[int, int, int, int], W: int, H: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = window
    return max(0, x0), max(0, y0), min(W, x1), min(H, y1)


def locate_markers(image: Image.Image, expected: Sequence[str], ring_colors: Sequence[str] = ("red",)
                   ) -> MarkerSearch:
    """Find exactly the markers ``expected`` (e.g. ["REF"] or ["A", "B", "C", "D"]) in ``image``.

    Never guesses: a label missing, found twice, an unexpected label, or two labels on one ring gives
    ``points=None`` and the reason in ``problem``.
    """
    found = tuple(find_markers(image, ring_colors=ring_colors))
    by_label: dict[str, list[FoundMarker]] = {}
    for marker in found:
        by_label.setdefault(marker.label, []).append(marker)
    problems = [f"{label} not found" for label in expected if label not in by_label]
    problems += [f"{label} found {len(ms)} times" for label, ms in by_label.items() if len(ms) > 1]
    problems += [f"unexpected marker {label}" for label in by_label if label not in expected]
    W, H = image.size
    centers = [(m.label, m.xy[0] * W, m.xy[1] * H) for m in found]
    for i, (la, xa, ya) in enumerate(centers):
        for lb, xb, yb in centers[i + 1:]:
            if np.hypot(xa - xb, ya - yb) < 2.0:
                problems.append(f"{la} and {lb} share one ring")
    if problems:
        return MarkerSearch(None, "; ".join(problems), found)
    return MarkerSearch({label: by_label[label][0].xy for label in expected}, None, found)
