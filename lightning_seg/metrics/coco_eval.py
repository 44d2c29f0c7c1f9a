"""The COCO detection protocol (AP / AR at IoU 0.5:0.95) through faster-coco-eval or pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Literal

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of the 12 numbers of ``COCOeval.summarize`` for ``segm`` / ``bbox``, in order."""

Backend = Literal["faster_coco_eval", "pycocotools"]


def coco_evaluate(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    iou_type: Literal["segm", "bbox"] = "segm",
    backend: Backend = "faster_coco_eval",
) -> dict[str, float]:
    """Run COCOeval on in-memory ground truth and results.

    Args:
        gt: a COCO instances dataset dict (``images``, ``annotations``, ``categories``); it is
            not modified.
        results: COCO results (``image_id``, ``category_id``, ``score`` and ``segmentation``
            RLE and/or ``bbox`` ``[x, y, w, h]``); not modified. Only ``iou_type``'s geometry is
            passed on to COCOeval.
        iou_type: ``"segm"`` or ``"bbox"``.
        backend: ``"faster_coco_eval"`` (C++; default) or ``"pycocotools"`` (the original).

    Returns:
        The 12 summary numbers keyed by :data:`COCO_STAT_NAMES` (``-1`` where COCO has no
        ground truth to score, as COCOeval prints).
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    gt = copy.deepcopy(gt)
    # Each type is scored on its own geometry only: COCO's loadRes takes a detection's area (its
    # size bucket) from its "bbox" whenever there is one, also for segm.
    other = "bbox" if iou_type == "segm" else "segmentation"
    results = [{k: copy.deepcopy(v) for k, v in r.items() if k != other} for r in results]
    if not results:
        # Both tools refuse an empty result list; with nothing detected, AP and AR are 0
        # wherever there is ground truth.
        return {name: 0.0 for name in COCO_STAT_NAMES}
    # Both tools print progress to stdout; an evaluation inside a training loop stays quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            quiet = lambda *args, **kwargs: None  # noqa: E731
            gt_api = COCO(gt, print_function=quiet)
            dt_api = gt_api.loadRes(results)
            evaluator = COCOeval_faster(gt_api, dt_api, iou_type, print_function=quiet)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO as PyCOCO
            from pycocotools.cocoeval import COCOeval

            gt_api = PyCOCO()
            gt_api.dataset = gt
            gt_api.createIndex()
            dt_api = gt_api.loadRes(results)
            evaluator = COCOeval(gt_api, dt_api, iou_type)
        else:
            raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats[:12])}
