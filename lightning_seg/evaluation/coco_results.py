"""COCO results files (instance segmentation submissions): RLE masks, scores, optional boxes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_seg.metrics.rle import masks_to_coco_rles
from lightning_seg.structures import DatasetMetadata, InstancePrediction, masks_to_boxes


def instance_prediction_to_coco_results(
    prediction: InstancePrediction,
    image_id: int,
    metadata: DatasetMetadata,
    with_boxes: bool = False,
) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries.

    A ``bbox`` is written for every detection when the prediction has ``boxes`` (the predicted
    ones), or when ``with_boxes`` is set (the boxes of the masks, :func:`masks_to_boxes`).

    Args:
        prediction: ``masks`` bool ``[M, H, W]``, ``labels`` int64 ``[M]`` (contiguous),
            ``scores`` float ``[M]``, optionally ``boxes`` float ``[M, 4]`` xyxy in pixels of
            the masks.
        image_id: the dataset's (integer) image id.
        metadata: maps contiguous labels back to dataset category ids.
        with_boxes: write the masks' boxes when the prediction has no ``boxes``.

    Returns:
        ``M`` dicts ``{"image_id", "category_id", "segmentation": RLE, "score"[, "bbox"]}``,
        ``bbox`` as COCO ``[x, y, w, h]``.
    """
    masks, labels, scores = prediction["masks"], prediction["labels"], prediction["scores"]
    boxes = prediction.get("boxes")
    if boxes is None and with_boxes:
        boxes = masks_to_boxes(masks.bool())
    m = labels.shape[0]
    if masks.shape[0] != m or scores.shape[0] != m:
        raise ValueError(f"image {image_id}: masks, labels and scores differ in length")
    if boxes is not None and tuple(boxes.shape) != (m, 4):
        raise ValueError(f"image {image_id}: boxes must be [{m}, 4], got {tuple(boxes.shape)}")
    labels_l = labels.tolist()
    bad = [k for k in labels_l if not 0 <= k < metadata.num_classes]
    if bad:
        raise ValueError(f"image {image_id}: labels {bad[:10]} outside [0, {metadata.num_classes})")
    fields: dict[str, list[Any]] = {
        "category_id": [metadata.category_ids[k] for k in labels_l],
        "segmentation": masks_to_coco_rles(masks.bool()),
        "score": [float(s) for s in scores.tolist()],
    }
    if boxes is not None:
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        fields["bbox"] = xywh.float().tolist()
    return [{"image_id": image_id, **dict(zip(fields, values))} for values in zip(*fields.values())]


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
