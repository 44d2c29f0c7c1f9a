"""Build ADE20K panoptic (COCO panoptic format) from SceneParsing + instance annotations.

Input, an ``ADEChallengeData2016`` folder::

    images/{training,validation}/*.jpg
    annotations/{training,validation}/*.png            semantic, uint8, 1..150, 0 = other
    annotations_instance/{training,validation}/*.png   RGB: R = instance class 1..100,
                                                       G = instance id (0 = none), B unused

Output, written inside the same folder (the layout of Mask2Former's ADE20K panoptic
preparation, so configs written for it find the files)::

    ade20k_panoptic_{train,val}.json
    ade20k_panoptic_{train,val}/*.png                  RGB-encoded segment ids, 0 = void

Rules, per image:

1. **stuff** comes from the semantic map: one segment per stuff class present
   (classes without instance annotations, see
   :data:`~lightning_seg.data.ade20k_categories.ADE20K_THING_CLASS_IDS`);
2. **things** come from the instance PNG: one segment per non-zero instance id (green
   channel), its class is the red channel mapped through
   :data:`~lightning_seg.data.ade20k_categories.ADE20K_INSTANCE_TO_SEMANTIC`; things are
   painted after stuff and win where the two annotations overlap;
3. **void** (id 0): class 0 ("other") and thing-class pixels of the semantic map that no
   instance covers.

Category ids in the JSON are ``0..149`` (SceneParsing class - 1), image ids are the file
stems (strings), every segment has ``iscrowd = 0``. Unlike Mask2Former's script, areas and
boxes are measured on the final PNG (after things overwrite stuff), so the JSON always
agrees with the pixels, and a stuff class entirely covered by things is left out. Segment ids
are deterministic: a stuff segment takes its category colour, a thing a nearby colour drawn
from a generator seeded by the file name.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lightning_seg.data.ade20k_categories import (
    ADE20K_150_COLORS,
    ADE20K_INSTANCE_TO_SEMANTIC,
    ADE20K_PANOPTIC_CATEGORIES,
    ADE20K_THING_CLASS_IDS,
)
from lightning_seg.data.io import id_to_rgb
from lightning_seg.data.synthetic import segments_from_id_map

SPLIT_FOLDERS = {"train": "training", "val": "validation"}
"""Output split name -> folder name inside ``images/``, ``annotations*/``."""

# Lookup tables indexed by the raw uint8 PNG values; -1 marks values that are not classes.
_SEMANTIC_IS_STUFF = np.zeros(256, dtype=bool)
_SEMANTIC_IS_STUFF[[c for c in range(1, 151) if c not in ADE20K_THING_CLASS_IDS]] = True
_INSTANCE_TO_CATEGORY = np.full(256, -1, dtype=np.int64)
for _inst, _sem in ADE20K_INSTANCE_TO_SEMANTIC.items():
    _INSTANCE_TO_CATEGORY[_inst] = _sem - 1


class _SegmentIds:
    """Hands out unique, non-zero segment ids for one image, colour-coded by category."""

    def __init__(self, seed_text: str) -> None:
        self._used: set[int] = {0}
        self._rng = np.random.default_rng(zlib.crc32(seed_text.encode()))

    def new(self, category_id: int, isthing: bool) -> int:
        base = np.array(ADE20K_150_COLORS[category_id], dtype=np.int64)
        color = base
        if isthing:
            color = np.clip(base + self._rng.integers(-30, 31, 3), 0, 255)
        while True:
            seg = int(color[0] + 256 * color[1] + 65536 * color[2])
            if seg not in self._used:
                self._used.add(seg)
                return seg
            color = np.clip(base + self._rng.integers(-30, 31, 3), 0, 255)


def panoptic_from_ade20k_arrays(
    semantic: np.ndarray, instance: np.ndarray, where: str = "image"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Merge one image's semantic and instance annotations into a panoptic id map.

    Args:
        semantic: uint8 ``[H, W]`` SceneParsing classes ``0..150`` (0 = other).
        instance: uint8 ``[H, W, 3]`` instance PNG (R = class ``1..100``, G = instance id).
        where: the image's name, used in error messages and to seed the segment ids.

    Returns:
        ``(ids, segments_info)``: int64 ``[H, W]`` segment ids (0 = void), and the COCO
        ``segments_info`` list (``id``, ``category_id`` in ``0..149``, ``iscrowd``, ``area``,
        ``bbox``), measured on ``ids``.

    Raises:
        ValueError: naming ``where`` on a shape mismatch, a semantic value above 150, an
            instance class outside ``1..100``, or an instance id spanning several classes.
    """
    semantic = np.asarray(semantic)
    instance = np.asarray(instance)
    if semantic.ndim != 2:
        raise ValueError(f"{where}: semantic map must be [H, W], got shape {semantic.shape}")
    if instance.ndim != 3 or instance.shape[2] < 2:
        raise ValueError(
            f"{where}: instance map must be [H, W, 3] (R = class, G = id), got {instance.shape}"
        )
    if instance.shape[:2] != semantic.shape:
        raise ValueError(
            f"{where}: instance map is {instance.shape[0]}x{instance.shape[1]} but the semantic "
            f"map is "
            f"{semantic.shape[0]}x{semantic.shape[1]} (HxW)"
        )
    if semantic.size and int(semantic.max()) > 150:
        bad = sorted(int(v) for v in np.unique(semantic[semantic > 150]))
        raise ValueError(f"{where}: semantic values {bad} are not ADE20K classes (0..150)")

    semantic = semantic.astype(np.int64)
    inst_class = instance[..., 0].astype(np.int64)
    inst_id = instance[..., 1].astype(np.int64)
    categories: dict[int, int] = {}
    allocator = _SegmentIds(where)

    # Lookup tables from raw PNG values to segment ids paint every segment in one pass.
    stuff_px = _SEMANTIC_IS_STUFF[semantic]
    stuff_segment = np.zeros(256, dtype=np.int64)
    for sem in np.unique(semantic[stuff_px]).tolist():
        stuff_segment[sem] = allocator.new(sem - 1, isthing=False)
        categories[int(stuff_segment[sem])] = sem - 1
    ids = np.where(stuff_px, stuff_segment[semantic], 0)

    thing_px = inst_id > 0
    pairs = np.unique(inst_id[thing_px] * 256 + inst_class[thing_px])
    pair_ids, pair_classes = pairs // 256, pairs % 256
    thing_segment = np.zeros(256, dtype=np.int64)
    for k, iid in enumerate(pair_ids.tolist()):
        if (pair_ids == iid).sum() > 1:
            raise ValueError(
                f"{where}: instance id {iid} spans several instance classes "
                f"{pair_classes[pair_ids == iid].tolist()}"
            )
        category = int(_INSTANCE_TO_CATEGORY[pair_classes[k]])
        if category < 0:
            raise ValueError(
                f"{where}: instance id {iid} has instance class {int(pair_classes[k])}, "
                "expected 1..100"
            )
        thing_segment[iid] = allocator.new(category, isthing=True)
        categories[int(thing_segment[iid])] = category
    ids = np.where(thing_px, thing_segment[inst_id], ids)

    return ids, segments_from_id_map(ids, categories)


