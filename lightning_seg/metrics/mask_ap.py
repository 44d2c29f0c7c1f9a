"""Instance mask and box AP (COCO protocol), with predictions kept and gathered as run lengths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_seg.metrics.coco_eval import COCO_STAT_NAMES, Backend, coco_evaluate
from lightning_seg.metrics.rle import encode_runs, runs_to_coco
from lightning_seg.structures import masks_to_boxes

_STATES = (
    "image_hw",
    "det_count",
    "gt_count",
    "det_runs",
    "det_num_runs",
    "det_labels",
    "det_scores",
    "gt_runs",
    "gt_num_runs",
    "gt_labels",
    "gt_crowd",
)


class MaskAP(Metric):
    """COCO mask and box AP / AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l).

    Masks never stay dense: each batch's predicted and ground-truth masks are run-length
    encoded on their device (:func:`~lightning_seg.metrics.rle.encode_runs`) and only the run
    lengths, labels and scores are kept, in concatenated (``"cat"``) states that torchmetrics
    gathers across processes with one collective each. The images' order is preserved per
    process, and the per-image detection / ground-truth counts re-associate everything after
    gathering. ``compute`` builds COCO dicts and runs COCOeval.

    With ``"bbox"`` in ``iou_types`` the detections' boxes are kept too (float32 ``[D, 4]``
    xyxy, one more ``"cat"`` state): a prediction's ``boxes`` when it has them, else the boxes
    of its masks (:func:`~lightning_seg.structures.masks_to_boxes`). Ground-truth boxes are
    those of the ground-truth masks.

    Ground-truth ``area`` is the mask's pixel count (COCO's own JSON stores polygon areas, which
    differ slightly; the offline evaluator scores files with their stored areas).

    Args:
        num_classes: number of contiguous classes ``K``.
        iou_types: ``"segm"`` (masks) and/or ``"bbox"`` (predicted boxes, or the masks' boxes
            for predictions without ``boxes``).
        backend: ``"faster_coco_eval"`` or ``"pycocotools"``.
        max_detections: keep the top-scoring detections per image (COCO scores 100).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        num_classes: int,
        iou_types: Sequence[Literal["segm", "bbox"]] = ("segm",),
        backend: Backend = "faster_coco_eval",
        max_detections: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for t in iou_types:
            if t not in ("segm", "bbox"):
                raise ValueError(f"iou_types entries must be 'segm' or 'bbox', got {t!r}")
        if backend not in ("faster_coco_eval", "pycocotools"):
            raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
        self.num_classes = num_classes
        self.iou_types = tuple(iou_types)
        self.backend = backend
        self.max_detections = max_detections
        for name in _STATES + (("det_boxes",) if "bbox" in self.iou_types else ()):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, preds: Sequence[Mapping[str, torch.Tensor]], target: Sequence[Mapping[str, Any]]
    ) -> None:
        """Accumulate a batch.

        Args:
            preds: per image an :class:`~lightning_seg.structures.InstancePrediction`: ``masks``
                bool ``[M, H, W]``, ``labels`` int64 ``[M]``, ``scores`` float ``[M]`` and
                optionally ``boxes`` float ``[M, 4]`` xyxy in pixels of the masks (used for
                ``bbox`` AP).
            target: per image ``masks`` bool ``[N, H', W']`` (cropped to ``image_size`` when
                given, else to the prediction's size), ``labels`` int64 ``[N]`` and optionally
                ``iscrowd`` bool ``[N]``.
        """
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions but {len(target)} targets")
        if len(preds) == 0:
            return
        hw, det_count, gt_count = [], [], []
        det_masks, det_labels, det_scores, det_boxes = [], [], [], []
        gt_masks, gt_labels, gt_crowd = [], [], []
        for i, (p, t) in enumerate(zip(preds, target)):
            masks = p["masks"]
            h, w = masks.shape[-2:]
            gm = t["masks"][:, :h, :w]
            if tuple(gm.shape[-2:]) != (h, w):
                raise ValueError(
                    f"image {i} of the batch: prediction masks are {h}x{w} but target masks "
                    f"{tuple(t['masks'].shape[-2:])}"
                )
            if "image_size" in t and tuple(t["image_size"]) != (h, w):
                raise ValueError(
                    f"image {i} of the batch: prediction is {h}x{w}, image_size is {t['image_size']}"
                )
            scores, labels = p["scores"], p["labels"]
            if not (masks.shape[0] == scores.shape[0] == labels.shape[0]):
                raise ValueError(f"image {i} of the batch: masks, labels and scores differ in length")
            boxes = p.get("boxes")
            if boxes is not None and tuple(boxes.shape) != (masks.shape[0], 4):
                raise ValueError(
                    f"image {i} of the batch: boxes must be [{masks.shape[0]}, 4], got {tuple(boxes.shape)}"
                )
            for side, lab in (("predicted", labels), ("target", t["labels"])):
                if lab.numel() and bool(((lab < 0) | (lab >= self.num_classes)).any()):
                    raise ValueError(
                        f"image {i} of the batch: {side} labels {lab.tolist()[:10]} outside "
                        f"[0, {self.num_classes})"
                    )
            if masks.shape[0] > self.max_detections:
                keep = torch.topk(scores, self.max_detections).indices
                masks, scores, labels = masks[keep], scores[keep], labels[keep]
                boxes = None if boxes is None else boxes[keep]
            if "bbox" in self.iou_types:
                det_boxes.append(masks_to_boxes(masks.bool()) if boxes is None else boxes.float())
            hw.append((h, w))
            det_count.append(masks.shape[0])
            gt_count.append(gm.shape[0])
            det_masks.append(masks.bool().reshape(-1, h * w))
            det_labels.append(labels.long())
            det_scores.append(scores.float())
            gt_masks.append(gm.bool().reshape(-1, h * w))
            gt_labels.append(t["labels"].long())
            crowd = t.get("iscrowd")
            if crowd is None:
                crowd = torch.zeros(gm.shape[0], dtype=torch.bool, device=gm.device)
            gt_crowd.append(crowd.bool())
        device = self.device
        for name, sizes, masks_list, dst_runs, dst_num in (
            ("det", hw, det_masks, self.det_runs, self.det_num_runs),
            ("gt", hw, gt_masks, self.gt_runs, self.gt_num_runs),
        ):
            runs, num = self._encode(masks_list, sizes)
            dst_runs.append(runs.to(device))
            dst_num.append(num.to(device))
        self.image_hw.append(torch.tensor(hw, dtype=torch.int64, device=device).reshape(-1, 2))
        self.det_count.append(torch.tensor(det_count, dtype=torch.int64, device=device))
        self.gt_count.append(torch.tensor(gt_count, dtype=torch.int64, device=device))
        self.det_labels.append(torch.cat(det_labels).to(device))
        self.det_scores.append(torch.cat(det_scores).to(device))
        if "bbox" in self.iou_types:
            self.det_boxes.append(torch.cat(det_boxes).to(device))
        self.gt_labels.append(torch.cat(gt_labels).to(device))
        self.gt_crowd.append(torch.cat(gt_crowd).to(device=device, dtype=torch.uint8))

    @staticmethod
    def _encode(
        flat_masks: list[torch.Tensor], sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run lengths of every mask of every image (images may differ in size)."""
        runs, nums = [], []
        for flat, (h, w) in zip(flat_masks, sizes):
            r, n = encode_runs(flat.reshape(-1, h, w))
            runs.append(r)
            nums.append(n)
        return torch.cat(runs), torch.cat(nums)

    def _coco_dicts(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """COCO ground truth and results rebuilt from the (gathered) states.

        Results carry ``segmentation`` (RLE) and, with ``"bbox"`` in ``iou_types``, ``bbox``
        ``[x, y, w, h]`` from the kept detection boxes; ground truth carries both, the box being
        the mask's.
        """
        from pycocotools import mask as mask_util

        def cat(name: str) -> np.ndarray:
            value = getattr(self, name)
            tensor = dim_zero_cat(value) if isinstance(value, list) else value
            return tensor.cpu().numpy()

        if isinstance(self.image_hw, list) and not self.image_hw:
            raise RuntimeError("MaskAP.compute called before any update")
        hw = cat("image_hw").reshape(-1, 2)
        det_count, gt_count = cat("det_count"), cat("gt_count")
        det_runs, det_num = cat("det_runs"), cat("det_num_runs")
        gt_runs, gt_num = cat("gt_runs"), cat("gt_num_runs")
        det_labels, det_scores = cat("det_labels"), cat("det_scores")
        gt_labels, gt_crowd = cat("gt_labels"), cat("gt_crowd")
        det_xywh = None
        if "bbox" in self.iou_types:
            boxes = cat("det_boxes").reshape(-1, 4).astype(np.float64)
            det_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        det_bounds = np.concatenate([[0], np.cumsum(det_num)])
        gt_bounds = np.concatenate([[0], np.cumsum(gt_num)])
        det_image = np.repeat(np.arange(len(hw)), det_count)
        gt_image = np.repeat(np.arange(len(hw)), gt_count)
        images = [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(hw)]
        # COCO category ids are 1-based by habit of both tools; contiguous id k -> k + 1.
        categories = [{"id": k + 1, "name": str(k)} for k in range(self.num_classes)]
        annotations = []
        for j in range(len(gt_labels)):
            h, w = hw[gt_image[j]]
            rle = runs_to_coco(gt_runs[gt_bounds[j] : gt_bounds[j + 1]], int(h), int(w))
            annotations.append(
                {
                    "id": j + 1,
                    "image_id": int(gt_image[j]) + 1,
                    "category_id": int(gt_labels[j]) + 1,
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": int(gt_crowd[j]),
                }
            )
        results = []
        for j in range(len(det_labels)):
            h, w = hw[det_image[j]]
            rle = runs_to_coco(det_runs[det_bounds[j] : det_bounds[j + 1]], int(h), int(w))
            result = {
                "image_id": int(det_image[j]) + 1,
                "category_id": int(det_labels[j]) + 1,
                "segmentation": rle,
                "score": float(det_scores[j]),
            }
            if det_xywh is not None:
                result["bbox"] = det_xywh[j]
            results.append(result)
        gt = {"images": images, "annotations": annotations, "categories": categories}
        return gt, results

    def compute(self) -> dict[str, torch.Tensor]:
        """COCO numbers as float64 scalars: ``AP, AP50, ..., ARl`` for ``segm`` and the same
        prefixed with ``bbox_`` for ``bbox``, for each type in ``iou_types``."""
        gt, results = self._coco_dicts()
        out: dict[str, torch.Tensor] = {}
        for iou_type in self.iou_types:
            stats = coco_evaluate(gt, results, iou_type, self.backend)
            prefix = "" if iou_type == "segm" else "bbox_"
            for name in COCO_STAT_NAMES:
                out[prefix + name] = torch.tensor(stats[name], dtype=torch.float64)
        return out
