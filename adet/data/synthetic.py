"""A deterministic synthetic instance-segmentation data set ("synthetic shapes").

Images hold 1..N coloured, textured, rotated shapes of six classes on varied backgrounds.
Shapes drawn later cover earlier ones; every annotation describes the *visible* part of
its shape: COCO polygons that trace the visible mask along pixel edges (lightly
simplified, checked against the mask; a visible part with a hole is cut into hole-free
pieces), the bbox of the visible mask, and its pixel count as ``area``. A placement
that would hide too much of an earlier shape (below ``min_visible_fraction`` of it or
``min_visible_area`` pixels) is tried elsewhere or dropped, so every shape that can be
seen in an image is annotated.

The output is a COCO-format data set::

    root/
      meta.json                        parameters + version; written last
      annotations/instances_train.json
      annotations/instances_val.json
      train/000000.jpg ...
      val/000000.jpg ...

Everything is a function of the parameters: each image is drawn from its own
``numpy.random.default_rng([seed, split, index])``, so the same parameters give
byte-identical json files and images. :func:`generate_synthetic_dataset` reuses a
complete data set made with the same parameters and writes new ones atomically.
"""
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

__all__ = [
    "SYNTHETIC_VERSION",
    "SHAPE_CLASSES",
    "synthetic_categories",
    "default_cache_dir",
    "synthetic_params",
    "synthetic_dataset_dir",
    "generate_synthetic_dataset",
    "render_sample",
    "render_dataset_sample",
    "mask_to_polygons",
    "has_holes",
    "polygon_mask_iou",
]

# Bump when the rendering changes: it is part of the cache key and of meta.json.
SYNTHETIC_VERSION = 1
SHAPE_CLASSES = ("circle", "ellipse", "rectangle", "triangle", "star", "hexagon")
SPLITS = ("train", "val")

# (probability, min area, max area) of the full shape, in pixels; the COCO small /
# medium / large limits are 32**2 and 96**2. The large bucket is capped by the image.
_AREA_BUCKETS = ((0.35, 40.0, 32.0**2), (0.35, 32.0**2, 96.0**2), (0.3, 1.4 * 96.0**2, None))
_MAX_AREA_FRACTION = 0.65
_SHAPE_TEXTURES = ("flat", "stripes", "checker", "noise")
_BACKGROUNDS = ("flat", "gradient", "noise", "texture")
_PLACEMENT_TRIES = 8
_MIN_POLYGON_IOU = 0.95  # below this the simplified polygon is replaced by the exact one

# Step of each boundary direction: east, south, west, north (image coordinates, y down).
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])


def synthetic_categories():
    """COCO ``categories`` of the synthetic set: ids 1..K in :data:`SHAPE_CLASSES` order."""
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]


# ----------------------------------------------------------------------------------
# Masks to polygons
# ----------------------------------------------------------------------------------
def _boundary_graph(mask):
    """Directed pixel-edge boundary of a bool mask.

    Returns the start corners (x, y), direction and successor of every boundary edge.
    Corner (x, y) is the top-left corner of pixel (row y, col x), the convention of
    pycocotools' polygon rasterizer. Outer boundaries run clockwise on screen, holes
    counter-clockwise; at a corner where two pixels touch diagonally the walk turns
    right, so such pixels are separate pieces (4-connectivity).
    """
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), dtype=bool)
    pad[1:-1, 1:-1] = mask
    sides = (
        (mask & ~pad[:-2, 1:-1], 0, 0),  # top side of a pixel: east, from (c, r)
        (mask & ~pad[1:-1, 2:], 1, 0),  # right side: south, from (c + 1, r)
        (mask & ~pad[2:, 1:-1], 1, 1),  # bottom side: west, from (c + 1, r + 1)
        (mask & ~pad[1:-1, :-2], 0, 1),  # left side: north, from (c, r + 1)
    )
    xs, ys, ds = [], [], []
    for d, (side, ox, oy) in enumerate(sides):
        r, c = np.nonzero(side)
        xs.append(c + ox)
        ys.append(r + oy)
        ds.append(np.full(len(r), d))
    xs, ys, ds = np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)
    n = len(xs)
    index = np.full((4, h + 1, w + 1), -1, dtype=np.int64)
    index[ds, ys, xs] = np.arange(n)
    ex, ey = xs + _DX[ds], ys + _DY[ds]
    nxt = index[(ds + 1) % 4, ey, ex]  # right turn first,
    for turn in (0, 3):  # then straight on, then left
        cand = index[(ds + turn) % 4, ey, ex]
        nxt = np.where(nxt >= 0, nxt, cand)
    return xs, ys, ds, nxt