def _read_png(path: Path, what: str) -> np.ndarray:
    """Read a PNG as stored (no palette or colour conversion), naming the file on failure."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            # No convert(): a palette PNG's indices are the labels, not its palette colours.
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read {what} ({e})") from e


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from e


def convert_ade20k_image(
    image_path: str | os.PathLike,
    semantic_path: str | os.PathLike,
    instance_path: str | os.PathLike,
    output_png: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert one image's annotations and write its panoptic PNG.

    Args:
        image_path: the ``.jpg`` (only its size is read).
        semantic_path: the SceneParsing annotation PNG (uint8 ``[H, W]``).
        instance_path: the instance annotation PNG (uint8 ``[H, W, 3]``).
        output_png: where to write the RGB-encoded panoptic PNG.

    Returns:
        The COCO ``images`` entry (``id`` = stem, ``file_name``, ``width``, ``height``) and the
        ``annotations`` entry (``image_id``, ``file_name``, ``segments_info``).

    Raises:
        FileNotFoundError: naming the missing annotation file.
        ValueError: naming the file whose size or content is inconsistent.
    """
    image_path, semantic_path, instance_path = (
        Path(image_path),
        Path(semantic_path),
        Path(instance_path),
    )
    output_png = Path(output_png)
    stem = image_path.stem
    height, width = _image_size(image_path)
    semantic = _read_png(semantic_path, "semantic annotation")
    instance = _read_png(instance_path, "instance annotation")
    if semantic.ndim != 2 or semantic.dtype != np.uint8:
        raise ValueError(
            f"{semantic_path}: expected a single-channel uint8 class PNG, "
            f"got {semantic.dtype} {semantic.shape}"
        )
    if instance.ndim != 3 or instance.shape[2] < 3 or instance.dtype != np.uint8:
        raise ValueError(
            f"{instance_path}: expected an RGB uint8 instance PNG, "
            f"got {instance.dtype} {instance.shape}"
        )
    for path, arr in ((semantic_path, semantic), (instance_path, instance)):
        if arr.shape[:2] != (height, width):
            raise ValueError(
                f"{path}: size {arr.shape[0]}x{arr.shape[1]} (HxW) differs from image {image_path} "
                f"({height}x{width})"
            )
    ids, segments = panoptic_from_ade20k_arrays(
        semantic, instance[..., :3], where=str(instance_path)
    )
    Image.fromarray(id_to_rgb(ids)).save(output_png)
    image_entry = {"id": stem, "file_name": image_path.name, "width": width, "height": height}
    annotation = {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments}
    return image_entry, annotation


