"""Panoptic quality (PQ, SQ, RQ) with the COCO rules of panopticapi's ``pq_compute``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lightning_seg.metrics.panoptic_segments import (
    PanopticSegments,
    segment_pairs,
    to_panoptic_segments,
)


def panoptic_quality_stats(
    gt: PanopticSegments, pred: PanopticSegments, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class IoU sum, TP, FP and FN of a batch, by the COCO panoptic rules.

    The rules (Kirillov et al. 2019, as implemented by panopticapi):

    * a predicted and a ground-truth segment match when they have the same class, the ground
      truth is not crowd, and IoU > 0.5, where the union leaves out the predicted pixels that
      fall on void ground truth;
    * an unmatched ground-truth segment is a false negative unless it is crowd;
    * an unmatched predicted segment is a false positive unless more than half of its area lies
      on void ground truth or on crowd ground truth of its own class.

    panopticapi keeps one crowd region per class and image (COCO merges them); here the crowd
    overlap is summed over all crowd segments of the class, which is the same for COCO data.
    Segments with no pixels take no part.

    Args:
        gt: ground-truth segments (``iscrowd`` is used).
        pred: predicted segments of the same images (``iscrowd`` is ignored).
        num_classes: number of classes ``K``.

    Returns:
        ``iou_sum`` float64 ``[K]``, ``tp``, ``fp``, ``fn`` int64 ``[K]``.
    """
    pairs = segment_pairs(gt, pred)
    device = pairs.count.device
    # Position 0 of the label / crowd tables is void; -1 and -2 never equal a class id.
    gt_labels = torch.cat([torch.full((1,), -1, device=device), gt.labels])
    pred_labels = torch.cat([torch.full((1,), -2, device=device), pred.labels])
    gt_crowd = torch.cat([torch.zeros(1, dtype=torch.bool, device=device), gt.iscrowd])
    pl, gl = pred_labels[pairs.pred], gt_labels[pairs.gt]
    crowd = gt_crowd[pairs.gt]
    on_void = pairs.gt == 0
    real = (pairs.pred > 0) & ~on_void
    same_class = real & (gl == pl)

    void_overlap = torch.zeros_like(pairs.pred_area).index_add_(
        0, pairs.pred, pairs.count * on_void
    )
    union = pairs.pred_area[pairs.pred] + pairs.gt_area[pairs.gt] - pairs.count
    union = union - void_overlap[pairs.pred]
    iou = pairs.count.double() / union.clamp(min=1).double()
    match = same_class & ~crowd & (iou > 0.5)

    matched_gt = torch.zeros_like(pairs.gt_area).index_add_(0, pairs.gt, match.long()) > 0
    matched_pred = torch.zeros_like(pairs.pred_area).index_add_(0, pairs.pred, match.long()) > 0
    crowd_overlap = torch.zeros_like(pairs.pred_area).index_add_(
        0, pairs.pred, pairs.count * (same_class & crowd)
    )

    cls = pl.clamp(min=0)
    iou_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
    iou_sum.index_add_(0, cls, torch.where(match, iou, torch.zeros_like(iou)))
    tp = torch.zeros(num_classes, dtype=torch.int64, device=device).index_add_(0, cls, match.long())

    gt_area = pairs.gt_area[1:]
    fn_mask = (gt_area > 0) & ~gt.iscrowd & ~matched_gt[1:]
    fn = torch.zeros(num_classes, dtype=torch.int64, device=device)
    fn.index_add_(0, gt.labels, fn_mask.long())

    pred_area = pairs.pred_area[1:]
    ignored = (void_overlap[1:] + crowd_overlap[1:]) * 2 > pred_area
    fp_mask = (pred_area > 0) & ~matched_pred[1:] & ~ignored
    fp = torch.zeros(num_classes, dtype=torch.int64, device=device)
    fp.index_add_(0, pred.labels, fp_mask.long())
    return iou_sum, tp, fp, fn


