"""COCO results files (instance segmentation submissions): RLE masks, scores, optional boxes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_seg.metrics.rle import masks_to_coco_rles
from lightning_seg.structures import DatasetMetadata, InstancePrediction


def instance_prediction_to_coco_results(
    prediction: InstancePrediction,
    image_id: int,
    metadata: DatasetMetadata,
    with_boxes: bool = False,
) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries.

    Args:
        prediction: ``masks`` bool ``[M, H, W]``, ``labels`` int64 ``[M]`` (contiguous),
            ``scores`` float ``[M]``.
        image_id: the dataset's (integer) image id.
        metadata: maps contiguous labels back to dataset category ids.
        with_boxes: also write ``bbox`` ``[x, y, w, h]`` (the box of each mask).

    Returns:
        ``M`` dicts ``{"image_id", "category_id", "segmentation": RLE, "score"[, "bbox"]}``.
    """
    from pycocotools import mask as mask_util

    masks, labels, scores = prediction["masks"], prediction["labels"], prediction["scores"]
    if not (masks.shape[0] == labels.shape[0] == scores.shape[0]):
        raise ValueError(f"image {image_id}: masks, labels and scores differ in length")
    labels_l = labels.tolist()
    bad = [k for k in labels_l if not 0 <= k < metadata.num_classes]
    if bad:
        raise ValueError(f"image {image_id}: labels {bad[:10]} outside [0, {metadata.num_classes})")
    rles = masks_to_coco_rles(masks.bool())
    out = []
    for rle, k, s in zip(rles, labels_l, scores.tolist()):
        entry: dict[str, Any] = {
            "image_id": image_id,
            "category_id": metadata.category_ids[k],
            "segmentation": rle,
            "score": float(s),
        }
        if with_boxes:
            entry["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
        out.append(entry)
    return out


def write_coco_results(
    predictions: Sequence[InstancePrediction],
    image_ids: Sequence[int],
    metadata: DatasetMetadata,
    path: str | Path,
    with_boxes: bool = False,
) -> None:
    """Write all images' detections to one COCO results JSON (see
    :func:`instance_prediction_to_coco_results`)."""
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for pred, image_id in zip(predictions, image_ids):
        results.extend(instance_prediction_to_coco_results(pred, image_id, metadata, with_boxes))
    with Path(path).open("w") as f:
        json.dump(results, f)
