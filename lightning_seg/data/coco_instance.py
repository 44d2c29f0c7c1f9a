"""COCO instance format: polygons, uncompressed RLE and compressed RLE, with crowd flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from lightning_seg.data.base import Record, SegDataset, Transform, semantic_from_segments
from lightning_seg.data.io import DatasetError, load_coco_json, read_image, resolve_inside
from lightning_seg.structures import DatasetMetadata


def decode_segmentation(segm: Any, height: int, width: int, where: str = "annotation") -> np.ndarray:
    """Rasterise one COCO ``segmentation`` field.

    Args:
        segm: a list of polygons ``[[x0,y0,x1,y1,...], ...]``, an uncompressed RLE
            ``{"size": [h,w], "counts": [int,...]}`` or a compressed RLE (``counts`` a string).
        height, width: image size.
        where: description used in error messages.

    Returns:
        bool ``[height, width]`` mask.
    """
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if len(polys) != len(segm):
            raise DatasetError(f"{where}: polygon with fewer than 3 points")
        if not polys:
            raise DatasetError(f"{where}: empty polygon list")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise DatasetError(f"{where}: RLE size {segm['size']} differs from the image size {[height, width]}")
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            counts = segm["counts"]
            rle = {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise DatasetError(f"{where}: unsupported segmentation of type {type(segm).__name__}")
    return mask_utils.decode(rle).astype(bool)


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
        self.metadata = metadata or DatasetMetadata.from_coco_categories(data["categories"], src)
        anns_by_image: dict[Any, list[dict]] = {}
        images: dict[Any, dict] = {}
        for img in data["images"]:
            for key in ("id", "file_name", "height", "width"):
                if key not in img:
                    raise DatasetError(f"{src}: image entry without '{key}': {img}")
            images[img["id"]] = img
            anns_by_image[img["id"]] = []
        for ann in data["annotations"]:
            aid, iid = ann.get("id"), ann.get("image_id")
            if iid not in images:
                raise DatasetError(f"{src}: annotation {aid} refers to image_id {iid!r} with no 'images' entry")
            if not self.metadata.has_category(ann.get("category_id")):
                raise DatasetError(
                    f"{src}: annotation {aid} (image {iid}): unknown category_id {ann.get('category_id')}"
                )
            if "segmentation" not in ann:
                raise DatasetError(f"{src}: annotation {aid} (image {iid}) has no 'segmentation'")
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