def pq_from_stats(
    iou_sum: torch.Tensor,
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    is_thing: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """PQ / SQ / RQ for All, Things, Stuff and per class from accumulated per-class counts.

    A class takes part in an average only when ``tp + fp + fn > 0`` (panopticapi); its
    per-class values are 0 otherwise, and SQ is 0 for a class with no TP.

    Args:
        iou_sum: float ``[K]`` summed IoU of the matched pairs.
        tp, fp, fn: integer ``[K]`` counts.
        is_thing: bool ``[K]``.

    Returns:
        Float64 scalars ``pq, sq, rq, n`` and the same with ``_things`` / ``_stuff`` suffixes,
        plus ``pq_per_class``, ``sq_per_class``, ``rq_per_class`` ``[K]`` and ``valid_per_class``
        bool ``[K]``.
    """
    tp_f, fp_f, fn_f = tp.double(), fp.double(), fn.double()
    denom = tp_f + 0.5 * fp_f + 0.5 * fn_f
    valid = (tp + fp + fn) > 0
    zero = torch.zeros_like(denom)
    pq = torch.where(valid, iou_sum.double() / denom.clamp(min=1e-12), zero)
    sq = torch.where(tp > 0, iou_sum.double() / tp_f.clamp(min=1), zero)
    rq = torch.where(valid, tp_f / denom.clamp(min=1e-12), zero)
    out: dict[str, torch.Tensor] = {}
    is_thing = is_thing.to(valid.device)
    for suffix, subset in (("", valid), ("_things", valid & is_thing), ("_stuff", valid & ~is_thing)):
        n = subset.sum()
        w = subset.double()
        out[f"pq{suffix}"] = (pq * w).sum() / n.clamp(min=1)
        out[f"sq{suffix}"] = (sq * w).sum() / n.clamp(min=1)
        out[f"rq{suffix}"] = (rq * w).sum() / n.clamp(min=1)
        out[f"n{suffix}"] = n
    out["pq_per_class"], out["sq_per_class"], out["rq_per_class"] = pq, sq, rq
    out["valid_per_class"] = valid
    return out


class PanopticQuality(Metric):
    """Panoptic quality with crowd and void handled as COCO's ``pq_compute`` does.

    State: per-class IoU sums and TP / FP / FN counts (``[K]`` each), summed across processes.
    ``update`` works on the inputs' device with one histogram of (gt, pred) pair keys per batch
    and no loop over segments or pixels.

    Args:
        is_thing: per contiguous class, whether it is a thing (length ``K``).
        validate_args: check inputs (ids listed in ``segments_info``, non-overlapping masks);
            the checks synchronise with the device.

    Example::

        metric = PanopticQuality(is_thing=metadata.is_thing)
        metric.update(predictions, batch["targets"])   # list[PanopticPrediction], list[Target]
        metric.compute()["pq"]
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    iou_sum: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor

    def __init__(self, is_thing: Sequence[bool], validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(is_thing) == 0:
            raise ValueError("PanopticQuality needs at least one class (is_thing is empty)")
        self.num_classes = len(is_thing)
        self.validate_args = validate_args
        self.register_buffer("is_thing", torch.tensor([bool(t) for t in is_thing]), persistent=False)
        k = self.num_classes
        self.add_state("iou_sum", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tp", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fp", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fn", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Any, target: Any) -> None:
        """Accumulate one batch.

        Args:
            preds: predictions in any form :func:`~lightning_seg.metrics.panoptic_segments.to_panoptic_segments`
                accepts: ``list[PanopticPrediction]`` (int32 ``[H,W]`` id map + ``segments_info``
                with contiguous ``category_id``), an integer ``[B,H,W,2]`` (category, instance)
                tensor, or :class:`PanopticSegments`.
            target: ground truth of the same images: ``list[Target]`` (masks are cropped to the
                predictions' sizes when padded), id maps + ``segments_info`` with ``iscrowd``,
                a ``[B,H,W,2]`` tensor, or :class:`PanopticSegments`.
        """
        pred_seg = to_panoptic_segments(preds, self.is_thing, validate=self.validate_args)
        sizes = _prediction_sizes(preds)
        gt_seg = to_panoptic_segments(target, self.is_thing, sizes=sizes, validate=self.validate_args)
        if self.validate_args:
            _check_labels(pred_seg, self.num_classes, "predicted")
            _check_labels(gt_seg, self.num_classes, "ground-truth")
        iou_sum, tp, fp, fn = panoptic_quality_stats(gt_seg, pred_seg, self.num_classes)
        self.iou_sum = self.iou_sum + iou_sum
        self.tp = self.tp + tp
        self.fp = self.fp + fp
        self.fn = self.fn + fn

    def compute(self) -> dict[str, torch.Tensor]:
        """The scores: see :func:`pq_from_stats` (values in ``[0, 1]``, like panopticapi)."""
        return pq_from_stats(self.iou_sum, self.tp, self.fp, self.fn, self.is_thing)

    def report(self, category_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """The scores as panopticapi prints them, keyed by dataset category id.

        Args:
            category_ids: dataset category id of each contiguous class (default ``0..K-1``).

        Returns:
            ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"}, "per_class": {id: {"pq","sq","rq"}}}``
            with Python floats.
        """
        res = self.compute()
        ids = list(range(self.num_classes)) if category_ids is None else list(category_ids)
        if len(ids) != self.num_classes:
            raise ValueError(f"{len(ids)} category ids given for {self.num_classes} classes")
        out: dict[str, Any] = {}
        for name, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
            out[name] = {k: float(res[f"{k}{suffix}"]) for k in ("pq", "sq", "rq")}
            out[name]["n"] = int(res[f"n{suffix}"])
        # Like panopticapi, classes absent from both sides are listed with zeros.
        out["per_class"] = {
            ids[k]: {m: float(res[f"{m}_per_class"][k]) for m in ("pq", "sq", "rq")}
            for k in range(self.num_classes)
        }
        return out


def _check_labels(segments: PanopticSegments, num_classes: int, side: str) -> None:
    """Raise when a segment's class id is outside ``[0, K)`` (one host sync)."""
    labels = segments.labels
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = torch.unique(labels[(labels < 0) | (labels >= num_classes)])[:10].tolist()
        raise ValueError(f"{side} class ids {bad} are outside [0, {num_classes})")


def _prediction_sizes(preds: Any) -> list[tuple[int, int]] | None:
    """Per-image ``(H, W)`` of a prediction input, used to crop padded ground-truth masks."""
    if isinstance(preds, torch.Tensor) and preds.ndim == 4:
        return [tuple(preds.shape[1:3])] * preds.shape[0]  # type: ignore[list-item]
    if isinstance(preds, Sequence) and len(preds) and isinstance(preds[0], dict):
        if "panoptic_seg" in preds[0]:
            return [tuple(p["panoptic_seg"].shape[-2:]) for p in preds]
    return None
