"""Synthetic shapes: a small, seeded panoptic dataset written in COCO panoptic format.

The generator draws a few textured background regions (stuff) and several overlapping
coloured shapes (things) per image, and writes::

    root/
      train/images/000001.png ...     RGB images
      train/panoptic/000001.png ...   RGB-encoded segment ids, id = R + 256*G + 256**2*B, 0 = void
      train/panoptic.json             COCO panoptic: info, images, annotations, categories
      val/...                         the same for the validation split

so that tests and the quickstart go through the same reading path as COCO panoptic.

Design choices that keep it quick to learn and still exercise the awkward cases:

* each thing class has its own shape *and* hue band (circle = red, square = green,
  triangle = blue, with jitter) and a darker one-pixel outline, so touching instances of
  the same class stay separable;
* stuff textures (stripes, checker, noise) are low-saturation, so they never look like
  things;
* shapes are at least ~16 px across at 128 x 128 and an instance left with less than
  ``MIN_VISIBLE_FRACTION`` of its area after occlusion is removed before drawing;
* a thin void band surrounds about a third of the things (the COCO annotation style), and
  every tenth image carries one ``iscrowd=1`` thing segment.

Every random draw comes from a generator seeded by ``(seed, split, image index)``, so the
same arguments give byte-identical files, and a split's images do not depend on the size
of the other split.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from lightning_seg.data.io import id_to_rgb

SYNTHETIC_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 40, 40], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [40, 200, 60], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [50, 80, 230], "supercategory": "shape"},
    {
        "id": 11,
        "name": "stripes",
        "isthing": 0,
        "color": [200, 190, 150],
        "supercategory": "texture",
    },
    {
        "id": 12,
        "name": "checker",
        "isthing": 0,
        "color": [120, 120, 140],
        "supercategory": "texture",
    },
    {"id": 13, "name": "noise", "isthing": 0, "color": [90, 100, 80], "supercategory": "texture"},
]
"""COCO panoptic category dicts of the synthetic dataset: 3 thing shapes, 3 stuff textures.

The stuff ids leave a gap after the things on purpose, so code that assumes contiguous
category ids fails here rather than on a real dataset.
"""

GENERATOR_VERSION = 1
"""Bumped whenever the drawing rules change, so cached datasets are regenerated."""

MIN_VISIBLE_FRACTION = 0.4
"""A thing keeps its annotation only if at least this fraction of its shape stays visible."""

CROWD_EVERY = 10
"""Image ``i`` of a split has one ``iscrowd=1`` thing when ``(i + 1) % CROWD_EVERY == 0``."""

VOID_BAND_PROBABILITY = 0.35
"""Chance that a thing gets a void band on the stuff around it."""

_THING_HUES = {1: 0.0, 2: 0.33, 3: 0.62}
_STUFF_IDS = [c["id"] for c in SYNTHETIC_CATEGORIES if not c["isthing"]]
_THING_IDS = [c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]]
_SPLIT_CODES = {"train": 0, "val": 1}
_MARKER_NAME = ".synthetic_shapes.json"


# --------------------------------------------------------------------------------------
# segment ids <-> RGB


def segments_from_id_map(
    ids: np.ndarray, categories: dict[int, int], crowd: set[int] | None = None
) -> list[dict[str, Any]]:
    """COCO panoptic ``segments_info`` measured on the pixels of an id map.

    Args:
        ids: integer ``[H, W]`` segment-id map, 0 = void.
        categories: category id of every segment id that may appear.
        crowd: segment ids to flag ``iscrowd=1``.

    Returns:
        One dict per non-zero id present, sorted by id: ``id``, ``category_id``, ``iscrowd``,
        ``area`` (pixel count) and ``bbox`` ``[x, y, w, h]`` (tight, inclusive pixels).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"segment-id map must be [H, W], got shape {ids.shape}")
    crowd = crowd or set()
    seg_ids, inverse, areas = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(ids.shape)
    # One pass over the pixels for all segments: which rows / columns each segment touches.
    height, width = ids.shape
    in_row = np.zeros((height, len(seg_ids)), dtype=bool)
    in_col = np.zeros((width, len(seg_ids)), dtype=bool)
    in_row[np.arange(height)[:, None], inverse] = True
    in_col[np.arange(width)[None, :], inverse] = True
    y0 = in_row.argmax(axis=0)
    y1 = height - 1 - in_row[::-1].argmax(axis=0)
    x0 = in_col.argmax(axis=0)
    x1 = width - 1 - in_col[::-1].argmax(axis=0)
    out = []
    for k, seg_id in enumerate(seg_ids.tolist()):
        if seg_id == 0:
            continue
        if seg_id not in categories:
            raise ValueError(f"segment id {seg_id} in the id map has no category")
        out.append(
            {
                "id": int(seg_id),
                "category_id": int(categories[seg_id]),
                "iscrowd": int(seg_id in crowd),
                "area": int(areas[k]),
                "bbox": [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)],
            }
        )
    return out


