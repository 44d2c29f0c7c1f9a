"""COCO instance format: polygons, uncompressed RLE and compressed RLE, with crowd flags."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from lightning_seg.data.base import (
    Record,
    SegDataset,
    Transform,
    semantic_from_segments,
)
from lightning_seg.data.io import (
    DatasetError,
    load_coco_json,
    read_image,
    resolve_inside,
)
from lightning_seg.structures import DatasetMetadata

# compressed RLE counts (pycocotools ``rleToString``) use the characters chr(48)..chr(111) only
_COMPRESSED_RLE_CHARS = re.compile(r"[0-o]*")


def _is_int(value: Any) -> bool:
    # JSON true/false load as bool, a subclass of int, and are never a valid id or size
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compressed_rle_counts(counts: str, where: str) -> list[int]:
    """Parse a compressed RLE ``counts`` string into its run lengths without decoding the mask.

    Mirrors pycocotools ``rleFrString``, which reads past the end of a truncated string and
    accepts negative runs, so a malformed string is caught here rather than in the C code.
    """
    if _COMPRESSED_RLE_CHARS.fullmatch(counts) is None:
        raise DatasetError(f"{where}: RLE 'counts' string has characters outside the compressed RLE alphabet")
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise DatasetError(f"{where}: RLE 'counts' string is truncated")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_polygons(segm: list, where: str) -> None:
    if not segm:
        raise DatasetError(f"{where}: empty polygon list")
    for k, poly in enumerate(segm):
        if not isinstance(poly, list):
            raise DatasetError(
                f"{where}: 'segmentation' polygon {k} is a {type(poly).__name__}, not a list of coordinates"
            )
        if len(poly) % 2:
            raise DatasetError(f"{where}: 'segmentation' polygon {k} has an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise DatasetError(f"{where}: polygon with fewer than 3 points (polygon {k}, {len(poly)} coordinates)")
        # one C-level sum per polygon instead of a Python test per coordinate: COCO train has
        # tens of millions of coordinates, and any NaN or Infinity makes the sum non-finite
        try:
            total = sum(poly)
        except TypeError:
            raise DatasetError(f"{where}: 'segmentation' polygon {k} has non-numeric coordinates") from None
        if not isinstance(total, (int, float)) or not math.isfinite(total):
            raise DatasetError(f"{where}: 'segmentation' polygon {k} has non-finite coordinates (NaN or Infinity)")


def _check_rle(segm: dict, height: int, width: int, where: str) -> None:
    size, counts = segm["size"], segm["counts"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
        raise DatasetError(f"{where}: RLE 'size' must be [height, width] non-negative integers, got {size!r}")
    if list(size) != [height, width]:
        raise DatasetError(f"{where}: RLE size {size} differs from the image size {[height, width]}")
    if isinstance(counts, list):
        runs = counts
        # C-level sum and min rather than a test per run: crowd RLEs have thousands of runs
        try:
            total = sum(runs)
        except TypeError:
            total = None
        if not isinstance(total, int):
            raise DatasetError(f"{where}: RLE 'counts' list has non-integer entries")
    elif isinstance(counts, str):
        runs = _compressed_rle_counts(counts, where)
        total = sum(runs)
    else:
        raise DatasetError(
            f"{where}: RLE 'counts' must be a list of run lengths or a compressed string, "
            f"got {type(counts).__name__}"
        )
    if runs and min(runs) < 0:
        raise DatasetError(f"{where}: RLE 'counts' has negative run lengths")
    # pycocotools leaves the pixels past too short runs uninitialised (garbage masks) and
    # rejects too long ones without naming the file
    if total != height * width:
        raise DatasetError(
            f"{where}: RLE 'counts' cover {total} pixels, the size {[height, width]} has {height * width}"
        )


def check_segmentation(segm: Any, height: int, width: int, where: str = "annotation") -> None:
    """Check one COCO ``segmentation`` field without rasterising it.

    Polygons must be non-empty lists of an even number (at least 6) of finite numbers; an RLE
    must have ``size == [height, width]`` and ``counts`` (run lengths or a compressed string)
    covering exactly ``height * width`` pixels.

    Args:
        segm: the ``segmentation`` value (see :func:`decode_segmentation`).
        height, width: image size.
        where: description used in error messages (file, annotation and image ids).

    Raises:
        DatasetError: naming ``where`` and what is malformed.
    """
    if isinstance(segm, list):
        _check_polygons(segm, where)
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        _check_rle(segm, height, width, where)
    else:
        raise DatasetError(f"{where}: unsupported segmentation of type {type(segm).__name__}")


def decode_segmentation(segm: Any, height: int, width: int, where: str = "annotation") -> np.ndarray:
    """Rasterise one COCO ``segmentation`` field.

    Args:
        segm: a list of polygons ``[[x0,y0,x1,y1,...], ...]``, an uncompressed RLE
            ``{"size": [h,w], "counts": [int,...]}`` or a compressed RLE (``counts`` a string).
        height, width: image size.
        where: description used in error messages.

    Returns:
        bool ``[height, width]`` mask.

    Raises:
        DatasetError: if ``segm`` is malformed (see :func:`check_segmentation`).
    """
    # callers outside the dataset get no load-time validation, and pycocotools does not check runs
    check_segmentation(segm, height, width, where)
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = {"size": segm["size"], "counts": segm["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def check_coco_categories(categories: list, src: str) -> None:
    """Check a COCO ``categories`` list: each entry a dict with an integer ``id`` and a ``name``.

    Args:
        categories: the JSON's ``categories``.
        src: the annotation file, named in errors.

    Raises:
        DatasetError: on a missing or malformed ``id`` / ``name`` / ``isthing`` or a duplicate id.
    """
    seen: set[int] = set()
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict):
            raise DatasetError(f"{src}: categories[{k}] is a {type(cat).__name__}, not a category dict")
        if "id" not in cat:
            raise DatasetError(f"{src}: categories[{k}]: category without 'id': {cat}")
        cid = cat["id"]
        if not _is_int(cid):
            raise DatasetError(f"{src}: categories[{k}]: category 'id' must be an integer, got {cid!r}")
        if "name" not in cat:
            raise DatasetError(f"{src}: category {cid}: category without 'name': {cat}")
        if not isinstance(cat["name"], str):
            raise DatasetError(f"{src}: category {cid}: 'name' must be a string, got {cat['name']!r}")
        if "isthing" in cat and cat["isthing"] not in (0, 1):
            raise DatasetError(f"{src}: category {cid}: 'isthing' must be 0 or 1, got {cat['isthing']!r}")
        if cid in seen:
            raise DatasetError(f"{src}: category {cid}: duplicate category 'id' in 'categories'")
        seen.add(cid)


def check_coco_images(images: list, src: str) -> dict[Any, dict]:
    """Check a COCO ``images`` list and index it by id.

    Args:
        images: the JSON's ``images``.
        src: the annotation file, named in errors.

    Returns:
        ``{image id: image entry}`` in file order.

    Raises:
        DatasetError: on a missing or malformed ``id`` / ``file_name`` / ``height`` / ``width``,
            an id listed twice or a file name listed under two ids.
    """
    by_id: dict[Any, dict] = {}
    by_file: dict[str, Any] = {}
    for img in images:
        if not isinstance(img, dict):
            raise DatasetError(f"{src}: image entry is a {type(img).__name__}, not a dict: {img!r}")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise DatasetError(f"{src}: image entry without '{key}': {img}")
        iid = img["id"]
        if not (_is_int(iid) or isinstance(iid, str)):
            raise DatasetError(f"{src}: image 'id' must be an integer or a string, got {iid!r}")
        for key in ("height", "width"):
            if not _is_int(img[key]) or img[key] <= 0:
                raise DatasetError(f"{src}: image {iid}: '{key}' must be a positive integer, got {img[key]!r}")
        if not isinstance(img["file_name"], str):
            raise DatasetError(f"{src}: image {iid}: 'file_name' must be a string, got {img['file_name']!r}")
        if iid in by_id:
            raise DatasetError(f"{src}: image {iid}: image 'id' appears twice in 'images'")
        # normalised so that "a.jpg" and "./a.jpg" count as the same file
        fname = os.path.normpath(img["file_name"])
        if fname in by_file:
            raise DatasetError(
                f"{src}: image {iid}: 'file_name' {img['file_name']!r} is also the file of image {by_file[fname]}"
            )
        by_id[iid] = img
        by_file[fname] = iid
    return by_id


def _check_box(ann: dict, where: str) -> None:
    bbox = ann["bbox"]
    # one sum instead of a test per value, as for polygons: any NaN or Infinity makes it non-finite
    try:
        total = sum(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
    except TypeError:
        total = None
    if total is None:
        raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}")
    if not isinstance(total, (int, float)) or not math.isfinite(total):
        raise DatasetError(f"{where}: 'bbox' has non-finite values {bbox}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DatasetError(f"{where}: 'bbox' has a negative width or height {bbox}")


def check_coco_annotation(
    ann: Any, index: int, images: dict[Any, dict], metadata: DatasetMetadata, src: str
) -> None:
    """Check one COCO instance annotation against the images and classes, without rasterising it.

    Args:
        ann: one entry of the JSON's ``annotations``.
        index: its position in ``annotations`` (names an annotation that has no ``id``).
        images: ``{image id: image entry}`` (see :func:`check_coco_images`).
        metadata: the dataset's classes; ``category_id`` must be one of them.
        src: the annotation file, named in errors.

    Raises:
        DatasetError: naming the file, annotation id, image id and the malformed field.
    """
    if not isinstance(ann, dict):
        raise DatasetError(f"{src}: annotations[{index}] is a {type(ann).__name__}, not an annotation dict")
    aid = ann.get("id")
    if aid is not None and not (_is_int(aid) or isinstance(aid, str)):
        raise DatasetError(f"{src}: annotations[{index}]: annotation 'id' must be an integer or a string, got {aid!r}")
    name = f"annotation {aid}" if aid is not None else f"annotations[{index}] (no 'id')"
    if "image_id" not in ann:
        raise DatasetError(f"{src}: {name} has no 'image_id'")
    iid = ann["image_id"]
    if not (_is_int(iid) or isinstance(iid, str)) or iid not in images:
        raise DatasetError(f"{src}: {name} refers to image_id {iid!r} with no 'images' entry")
    where = f"{src}: {name} (image {iid})"
    if "category_id" not in ann:
        raise DatasetError(f"{where} has no 'category_id'")
    cid = ann["category_id"]
    if not _is_int(cid) or not metadata.has_category(cid):
        raise DatasetError(f"{where}: unknown category_id {cid!r}")
    if "segmentation" not in ann:
        raise DatasetError(f"{where} has no 'segmentation'")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
    if "bbox" in ann:
        _check_box(ann, where)
    if "area" in ann:
        area = ann["area"]
        if not _is_number(area) or not math.isfinite(area) or area < 0:
            raise DatasetError(f"{where}: 'area' must be a finite non-negative number, got {area!r}")
    img = images[iid]
    check_segmentation(ann["segmentation"], img["height"], img["width"], where)


class CocoInstanceDataset(SegDataset):
    """A COCO instances JSON (``instances_*.json``) read into the sample contract.

    Each annotation becomes one thing segment; the semantic map paints instances in annotation
    order, everything else is void (an instance-only source knows nothing of stuff).

    Args:
        json_file: the instances JSON.
        image_dir: folder of the images (``images[*].file_name``).
        transform: augmentation applied to each record.
        filter_empty: drop images with no annotation (what detectron2 does for training).
        include_crowd: keep ``iscrowd=1`` annotations (flagged in ``iscrowd``).
        check_files: check on construction that every image exists.
        metadata: use these classes instead of the JSON's ``categories``.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_dir: str | Path,
        transform: Transform | None = None,
        filter_empty: bool = False,
        include_crowd: bool = True,
        check_files: bool = True,
        metadata: DatasetMetadata | None = None,
    ) -> None:
        super().__init__(transform)
        self.json_file = Path(json_file)
        self.image_dir = Path(image_dir)
        data = load_coco_json(self.json_file, "COCO")
        src = str(self.json_file)
        # the JSON's own classes are checked even when ``metadata`` replaces them: the datamodule
        # always passes the val metadata, which would leave a malformed train file unchecked
        check_coco_categories(data["categories"], src)
        self.metadata = metadata or DatasetMetadata.from_coco_categories(data["categories"], src)
        images = check_coco_images(data["images"], src)
        anns_by_image: dict[Any, list[dict]] = {iid: [] for iid in images}
        ann_image: dict[Any, Any] = {}
        for k, ann in enumerate(data["annotations"]):
            check_coco_annotation(ann, k, images, self.metadata, src)
            aid, iid = ann.get("id"), ann["image_id"]
            if aid is not None:
                if aid in ann_image:
                    raise DatasetError(
                        f"{src}: annotation {aid} (image {iid}): duplicate annotation 'id' "
                        f"(also used by an annotation of image {ann_image[aid]})"
                    )
                ann_image[aid] = iid
            if not include_crowd and ann.get("iscrowd", 0):
                continue
            anns_by_image[iid].append(ann)
        self.items = []
        for iid, img in images.items():
            if filter_empty and not anns_by_image[iid]:
                continue
            path = resolve_inside(self.image_dir, img["file_name"], f"{src}: image {iid}")
            if check_files and not path.is_file():
                raise DatasetError(f"{src}: image {iid}: image file not found: {path}")
            self.items.append({"image": img, "path": path, "anns": anns_by_image[iid]})

    def __len__(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> Any:
        return self.items[index]["image"]["id"]

    def load_record(self, index: int) -> Record:
        item = self.items[index]
        img = item["image"]
        image = read_image(item["path"])
        h, w = image.shape[:2]
        if (h, w) != (img["height"], img["width"]):
            raise DatasetError(
                f"{item['path']}: image size {(h, w)} differs from the JSON's {(img['height'], img['width'])}"
            )
        masks, labels, crowd = self.annotation_masks(index)
        return Record(
            image=image,
            masks=masks,
            labels=labels,
            iscrowd=crowd,
            is_thing=np.asarray([self.metadata.is_thing[c] for c in labels], dtype=bool),
            semantic=semantic_from_segments(masks, labels, (h, w)),
            image_id=img["id"],
            orig_size=(h, w),
        )

    def annotation_masks(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rasterised annotations of item ``index`` without reading the image.

        Returns:
            ``masks`` bool ``[N,H,W]``, ``labels`` int64 ``[N]``, ``iscrowd`` bool ``[N]``.
        """
        item = self.items[index]
        img = item["image"]
        h, w = img["height"], img["width"]
        masks = np.zeros((len(item["anns"]), h, w), dtype=bool)
        for k, ann in enumerate(item["anns"]):
            where = f"{self.json_file}: annotation {ann.get('id')} (image {img['id']})"
            masks[k] = decode_segmentation(ann["segmentation"], h, w, where)
        labels = np.asarray([self.metadata.contiguous_id(a["category_id"]) for a in item["anns"]], dtype=np.int64)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in item["anns"]], dtype=bool)
        return masks, labels, crowd