def _cycle_ids(nxt):
    """Label each edge with the smallest edge index of its cycle (pointer doubling)."""
    rep = np.arange(len(nxt))
    jump = nxt.copy()
    for _ in range(max(1, int(len(nxt)).bit_length())):
        rep = np.minimum(rep, rep[jump])
        jump = jump[jump]
    return rep


def _signed_loop_areas(xs, ys, ds, nxt):
    """Twice the signed area of each boundary loop: > 0 outer boundary, < 0 hole."""
    rep = _cycle_ids(nxt)
    ex, ey = xs + _DX[ds], ys + _DY[ds]
    twice = np.bincount(rep, weights=(xs * ey - ex * ys).astype(np.float64))
    return rep, twice


def has_holes(mask):
    """True when a bool mask has a hole (background enclosed by foreground)."""
    if not mask.any():
        return False
    xs, ys, ds, nxt = _boundary_graph(mask)
    _, twice = _signed_loop_areas(xs, ys, ds, nxt)
    return bool((twice < 0).any())


def _simplify_closed(pts, tol):
    """Douglas-Peucker on a closed polygon given as (N, 2) vertices (not repeated)."""
    n = len(pts)
    if n <= 4 or tol <= 0:
        return pts
    far = int(np.argmax(((pts - pts[0]) ** 2).sum(1)))
    ring = np.concatenate([pts, pts[:1]]).astype(np.float64)
    rx, ry = ring[:, 0].tolist(), ring[:, 1].tolist()
    keep = np.zeros(n + 1, dtype=bool)
    keep[[0, far, n]] = True
    stack = [(0, far), (far, n)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        ax, ay = rx[i], ry[i]
        bx, by = rx[j] - ax, ry[j] - ay
        length = math.hypot(bx, by) or 1.0
        if j - i > 48:  # long runs in numpy, short ones in plain Python (cheaper)
            seg = ring[i + 1 : j] - (ax, ay)
            if bx == 0 and by == 0:
                dist = np.hypot(seg[:, 0], seg[:, 1])
            else:
                dist = np.abs(bx * seg[:, 1] - by * seg[:, 0]) / length
            m = int(np.argmax(dist))
            best = float(dist[m])
        else:
            best, m = -1.0, 0
            for t in range(i + 1, j):
                px, py = rx[t] - ax, ry[t] - ay
                d = math.hypot(px, py) if bx == 0 and by == 0 else abs(bx * py - by * px) / length
                if d > best:
                    best, m = d, t - i - 1
        if best > tol:
            k = i + 1 + m
            keep[k] = True
            stack += [(i, k), (k, j)]
    return pts[keep[:n]]


def mask_to_polygons(mask, tolerance=0.0, offset=(0, 0)):
    """COCO polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists) of a bool mask.

    Vertices are pixel corners (integers; corner (x, y) is the top-left corner of
    pixel (row y, col x)). The polygons follow the pixel edges, so with ``tolerance=0`` pycocotools (and so
    Detectron2) rasterizes them back to exactly ``mask``; ``tolerance`` > 0 simplifies
    them (Douglas-Peucker, in pixels). One polygon per 4-connected piece. COCO polygons
    are rasterized as a union and cannot carry holes, so a piece with a hole is cut in
    two along a pixel column through the hole (recursively), giving hole-free pieces
    whose union is the mask. ``offset`` (x, y) is added to every vertex, for masks
    cropped out of a larger image.
    """
    mask = np.asarray(mask, dtype=bool)
    polygons = []
    _trace_into(mask, float(tolerance), np.asarray(offset), polygons)
    return polygons


def _trace_into(mask, tolerance, offset, polygons):
    if not mask.any():
        return
    xs, ys, ds, nxt = _boundary_graph(mask)
    rep, twice = _signed_loop_areas(xs, ys, ds, nxt)
    holes = np.nonzero(twice < 0)[0]
    if len(holes):
        # The hole covers pixel columns [x_min, x_max); any cut column c in
        # (x_min, x_max] opens it on both sides.
        hx = xs[rep == holes[0]]
        cut = (int(hx.min()) + int(hx.max()) + 1) // 2
        left, right = mask.copy(), mask.copy()
        left[:, cut:] = False
        right[:, :cut] = False
        _trace_into(left, tolerance, offset, polygons)
        _trace_into(right, tolerance, offset, polygons)
        return
    # An edge starts a polygon vertex when its direction differs from its predecessor's.
    prev_dir = np.empty_like(ds)
    prev_dir[nxt] = ds
    corner = (ds != prev_dir).tolist()
    nxt_l = nxt.tolist()
    for root in np.nonzero(twice > 0)[0].tolist():
        verts = []
        i = root
        while True:
            if corner[i]:
                verts.append(i)
            i = nxt_l[i]
            if i == root:
                break
        pts = _simplify_closed(np.stack([xs[verts], ys[verts]], axis=1), tolerance)
        if len(pts) >= 3:
            polygons.append((pts + offset).reshape(-1).tolist())


def polygon_mask_iou(polygons, mask):
    """IoU between the pycocotools rasterization of COCO polygons and a bool mask."""
    h, w = mask.shape
    if not polygons:
        return 0.0
    poly_rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
    true_rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return float(mask_util.iou([poly_rle], [true_rle], [0])[0, 0])


# ----------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------
def _unit_shape(rng, name):
    """Vertices (N, 2) of a shape of the class ``name``, centred at 0, random rotation."""
    if name in ("circle", "ellipse"):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ratio = 1.0 if name == "circle" else rng.uniform(0.35, 0.7)
        pts = np.stack([np.cos(t), ratio * np.sin(t)], axis=1)
    elif name == "rectangle":
        a = rng.uniform(0.3, 1.0)
        pts = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
    elif name == "triangle":
        t = np.deg2rad(90 + 120 * np.arange(3) + rng.uniform(-25, 25, size=3))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif name == "hexagon":
        t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown shape class {name!r}")
    theta = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(theta), np.sin(theta)
    return pts @ np.array([[c, s], [-s, c]])


def _polygon_area(pts):
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _sample_area(rng, height, width):
    r = rng.random()
    for prob, lo, hi in _AREA_BUCKETS:
        if r < prob:
            break
        r -= prob
    cap = _MAX_AREA_FRACTION * height * width
    if hi is None:
        hi = cap
        if hi < 1.15 * lo:  # image too small for a large shape: make it medium
            lo, hi = _AREA_BUCKETS[1][1], _AREA_BUCKETS[1][2]
    hi = min(hi, cap)
    lo = min(lo, hi)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _pattern(rng, kind, h, w):
    """A (h, w) float pattern in [0, 1] (None for flat) used to mix two colours."""
    if kind == "flat":
        return None
    if kind == "noise":
        return rng.random((h, w), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(2.5, 8.0)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period
    if kind == "stripes":
        return (np.floor(u) % 2).astype(np.float32)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def _paint(rng, kind, h, w, base):
    """(h, w, 3) float texture around the colour ``base``."""
    pattern = _pattern(rng, kind, h, w)
    if pattern is None:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    other = np.clip(base + rng.uniform(-90, 90, size=3), 0, 255)
    return base + pattern[..., None] * (other - base)


def _background(rng, h, w):
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    base = rng.uniform(0, 255, size=3)
    if kind == "flat":
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        other = rng.uniform(0, 255, size=3)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base + t[..., None] * (other - base)
    elif kind == "noise":  # smooth blobs plus a little pixel noise
        cell = int(rng.integers(8, 33))
        coarse = rng.uniform(-70, 70, size=(h // cell + 2, w // cell + 2, 3))
        coarse = np.clip(base + coarse, 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.float32)
        img = img + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    else:  # a low-contrast stripes / checker texture
        pattern = _pattern(rng, ("stripes", "checker")[rng.integers(2)], h, w)
        other = np.clip(base + rng.uniform(-40, 40, size=3), 0, 255)
        img = base + pattern[..., None] * (other - base)
    return img


def _pick_colour(rng, under):
    """A random colour far enough from the mean colour ``under`` the shape."""
    best, best_d = None, -1.0
    for _ in range(8):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= 90:
            break
    return best


def _normalize_size(image_size):
    """Canonical ``[[hmin, hmax], [wmin, wmax]]`` of an int, (H, W) or ((h0, h1), (w0, w1))."""
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be int, (H, W) or ((hmin, hmax), (wmin, wmax)), got {image_size!r}")
    out = []
    for v in image_size:
        lo, hi = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
        if not (16 <= int(lo) <= int(hi)):
            raise ValueError(f"invalid image_size {image_size!r}: sides must be >= 16 and min <= max")
        out.append([int(lo), int(hi)])
    return out


def render_sample(
    rng,
    height=160,
    width=160,
    min_instances=1,
    max_instances=6,
    min_visible_fraction=0.3,
    min_visible_area=20,
    polygon_tolerance=0.75,
):
    """Draw one image and its annotations.

    Args:
        rng: a ``numpy.random.Generator`` or a seed.
        height, width: image size.
        min_instances, max_instances: number of shapes to try to place (at least one
            is always placed).
        min_visible_fraction, min_visible_area: a shape may be covered by later ones
            only while this much of it (fraction of its full area, and pixels) stays
            visible; placements that would break this are tried elsewhere or dropped.
        polygon_tolerance: Douglas-Peucker tolerance in pixels for the polygons.

    Returns:
        dict with ``image`` (H, W, 3 uint8 RGB) and ``annotations``: one dict per shape,
        in drawing order, with ``category_id`` (1..K), ``mask`` (H, W bool, visible part),
        ``segmentation`` (COCO polygons of the visible part), ``bbox`` (XYWH of the
        visible mask), ``area`` (visible pixels) and ``full_area`` (pixels of the whole
        shape).
    """
    # The order of the random draws below is part of the data set: changing it changes
    # every image (bump SYNTHETIC_VERSION if you do).
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = int(height), int(width)
    canvas = _background(rng, h, w)
    label = np.zeros((h, w), dtype=np.int16)  # 0 background, k = k-th placed shape
    shapes = []  # dicts: category_id, full_area, visible area
    for cls, area in _plan_shapes(rng, h, w, min_instances, max_instances):
        pts, span = _sized_outline(rng, cls, area, h, w)
        placed = _place_shape(rng, pts, span, label, shapes, min_visible_fraction, min_visible_area)
        if placed is None:
            continue
        _paint_shape(rng, canvas, placed)
        _record_shape(label, shapes, placed, cls)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    annotations = [
        _build_annotation(label == k, shape, polygon_tolerance)
        for k, shape in enumerate(shapes, start=1)
    ]
    return {"image": image, "annotations": annotations}


def _plan_shapes(rng, h, w, min_instances, max_instances):
    """The (class index, full area) of each shape to place, in drawing order."""
    num = max(int(rng.integers(min_instances, max_instances + 1)), 1)
    classes = rng.integers(len(SHAPE_CLASSES), size=num)
    areas = np.array([_sample_area(rng, h, w) for _ in range(num)])
    # Mostly larger shapes first (behind), with enough jitter that small shapes are
    # sometimes covered by larger ones too.
    order = np.argsort(-(np.log(areas) + rng.normal(0, 0.75, size=num)), kind="stable")
    return list(zip(classes[order].tolist(), areas[order].tolist()))


def _sized_outline(rng, cls, area, h, w):
    """Vertices of a random shape of class index ``cls`` with about ``area`` pixels.

    The shape is shrunk if needed to fit in an (h, w) image with a small margin.
    Returns ``(pts, span)``: the vertices with the top-left of their box at 0, and the
    box size (x, y).
    """
    unit = _unit_shape(rng, SHAPE_CLASSES[cls])
    pts = unit * math.sqrt(area / _polygon_area(unit))
    span = pts.max(0) - pts.min(0)
    fit = min(1.0, (w - 3) / span[0], (h - 3) / span[1])
    pts = (pts - pts.min(0)) * fit  # top-left of its box at 0
    return pts, span * fit


def _place_shape(rng, pts, span, label, shapes, min_fraction, min_area):
    """Try up to ``_PLACEMENT_TRIES`` random offsets; the first valid placement (see
    :func:`_try_place`) or None."""
    h, w = label.shape
    for _try in range(_PLACEMENT_TRIES):
        ox = rng.uniform(1, w - 1 - span[0])
        oy = rng.uniform(1, h - 1 - span[1])
        placed = _try_place(pts + (ox, oy), label, shapes, min_fraction, min_area)
        if placed is not None:
            return placed
    return None


def _paint_shape(rng, canvas, placed):
    """Paint a placed shape onto ``canvas`` (in place) with a random colour and texture."""
    mask, (x0, y0, x1, y1), _ = placed
    sub = mask[y0:y1, x0:x1]
    region = canvas[y0:y1, x0:x1]
    colour = _pick_colour(rng, region[sub].mean(0))
    kind = _SHAPE_TEXTURES[rng.integers(len(_SHAPE_TEXTURES))]
    region[sub] = _paint(rng, kind, y1 - y0, x1 - x0, colour)[sub]


def _record_shape(label, shapes, placed, cls):
    """Occlusion bookkeeping: mark the new shape in ``label`` and take the pixels it
    covers off the visible area of the earlier shapes."""
    mask, (x0, y0, x1, y1), covered = placed
    label[mask] = len(shapes) + 1
    for k in np.nonzero(covered[1:])[0].tolist():
        shapes[k]["area"] -= int(covered[k + 1])
    full = int(mask[y0:y1, x0:x1].sum())
    shapes.append({"category_id": cls + 1, "full_area": full, "area": full})


def _build_annotation(vis, shape, polygon_tolerance):
    """The annotation dict (see :func:`render_sample`) of a shape with visible mask ``vis``."""
    rows, cols = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = vis[y0:y1, x0:x1]
    return {
        "category_id": shape["category_id"],
        "mask": vis,
        "segmentation": _visible_polygons(vis, crop, (x0, y0), polygon_tolerance),
        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
        "area": int(crop.sum()),
        "full_area": shape["full_area"],
    }


def _visible_polygons(vis, crop, offset, tolerance):
    """Simplified polygons of ``crop`` (``vis`` cropped at ``offset``), or the exact
    pixel-edge polygons when simplifying loses too much (IoU with ``vis`` too low)."""
    polys = mask_to_polygons(crop, tolerance, offset=offset)
    if polygon_mask_iou(polys, vis) < _MIN_POLYGON_IOU:
        polys = mask_to_polygons(crop, 0.0, offset=offset)
    return polys


def _try_place(pts, label, shapes, min_fraction, min_area):
    """Rasterize a shape at ``pts``; None if it would break an earlier shape's visibility.

    Returns ``(mask, (x0, y0, x1, y1), covered)``: the full-image bool mask, its box and
    the number of pixels it covers of each earlier shape (index k for shape k, 1-based).
    """
    h, w = label.shape
    x0, y0 = (int(v) for v in np.floor(pts.min(0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(pts.max(0)))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(float(x) - x0, float(y) - y0) for x, y in pts], fill=1)
    sub = np.asarray(canvas, dtype=bool)
    area = int(sub.sum())
    if area < max(min_area, 1):
        return None
    covered = np.bincount(label[y0:y1, x0:x1][sub], minlength=len(shapes) + 1)
    for k in np.nonzero(covered[1:])[0].tolist():
        if shapes[k]["area"] - covered[k + 1] < max(min_area, min_fraction * shapes[k]["full_area"]):
            return None
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = sub
    return mask, (x0, y0, x1, y1), covered


# ----------------------------------------------------------------------------------
# Data set files
# ----------------------------------------------------------------------------------
def default_cache_dir():
    """``$ADET_CACHE`` or ``~/.cache/adet``."""
    return Path(os.environ.get("ADET_CACHE") or Path.home() / ".cache" / "adet").expanduser()


def synthetic_params(
    seed=0,
    num_train=1500,
    num_val=200,
    image_size=((128, 192), (128, 192)),
    min_instances=1,
    max_instances=6,
    min_visible_fraction=0.3,
    min_visible_area=20,
    polygon_tolerance=0.75,
    image_format="jpg",
):
    """The canonical, json-serializable parameters of a synthetic data set (with defaults).

    ``image_size`` is an int (square), ``(H, W)`` or a range ``((hmin, hmax), (wmin, wmax))``
    from which each image's size is drawn. ``image_format`` is ``"jpg"`` or ``"png"``.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not (1 <= int(min_instances) <= int(max_instances)):
        raise ValueError("need 1 <= min_instances <= max_instances")
    if int(num_train) < 0 or int(num_val) < 0:
        raise ValueError("num_train and num_val must be >= 0")
    return {
        "version": SYNTHETIC_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": _normalize_size(image_size),
        "min_instances": int(min_instances),
        "max_instances": int(max_instances),
        "min_visible_fraction": float(min_visible_fraction),
        "min_visible_area": int(min_visible_area),
        "polygon_tolerance": float(polygon_tolerance),
        "image_format": image_format,
    }


def _params_hash(params):
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def synthetic_dataset_dir(root=None, **gen_kwargs):
    """Folder of the data set with these parameters: ``root`` itself when given, else
    ``<cache>/synthetic_shapes_v<version>_<hash of the parameters>``."""
    if root is not None:
        return Path(root).expanduser()
    params = synthetic_params(**gen_kwargs)
    return default_cache_dir() / f"synthetic_shapes_v{SYNTHETIC_VERSION}_{_params_hash(params)}"


def _describe(root, params):
    root = Path(root)
    out = {"root": str(root), "params": params, "thing_classes": list(SHAPE_CLASSES)}
    for split in SPLITS:
        out[split] = {
            "json_file": str(root / "annotations" / f"instances_{split}.json"),
            "image_root": str(root / split),
        }
    return out


def _is_complete(root, params):
    meta_file = Path(root) / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("params") != params or meta.get("version") != SYNTHETIC_VERSION:
        return False
    for split in SPLITS:
        if not (Path(root) / "annotations" / f"instances_{split}.json").is_file():
            return False
        files = meta.get("num_images", {}).get(split, -1)
        image_dir = Path(root) / split
        if not image_dir.is_dir() or sum(1 for _ in os.scandir(image_dir)) != files:
            return False
    return True


def render_dataset_sample(params, split, index):
    """The sample (see :func:`render_sample`) of image ``index`` of ``split`` in the data
    set with parameters ``params`` (a dict from :func:`synthetic_params`)."""
    rng = np.random.default_rng([params["seed"], SPLITS.index(split), index])
    (hmin, hmax), (wmin, wmax) = params["image_size"]
    h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
    return render_sample(
        rng,
        h,
        w,
        min_instances=params["min_instances"],
        max_instances=params["max_instances"],
        min_visible_fraction=params["min_visible_fraction"],
        min_visible_area=params["min_visible_area"],
        polygon_tolerance=params["polygon_tolerance"],
    )


def _write_split(out_dir, split, params):
    image_dir = out_dir / split
    image_dir.mkdir(parents=True)
    num = params["num_train" if split == "train" else "num_val"]
    ext = params["image_format"]
    images, annotations = [], []
    for i in range(num):
        sample = render_dataset_sample(params, split, i)
        h, w = sample["image"].shape[:2]
        file_name = f"{i:06d}.{ext}"
        pil = Image.fromarray(sample["image"])
        if ext == "jpg":
            pil.save(image_dir / file_name, format="JPEG", quality=95)
        else:
            pil.save(image_dir / file_name, format="PNG")
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for ann in sample["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ann["category_id"],
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"adet synthetic shapes v{SYNTHETIC_VERSION}, {split} split"},
        "images": images,
        "annotations": annotations,
        "categories": synthetic_categories(),
    }
    with open(out_dir / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return len(images), len(annotations)


def generate_synthetic_dataset(root=None, overwrite=False, verbose=False, **gen_kwargs):
    """Generate (or reuse) a synthetic shapes data set in COCO format.

    Args:
        root: folder of the data set; default ``<$ADET_CACHE or ~/.cache/adet>/
            synthetic_shapes_v<version>_<hash of the parameters>``.
        overwrite: regenerate even if a complete data set with these parameters exists.
        verbose: print the time taken.
        **gen_kwargs: the parameters of :func:`synthetic_params` (seed, num_train,
            num_val, image_size, min_instances, max_instances, min_visible_fraction,
            min_visible_area, polygon_tolerance, image_format).

    A complete data set made with the same parameters (``meta.json`` matches) is reused.
    Otherwise the data set is written into a temporary folder beside ``root`` and renamed
    into place once complete, so an interrupted run leaves nothing that is reused later.
    A ``root`` that exists but holds something else (no ``meta.json``, not empty) is
    never deleted: a ``FileExistsError`` is raised instead.

    Returns:
        dict with ``root``, ``params``, ``thing_classes`` and, per split (``train``,
        ``val``), ``{"json_file": ..., "image_root": ...}``.
    """
    params = synthetic_params(**gen_kwargs)
    root = synthetic_dataset_dir(root, **gen_kwargs)
    if not overwrite and _is_complete(root, params):
        return _describe(root, params)
    _refuse_foreign_root(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is not
        _write_dataset(tmp, params)
        _move_into_place(tmp, root, params, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"synthetic shapes: generated {root} in {time.perf_counter() - start:.1f}s")
    return _describe(root, params)


def _refuse_foreign_root(root):
    """Raise ``FileExistsError`` if ``root`` holds something that is not a synthetic
    data set (exists, not empty, no ``meta.json``): it must never be deleted."""
    if root.exists() and not (root / "meta.json").is_file() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic data set (no meta.json); "
            "choose another root or remove it"
        )


def _write_dataset(out_dir, params):
    """Write every split and, last, ``meta.json`` into the existing folder ``out_dir``."""
    (out_dir / "annotations").mkdir()
    counts = {split: _write_split(out_dir, split, params) for split in SPLITS}
    meta = {
        "version": SYNTHETIC_VERSION,
        "params": params,
        "num_images": {s: c[0] for s, c in counts.items()},
        "num_annotations": {s: c[1] for s, c in counts.items()},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def _move_into_place(tmp, root, params, overwrite):
    """Rename ``tmp`` to ``root``, replacing an outdated or incomplete data set there."""
    if root.exists():
        if not overwrite and _is_complete(root, params):
            return  # a concurrent generator finished the same data set first: keep it
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        try:
            os.replace(root, old / "data")
        except FileNotFoundError:  # removed concurrently
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:
        # A concurrent generator created root between the check and the rename.
        if not _is_complete(root, params):
            raise