# --------------------------------------------------------------------------------------
# drawing


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinear upsampling of a ``cells x cells`` random grid to float64 ``[H, W]``.

    Written with element-wise arithmetic only, so the result does not depend on the BLAS or
    SIMD path of the machine and generations stay byte-identical.
    """
    grid = rng.standard_normal((cells + 1, cells + 1))
    ys = (np.arange(height) + 0.5) / height * cells
    xs = (np.arange(width) + 0.5) / width * cells
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _stuff_layout(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, list[int]]:
    """Split the canvas into 2-3 stuff regions with irregular boundaries.

    Returns:
        int64 ``[H, W]`` region index map and the stuff category id of each region.
    """
    k = int(rng.integers(2, len(_STUFF_IDS) + 1))
    classes = [int(c) for c in rng.permutation(_STUFF_IDS)[:k]]
    # A coarse field gives the big blobs, a finer one wiggles their borders; retried until no
    # region is a sliver, so every stuff class in the image is large enough to learn.
    for _ in range(50):
        fields = np.stack(
            [
                _smooth_field(rng, height, width, 3) + 0.3 * _smooth_field(rng, height, width, 12)
                for _ in range(k)
            ]
        )
        regions = fields.argmax(axis=0)
        counts = np.bincount(regions.ravel(), minlength=k)
        if counts.min() >= 0.12 * height * width:
            return regions, classes
    # Fallback keeps generation total: a wavy split into vertical bands.
    xs = np.arange(width)[None, :] + 6 * _smooth_field(rng, height, width, 4)
    regions = np.minimum((xs * k / width).astype(np.int64), k - 1).clip(0)
    return regions, classes


def _stuff_texture(
    rng: np.random.Generator, category_id: int, height: int, width: int
) -> np.ndarray:
    """Full-canvas texture of one stuff class as float ``[H, W, 3]`` in ``[0, 255]``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if category_id == 11:  # stripes: two beige tones along a random direction
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(7, 11)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        band = (np.floor(phase) % 2)[..., None]
        light = np.array([205, 195, 160]) + rng.uniform(-12, 12, 3)
        dark = np.array([150, 140, 110]) + rng.uniform(-12, 12, 3)
        return band * light + (1 - band) * dark
    if category_id == 12:  # checker: grey-violet squares
        cell = int(rng.integers(5, 9))
        ox, oy = rng.integers(0, cell, 2)
        tile = (((xx + ox) // cell + (yy + oy) // cell) % 2)[..., None]
        light = np.array([170, 170, 185]) + rng.uniform(-10, 10, 3)
        dark = np.array([95, 95, 110]) + rng.uniform(-10, 10, 3)
        return tile * light + (1 - tile) * dark
    # noise: olive-grey grain
    base = np.array([95, 105, 85]) + rng.uniform(-10, 10, 3)
    return base + rng.normal(0, 28, (height, width, 1))


def _shape_mask(
    rng: np.random.Generator, category_id: int, height: int, width: int, scale: float
) -> np.ndarray:
    """Random circle / rotated square / rotated triangle, bool ``[H, W]``, inside the canvas."""
    size = rng.uniform(16, 40) * scale  # diameter, side, or triangle height
    half = size / 2
    margin = half * 1.42 + 1  # a rotated square reaches half * sqrt(2) from its centre
    cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
    cx = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    theta = rng.uniform(0, 2 * np.pi)
    if category_id == 1:
        return dx * dx + dy * dy <= half * half
    if category_id == 2:
        c, s = np.cos(theta), np.sin(theta)
        return (np.abs(dx * c + dy * s) <= half) & (np.abs(-dx * s + dy * c) <= half)
    # Equilateral triangle of height `size`: circumradius = 2/3 of the height.
    radius = size * 2 / 3
    inside = np.ones((height, width), dtype=bool)
    for k in range(3):
        # Half-plane of each edge: distance along its outward normal up to the inradius (R / 2).
        a = theta + 2 * np.pi * k / 3
        inside &= dx * np.cos(a) + dy * np.sin(a) <= radius / 2
    return inside


def _thing_colour(rng: np.random.Generator, category_id: int) -> np.ndarray:
    """A saturated RGB colour inside the class's hue band, float ``[3]``."""
    hue = (_THING_HUES[category_id] + rng.uniform(-0.05, 0.05)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    return np.array([r, g, b]) * 255


def _draw_image(
    rng: np.random.Generator, height: int, width: int, max_instances: int, with_crowd: bool
) -> tuple[np.ndarray, np.ndarray, dict[int, int], set[int]]:
    """Draw one image and its panoptic annotation.

    Returns:
        ``(image uint8 [H,W,3], ids int64 [H,W], category of each id, crowd ids)``.
    """
    scale = min(height, width) / 128
    regions, stuff_classes = _stuff_layout(rng, height, width)

    # Layout first, pixels after: occlusion decides which instances survive, and only the
    # survivors are drawn, so the image never shows an unannotated shape.
    n = int(rng.integers(1, max_instances + 1))
    shapes = []
    for _ in range(n):
        cat = int(rng.choice(_THING_IDS))
        shapes.append((cat, _shape_mask(rng, cat, height, width, scale), _thing_colour(rng, cat)))
    keep = [True] * n
    changed = True
    while changed:
        changed = False
        covered = np.zeros((height, width), dtype=bool)
        for i in reversed(range(n)):
            if not keep[i]:
                continue
            full = shapes[i][1]
            visible = full & ~covered
            if visible.sum() < MIN_VISIBLE_FRACTION * full.sum():
                keep[i] = False
                changed = True
                break
            covered |= full
    shapes = [s for s, k in zip(shapes, keep) if k]

    image = np.zeros((height, width, 3), dtype=np.float64)
    for r, cat in enumerate(stuff_classes):
        tex = _stuff_texture(rng, cat, height, width)
        image[regions == r] = tex[regions == r]

    used: set[int] = set()

    def new_id() -> int:
        while True:
            seg = int(rng.integers(1, 256**3))
            if seg not in used:
                used.add(seg)
                return seg

    ids = np.zeros((height, width), dtype=np.int64)
    categories: dict[int, int] = {}
    for r, cat in enumerate(stuff_classes):
        seg = new_id()
        ids[regions == r] = seg
        categories[seg] = cat

    thing_ids = []
    for cat, full, colour in shapes:
        outline = full & ~ndimage.binary_erosion(full)
        shade = 1 + rng.normal(0, 0.04, (height, width, 1))
        image[full] = (colour * shade)[full]
        image[outline] = colour * 0.45
        seg = new_id()
        ids[full] = seg
        categories[seg] = cat
        thing_ids.append(seg)

    stuff_segs = {s for s, c in categories.items() if c in _STUFF_IDS}
    is_stuff = np.isin(ids, list(stuff_segs))
    for seg in thing_ids:
        if rng.random() < VOID_BAND_PROBABILITY:
            mask = ids == seg
            band = ndimage.binary_dilation(mask, iterations=2) & ~mask & is_stuff
            ids[band] = 0

    crowd: set[int] = set()
    present = [s for s in thing_ids if (ids == s).any()]
    if with_crowd and present:
        crowd.add(present[int(rng.integers(0, len(present)))])

    return np.clip(np.rint(image), 0, 255).astype(np.uint8), ids, categories, crowd


# --------------------------------------------------------------------------------------
# dataset writing


def _check_params(
    num_train: int, num_val: int, image_size: tuple[int, int], seed: int, max_instances: int
) -> tuple[int, int, tuple[int, int], int, int]:
    """Validate and normalise the generator arguments, naming the bad one."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if (
        isinstance(max_instances, bool)
        or not isinstance(max_instances, (int, np.integer))
        or max_instances < 1
    ):
        raise ValueError(f"max_instances must be a positive integer, got {max_instances!r}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if h < 48 or w < 48:
        raise ValueError(f"image_size must be at least (48, 48) so shapes fit, got {image_size!r}")
    return int(num_train), int(num_val), (h, w), int(seed), int(max_instances)


def _write_split(
    root: Path, split: str, count: int, image_size: tuple[int, int], seed: int, max_instances: int
) -> None:
    """Write ``root/split/{images,panoptic}/*.png`` and ``root/split/panoptic.json``."""
    height, width = image_size
    image_dir = root / split / "images"
    pan_dir = root / split / "panoptic"
    image_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
        with_crowd = index % CROWD_EVERY == CROWD_EVERY - 1
        image, ids, categories, crowd = _draw_image(rng, height, width, max_instances, with_crowd)
        image_id = index + 1
        stem = f"{image_id:06d}"
        Image.fromarray(image).save(image_dir / f"{stem}.png")
        Image.fromarray(id_to_rgb(ids)).save(pan_dir / f"{stem}.png")
        images.append(
            {"id": image_id, "file_name": f"{stem}.png", "height": height, "width": width}
        )
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{stem}.png",
                "segments_info": segments_from_id_map(ids, categories, crowd),
            }
        )
    doc = {
        "info": {
            "description": "lightning_seg synthetic shapes (COCO panoptic format)",
            "version": GENERATOR_VERSION,
            "split": split,
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": SYNTHETIC_CATEGORIES,
    }
    (root / split / "panoptic.json").write_text(json.dumps(doc, indent=1) + "\n")


def generate_synthetic_shapes(
    root: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    max_instances: int = 5,
) -> Path:
    """Write the synthetic shapes dataset under ``root`` (created if needed).

    Args:
        root: output folder; ``root/train`` and ``root/val`` are (over)written.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``(height, width)`` of every image, at least 48 x 48.
        seed: base seed; the same arguments give byte-identical files.
        max_instances: at most this many shapes are drawn per image (1 or more; occluded
            ones may be dropped).

    Returns:
        ``Path(root)``. Per split: ``images/NNNNNN.png`` (uint8 RGB ``[H, W, 3]``),
        ``panoptic/NNNNNN.png`` (RGB-encoded int ids, 0 = void) and ``panoptic.json`` with
        integer image ids ``1..num``, and :data:`SYNTHETIC_CATEGORIES` as categories.
    """
    num_train, num_val, image_size, seed, max_instances = _check_params(
        num_train, num_val, image_size, seed, max_instances
    )
    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(root, split, count, image_size, seed, max_instances)
    return root


# --------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """``$LIGHTNING_SEG_CACHE/synthetic_shapes``, or ``~/.cache/lightning_seg/synthetic_shapes``."""
    base = os.environ.get("LIGHTNING_SEG_CACHE")
    if base:
        return Path(base) / "synthetic_shapes"
    return Path.home() / ".cache" / "lightning_seg" / "synthetic_shapes"


def _marker_params(
    num_train: int, num_val: int, image_size: tuple[int, int], seed: int, max_instances: int
) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(image_size),
        "seed": seed,
        "max_instances": max_instances,
    }


def _is_complete(folder: Path, params: dict) -> bool:
    """Whether ``folder`` holds a finished generation made with ``params``."""
    try:
        return json.loads((folder / _MARKER_NAME).read_text()) == params
    except (OSError, json.JSONDecodeError):
        return False


def ensure_synthetic_shapes(root: str | os.PathLike | None = None, **params: Any) -> Path:
    """Return the folder of a synthetic dataset with ``params``, generating it when needed.

    The dataset lives in ``root/<hash of the parameters>``; a marker file written last records
    the parameters, and the folder is regenerated when the marker is missing or differs.
    Generation goes to a unique temporary folder beside the target, which is then renamed
    into place, so several processes (e.g. DDP ranks) may call this at once: the first rename
    wins and the others discard their copy.

    Args:
        root: cache folder; defaults to :func:`default_cache_dir`.
        **params: any of :func:`generate_synthetic_shapes`'s ``num_train``, ``num_val``,
            ``image_size``, ``seed``, ``max_instances``.

    Returns:
        The dataset folder, containing ``train/`` and ``val/``.
    """
    defaults = {
        "num_train": 200,
        "num_val": 50,
        "image_size": (128, 128),
        "seed": 0,
        "max_instances": 5,
    }
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(
            f"ensure_synthetic_shapes got unknown parameters {sorted(unknown)}; "
            f"known: {sorted(defaults)}"
        )
    values = _check_params(**{**defaults, **params})
    marker = _marker_params(*values)
    key = hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(root) if root is not None else default_cache_dir()
    target = base / key
    if _is_complete(target, marker):
        return target

    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=base))
    try:
        generate_synthetic_shapes(tmp, *values)
        (tmp / _MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
        if target.exists() and not _is_complete(target, marker):
            # A stale or half-deleted folder: move it aside first so the rename below can land.
            stale = Path(tempfile.mkdtemp(prefix=f".{key}.stale-", dir=base))
            try:
                os.rename(target, stale / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, marker):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
