"""COCO panoptic format: a JSON with ``segments_info`` per image plus RGB-id-encoded PNGs.

The same reader serves COCO panoptic, ADE20K panoptic (prepared into this format), the
synthetic shapes set and any custom dataset written in the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightning_seg.data.base import Record, SegDataset, Transform, semantic_from_segments
from lightning_seg.data.io import (
    DatasetError,
    load_coco_json,
    read_image,
    read_panoptic_png,
    resolve_inside,
)
from lightning_seg.structures import DatasetMetadata


class CocoPanopticDataset(SegDataset):
    """A COCO-panoptic-format dataset.

    Each item has one mask per segment of the PNG (things, stuff and crowd regions), the
    contiguous class id of each, and the semantic map painted from all segments (void = 0 in the
    PNG becomes ``ignore_index``).

    The JSON is validated on construction (categories, image entries, segment ids, file names
    inside their folders, files present); each PNG is checked against its ``segments_info`` when
    loaded: an id in one and not the other, or a size that differs from the image, raises
    :class:`~lightning_seg.data.io.DatasetError` naming the file and the segment id.

    Args:
        json_file: the panoptic JSON (``images``, ``annotations``, ``categories`` with
            ``isthing``).
        image_dir: folder of the images (``images[*].file_name``).
        panoptic_dir: folder of the PNGs (``annotations[*].file_name``).
        transform: augmentation applied to each :class:`~lightning_seg.data.base.Record`.
        check_files: check on construction that every image and PNG exists.
        metadata: use these classes instead of the JSON's ``categories`` (every category id
            used by a segment must be in it).
    """

    def __init__(
        self,
        json_file: str | Path,
        image_dir: str | Path,
        panoptic_dir: str | Path,
        transform: Transform | None = None,
        check_files: bool = True,
        metadata: DatasetMetadata | None = None,
    ) -> None:
        super().__init__(transform)
        self.json_file = Path(json_file)
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        data = load_coco_json(self.json_file, "COCO panoptic")
        src = str(self.json_file)
        self.metadata = metadata or DatasetMetadata.from_coco_categories(data["categories"], src)
        images = {}
        for img in data["images"]:
            if "id" not in img or "file_name" not in img:
                raise DatasetError(f"{src}: image entry without 'id' or 'file_name': {img}")
            images[img["id"]] = img
        self.items: list[dict[str, Any]] = []
        for ann in data["annotations"]:
            self.items.append(self._validate_annotation(ann, images, src, check_files))

    def _validate_annotation(
        self, ann: dict[str, Any], images: dict[Any, dict], src: str, check_files: bool
    ) -> dict[str, Any]:
        image_id = ann.get("image_id")
        if image_id not in images:
            raise DatasetError(f"{src}: annotation for image_id {image_id!r} has no 'images' entry")
        if "file_name" not in ann or "segments_info" not in ann:
            raise DatasetError(f"{src}: annotation of image {image_id} lacks 'file_name' or 'segments_info'")
        img = images[image_id]
        image_path = resolve_inside(self.image_dir, img["file_name"], f"{src}: image {image_id}")
        png_path = resolve_inside(self.panoptic_dir, ann["file_name"], f"{src}: image {image_id}")
        if check_files:
            if not image_path.is_file():
                raise DatasetError(f"{src}: image {image_id}: image file not found: {image_path}")
            if not png_path.is_file():
                raise DatasetError(f"{src}: image {image_id}: panoptic PNG not found: {png_path}")
        seg_ids, labels, crowd = [], [], []
        for seg in ann["segments_info"]:
            sid, cid = seg.get("id"), seg.get("category_id")
            if sid is None or cid is None:
                raise DatasetError(f"{src}: image {image_id}: segment without 'id' or 'category_id': {seg}")
            if sid == 0:
                raise DatasetError(f"{src}: image {image_id}: segment id 0 is reserved for void")
            if not self.metadata.has_category(cid):
                raise DatasetError(
                    f"{src}: image {image_id} ({ann['file_name']}), segment {sid}: "
                    f"unknown category_id {cid}"
                )
            seg_ids.append(int(sid))
            labels.append(self.metadata.contiguous_id(cid))
            crowd.append(bool(seg.get("iscrowd", 0)))
        if len(set(seg_ids)) != len(seg_ids):
            raise DatasetError(f"{src}: image {image_id} ({ann['file_name']}): duplicate segment ids {seg_ids}")
        return {
            "image_id": image_id,
            "image_path": image_path,
            "png_path": png_path,
            "size": (img.get("height"), img.get("width")),
            "segment_ids": np.asarray(seg_ids, dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
            "iscrowd": np.asarray(crowd, dtype=bool),
        }

    def __len__(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> Any:
        return self.items[index]["image_id"]

    def load_record(self, index: int) -> Record:
        item = self.items[index]
        image = read_image(item["image_path"])
        ids = read_panoptic_png(item["png_path"])
        h, w = image.shape[:2]
        if ids.shape != (h, w):
            raise DatasetError(
                f"{item['png_path']}: PNG size {ids.shape} differs from image "
                f"{item['image_path'].name} size {(h, w)}"
            )
        jh, jw = item["size"]
        if jh is not None and jw is not None and (jh, jw) != (h, w):
            raise DatasetError(
                f"{item['image_path']}: image size {(h, w)} differs from the JSON's {(jh, jw)}"
            )
        masks = self._segment_masks(ids, item)
        labels = item["labels"]
        return Record(
            image=image,
            masks=masks,
            labels=labels,
            iscrowd=item["iscrowd"],
            is_thing=np.asarray([self.metadata.is_thing[c] for c in labels], dtype=bool),
            semantic=semantic_from_segments(masks, labels, (h, w)),
            image_id=item["image_id"],
            orig_size=(h, w),
        )

    @staticmethod
    def _segment_masks(ids: np.ndarray, item: dict[str, Any]) -> np.ndarray:
        """bool ``[N,H,W]`` masks in ``segments_info`` order; PNG and JSON must agree."""
        present, inverse = np.unique(ids, return_inverse=True)
        present_set = set(present.tolist()) - {0}
        listed = item["segment_ids"]
        listed_set = set(listed.tolist())
        missing = sorted(listed_set - present_set)
        if missing:
            raise DatasetError(
                f"{item['png_path']}: segments {missing} of image {item['image_id']} are in the JSON "
                "but have no pixels in the PNG"
            )
        extra = sorted(present_set - listed_set)
        if extra:
            raise DatasetError(
                f"{item['png_path']}: ids {extra} appear in the PNG but not in the JSON's "
                f"segments_info of image {item['image_id']}"
            )
        slot = np.searchsorted(present, listed)
        inverse = inverse.reshape(ids.shape)
        return inverse[None] == slot[:, None, None]
