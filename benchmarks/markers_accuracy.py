"""How well vkvtrain.data.markers finds BLINK's point markers: real BLINK examples and exact renderings.

(i) Real: the point-marked BLINK questions on BLINK's example slides (``../shared/data/blink_homepage_examples``
    or ``$VKVTRAIN_SHARED_DATA``; skipped when absent). The image panels are cropped from the slides (non-white
    components of the upper half, the title box trimmed). Gold: the markers each question carries (its
    subtask, index.json) with the label read by eye and a hand-placed position (within ~3 px) that an
    independent algebraic circle fit to the ring-coloured pixels refines into the reference centre. Where a
    ring meets a surface of its own colour (Slide 1's B on a red tile) that reference is pulled into the
    surface by a few pixels; the zoomed crops show the localiser's centre on the ring there.
(ii) Renderings: correspondence questions (REF on one image, A-D on the other, points placed by the
    builders' distractor rule) and Relative_Reflectance-style white rings, drawn by draw_markers at several
    image sizes on busy, red, bright and dark textures, with the exact centres known; plus the same
    textures without markers (any marker found there is a false positive).

    python benchmarks/markers_accuracy.py [--n 10] [--sizes 256,384,640,1024,1600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, set before numpy's BLAS starts
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vkvtrain.data.blink_style.common import separated  # noqa: E402
from vkvtrain.data.markers import WHITE, MarkerStyle, draw_markers, find_markers  # noqa: E402

SHARED = Path(os.environ.get("VKVTRAIN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SLIDES = SHARED / "blink_homepage_examples"

# Per slide: panels (index among the slide's image panels, in reading order) -> [(label, x, y)] hand-placed
# ring centres in panel pixels; the subtask's markers (REF on image 1, A-D on image 2; A, B on one image).
SLIDE_MARKERS: dict[str, dict[int, list[tuple[str, float, float]]]] = {
    "Slide1_Visual_Correspondence.jpg": {
        0: [("REF", 346, 11)],
        1: [("A", 153, 268), ("B", 426, 49), ("C", 149, 99), ("D", 338, 266)],
    },
    "Slide10_Semantic_Correspondence.jpg": {
        0: [("REF", 234, 206)],
        1: [("A", 85, 107), ("B", 106, 144), ("C", 155, 144), ("D", 132, 182)],
    },
    "Slide11_Functional_Correspondence.jpg": {
        0: [("REF", 500, 253)],
        1: [("A", 328, 528), ("B", 324, 356), ("C", 227, 255), ("D", 229, 45)],
    },
    # Relative_Reflectance (white rings) and, below it on the same slide, a Relative_Depth question
    "Slide2_Relative_Reflectance.jpg": {
        0: [("A", 448, 27), ("B", 471, 91)],
        2: [("A", 204, 41), ("B", 377, 79)],
    },
}


def slide_panels(path: Path) -> list[Image.Image]:
    """The image panels of a slide: non-white components taller and wider than 150 px, in reading order,
    with leading rows that are not fully covered (the slide's title box) trimmed."""
    a = np.asarray(Image.open(path).convert("RGB"))
    labels, _ = ndi.label(a.min(-1) < 235)
    boxes = []
    for sl in ndi.find_objects(labels):
        if sl is None or sl[0].stop - sl[0].start <= 150 or sl[1].stop - sl[1].start <= 150:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        covered = (a[y0:y1, x0:x1].min(-1) < 235).mean(1)
        while y0 < y1 and covered[0] < 0.97:
            y0, covered = y0 + 1, covered[1:]
        boxes.append((y0, y1, x0, x1))
    return [Image.fromarray(a[y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes]


def circle_fit(image: Image.Image, xy: tuple[float, float], white: bool) -> tuple[float, float]:
    """Reference ring centre near hand-placed ``xy``: algebraic least-squares circle (Kasa) through the pixels
    within 10 px of ``xy`` whose colour is within 45 (RGB distance) of the ring's colour (the median of the
    tenth with the highest ring-colour score there; red: R - max(G, B), white: min - chroma), in the
    connected blob nearest ``xy``."""
    a = np.asarray(image.convert("RGB"), np.float64)
    x0, y0 = max(0, int(xy[0]) - 12), max(0, int(xy[1]) - 12)
    win = a[y0: y0 + 25, x0: x0 + 25]
    hi, lo = win.max(-1), win.min(-1)
    score = (lo - (hi - lo)) if white else win[..., 0] - np.maximum(win[..., 1], win[..., 2])
    yy, xx = np.mgrid[: win.shape[0], : win.shape[1]] + 0.5
    near = np.hypot(xx + x0 - xy[0], yy + y0 - xy[1]) <= 10
    top = near & (score >= np.percentile(score[near], 90))
    mask = near & (np.linalg.norm(win - np.median(win[top], axis=0), axis=-1) <= 45)
    labels, _ = ndi.label(mask, np.ones((3, 3), bool))
    rows, cols = np.nonzero(mask)
    nearest = labels[rows, cols][np.argmin(np.hypot(cols + 0.5 + x0 - xy[0], rows + 0.5 + y0 - xy[1]))]
    rows, cols = np.nonzero(labels == nearest)
    px, py = cols + x0 + 0.5, rows + y0 + 0.5
    design = np.stack([px, py, np.ones_like(px)], 1)
    d, e, _ = np.linalg.lstsq(design, -(px**2 + py**2), rcond=None)[0]
    return -d / 2, -e / 2


def measure_slides() -> dict[str, float] | None:
    if not SLIDES.is_dir():
        print(f"(i) BLINK slides: {SLIDES} is absent; skipped")
        return None
    expected = found = wrong = images = located = 0
    errors = []
    for name, panels in SLIDE_MARKERS.items():
        crops = slide_panels(SLIDES / name)
        for panel, marks in panels.items():
            image = crops[panel]
            white = name.startswith("Slide2") and panel == 0
            got = find_markers(image, ring_colors=("white", "red") if white else ("red",))
            by_label = {m.label: m for m in got}
            labels = {lab for lab, _, _ in marks}
            images += 1
            located += len(got) == len(marks) and set(by_label) == labels
            wrong += sum(m.label not in labels for m in got)
            for label, hx, hy in marks:
                expected += 1
                m = by_label.get(label)
                if m is None:
                    print(f"  {name} panel {panel} {label}: not found")
                    continue
                found += 1
                ref = circle_fit(image, (hx, hy), white)
                errors.append(float(np.hypot(m.xy[0] * image.width - ref[0], m.xy[1] * image.height - ref[1])))
                print(f"  {name} panel {panel} {label}: {errors[-1]:.2f} px from the reference centre")
    summary = {"markers": expected, "found": found, "wrong_labels": wrong, "images": images,
               "images_fully_located": located, "median_px": float(np.median(errors)), "max_px": float(np.max(errors))}
    print(f"(i) BLINK slides: {found}/{expected} markers found with the right label, {wrong} wrong labels; "
          f"images with exactly their markers: {located}/{images}; distance to the circle-fit reference: median "
          f"{summary['median_px']:.2f} px, max {summary['max_px']:.2f} px")
    return summary


def texture(kind: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """busy: random colours at 1/8 resolution, bicubic; red: the same within reds; bright: light greys and
    whites; dark: near-black browns (label boxes merge with it)."""
    cells = (h // 8 + 1, w // 8 + 1, 3)
    if kind == "busy":
        low = rng.integers(0, 256, cells)
    elif kind == "red":
        low = np.stack([rng.integers(140, 256, cells[:2]), rng.integers(0, 90, cells[:2]),
                        rng.integers(0, 90, cells[:2])], -1)
    elif kind == "bright":
        low = rng.integers(170, 256, cells[:2])[..., None] - rng.integers(0, 20, cells)
    elif kind == "dark":
        low = rng.integers(0, 60, cells[:2])[..., None] + rng.integers(0, 25, cells)
    else:
        raise ValueError(kind)
    return Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)


def _points(rng: np.random.Generator, n: int, size: tuple[int, int]) -> list[tuple[float, float]]:
    pool = [(float(rng.uniform(0.08, 0.92)), float(rng.uniform(0.08, 0.92))) for _ in range(64)]
    first = pool[0]
    return [first, *separated(first, pool[1:], n - 1, 0.12, size)]


def measure_renderings(sizes: list[int], n: int) -> list[dict[str, object]]:
    out = []
    for kind in ("busy", "red", "bright", "dark"):
        for side in sizes:
            w, h = side, int(side * 0.75)
            rng = np.random.default_rng([side, len(kind)])
            errors, fully, false_pos = [], 0, 0
            markers, right = {"red": 0, "white": 0}, {"red": 0, "white": 0}
            start = time.perf_counter()
            for i in range(n):
                ref_img, cand_img = texture(kind, w, h, rng), texture(kind, w, h, rng)
                pts = _points(rng, 4, (w, h))
                layouts = [(ref_img, {"REF": pts[0]}, MarkerStyle.for_image(w, h)),
                           (cand_img, dict(zip("ABCD", pts)), MarkerStyle.for_image(w, h)),
                           (ref_img, {"A": pts[1], "B": pts[2]}, MarkerStyle.for_image(w, h, ring_color=WHITE))]
                ok = True
                for clean, marks, style in layouts:
                    marked, exact = draw_markers(clean, marks, style)
                    ring = "white" if style.ring_color == WHITE else "red"
                    colors = ("white", "red") if ring == "white" else ("red",)
                    got = {m.label: m for m in find_markers(marked, ring_colors=colors)}
                    ok &= set(got) == set(marks)
                    for label, (x, y) in exact.items():
                        markers[ring] += 1
                        if label in got:
                            right[ring] += 1
                            errors.append(float(np.hypot((got[label].xy[0] - x) * w, (got[label].xy[1] - y) * h)))
                fully += ok
                false_pos += len(find_markers(ref_img, ring_colors=("red", "white")))
            row = {"background": kind, "size": f"{w}x{h}", "images": 3 * n, "all_markers_found": f"{fully}/{n}",
                   "red_found": f"{right['red']}/{markers['red']}",
                   "white_found": f"{right['white']}/{markers['white']}",
                   "max_px": round(max(errors), 2) if errors else None,
                   "mean_px": round(float(np.mean(errors)), 3) if errors else None, "false_positives": false_pos,
                   "s_per_image": round((time.perf_counter() - start) / (4 * n), 3)}
            print("  ", json.dumps(row))
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="questions per background and size")
    parser.add_argument("--sizes", default="256,384,640,1024,1600", help="longer image sides")
    args = parser.parse_args()
    measure_slides()
    print("(ii) renderings (REF image + A-D image + white-ring A/B image per question; clean image for false positives):")
    measure_renderings([int(s) for s in args.sizes.split(",")], args.n)


if __name__ == "__main__":
    main()