def _convert_job(args: tuple[str, str, str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_ade20k_image(*args)


def convert_ade20k_split(
    root: str | os.PathLike,
    split: str,
    workers: int = 0,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> Path:
    """Build ``ade20k_panoptic_{split}.json`` and ``ade20k_panoptic_{split}/`` inside ``root``.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"train"`` (reads ``training/``) or ``"val"`` (reads ``validation/``).
        workers: processes used for the per-image work (0 = in this process).
        progress: optional wrapper ``progress(iterable, total)`` for a progress bar.

    Returns:
        Path of the written JSON. Images are processed in sorted file-name order.

    Raises:
        FileNotFoundError: naming a missing folder or annotation PNG.
        ValueError: naming a file with a size mismatch or invalid values.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    root = Path(root)
    folder = SPLIT_FOLDERS[split]
    image_dir = root / "images" / folder
    semantic_dir = root / "annotations" / folder
    instance_dir = root / "annotations_instance" / folder
    for d in (image_dir, semantic_dir, instance_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"ADE20K folder not found: {d}")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no .jpg images in {image_dir}")
    out_dir = root / f"ade20k_panoptic_{split}"
    out_dir.mkdir(exist_ok=True)

    jobs = [
        (
            str(p),
            str(semantic_dir / f"{p.stem}.png"),
            str(instance_dir / f"{p.stem}.png"),
            str(out_dir / f"{p.stem}.png"),
        )
        for p in images
    ]
    # Missing files are reported before any work starts, not after hours of conversion.
    for _, sem, inst, _ in jobs:
        for path, what in ((sem, "semantic annotation"), (inst, "instance annotation")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{what} not found: {path}")

    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results_iter: Iterable[Any] = pool.map(_convert_job, jobs, chunksize=16)
            if progress is not None:
                results_iter = progress(results_iter, len(jobs))
            results = list(results_iter)
    else:
        results_iter = map(_convert_job, jobs)
        if progress is not None:
            results_iter = progress(results_iter, len(jobs))
        results = list(results_iter)

    doc = {
        "info": {"description": "ADE20K panoptic built from SceneParsing and instance annotations"},
        "images": [r[0] for r in results],
        "annotations": [r[1] for r in results],
        "categories": ADE20K_PANOPTIC_CATEGORIES,
    }
    out_json = root / f"ade20k_panoptic_{split}.json"
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out_json)
    return out_json


def prepare_ade20k_panoptic(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    workers: int = 0,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> dict[str, Path]:
    """Run :func:`convert_ade20k_split` for each split; returns ``{split: json path}``."""
    return {
        split: convert_ade20k_split(root, split, workers=workers, progress=progress)
        for split in splits
    }
