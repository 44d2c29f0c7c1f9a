"""Parsing Covering (Yang et al., DeepLab): area-weighted best IoU of each ground-truth segment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lightning_seg.metrics.panoptic_quality import _check_labels, _prediction_sizes
from lightning_seg.metrics.panoptic_segments import (
    PanopticSegments,
    segment_pairs,
    to_panoptic_segments,
)


def parsing_covering_stats(
    gt: PanopticSegments,
    pred: PanopticSegments,
    num_classes: int,
    normalize_by_image_size: bool = True,
    class_agnostic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class weighted best IoU and ground-truth area of a batch.

    For class ``c``: ``SC(c) = sum_R |R| max_R' IoU(R, R') / sum_R |R|`` over the ground-truth
    segments ``R`` of class ``c`` and the predicted segments ``R'`` of class ``c``. As in
    DeepLab's evaluation, crowd ground truth counts as void, and pixels on void ground truth
    count neither in the ground-truth nor in the predicted areas.

    Args:
        gt: ground-truth segments.
        pred: predicted segments of the same images.
        num_classes: number of classes ``K``.
        normalize_by_image_size: divide areas by the pixel count of their image, so every
            image weighs the same.
        class_agnostic: a ground-truth segment takes its best IoU over all predicted segments,
            whatever their class (unlabelled segments); the average still runs per
            ground-truth class.

    Returns:
        ``weighted_iou`` and ``gt_area``, float64 ``[K]``.
    """
    # Crowd regions become void before pairing, like DeepLab's COCO reader does.
    if gt.num_segments:
        on_crowd = (gt.index >= 0) & gt.iscrowd[gt.index.clamp(min=0)]
        index = torch.where(on_crowd, torch.full_like(gt.index, -1), gt.index)
        gt = PanopticSegments(index, gt.labels, gt.iscrowd, gt.image, gt.image_numel)
    pairs = segment_pairs(gt, pred)
    device = pairs.count.device
    on_gt = pairs.gt > 0
    # Predicted area counted only on non-void ground truth.
    pred_area = torch.zeros_like(pairs.pred_area).index_add_(0, pairs.pred, pairs.count * on_gt)
    gt_labels = torch.cat([torch.full((1,), -1, device=device), gt.labels])
    pred_labels = torch.cat([torch.full((1,), -2, device=device), pred.labels])
    same = on_gt & (pairs.pred > 0)
    if not class_agnostic:
        same &= gt_labels[pairs.gt] == pred_labels[pairs.pred]
    gt_area = pairs.gt_area.double()
    union = gt_area[pairs.gt] + pred_area[pairs.pred].double() - pairs.count.double()
    iou = torch.where(same, pairs.count.double() / union.clamp(min=1), torch.zeros_like(union))
    best = torch.zeros_like(gt_area).scatter_reduce_(0, pairs.gt, iou, reduce="amax")[1:]
    area = gt_area[1:]
    if normalize_by_image_size and gt.num_segments:
        numel = torch.tensor(gt.image_numel, dtype=torch.float64, device=device)
        area = area / numel[gt.image]
    keep = (~gt.iscrowd).double()
    weighted = torch.zeros(num_classes, dtype=torch.float64, device=device)
    weighted.index_add_(0, gt.labels, best * area * keep)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total.index_add_(0, gt.labels, area * keep)
    return weighted, total


class ParsingCovering(Metric):
    """Parsing Covering, the panoptic add-on metric of DeepLab.

    Per class, the area-weighted mean over ground-truth segments of their best IoU with a
    predicted segment of the same class; the result is the mean over classes with ground-truth
    area (All, Things, Stuff). States are ``[K]`` float64 sums.

    Args:
        is_thing: per contiguous class, whether it is a thing.
        normalize_by_image_size: weight every image equally (DeepLab's default).
        class_agnostic: match each ground-truth segment with predicted segments of any class
            (see :func:`parsing_covering_stats`).
        validate_args: check inputs (synchronises with the device).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    weighted_iou: torch.Tensor
    gt_area: torch.Tensor

    def __init__(
        self,
        is_thing: Sequence[bool],
        normalize_by_image_size: bool = True,
        class_agnostic: bool = False,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(is_thing) == 0:
            raise ValueError("ParsingCovering needs at least one class (is_thing is empty)")
        self.num_classes = len(is_thing)
        self.normalize_by_image_size = normalize_by_image_size
        self.class_agnostic = class_agnostic
        self.validate_args = validate_args
        self.register_buffer("is_thing", torch.tensor([bool(t) for t in is_thing]), persistent=False)
        zeros = torch.zeros(self.num_classes, dtype=torch.float64)
        self.add_state("weighted_iou", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("gt_area", zeros.clone(), dist_reduce_fx="sum")

    def update(self, preds: Any, target: Any) -> None:
        """Accumulate one batch; inputs as for :meth:`PanopticQuality.update`."""
        pred_seg = to_panoptic_segments(preds, self.is_thing, validate=self.validate_args)
        gt_seg = to_panoptic_segments(
            target, self.is_thing, sizes=_prediction_sizes(preds), validate=self.validate_args
        )
        if self.validate_args:
            _check_labels(pred_seg, self.num_classes, "predicted")
            _check_labels(gt_seg, self.num_classes, "ground-truth")
        weighted, total = parsing_covering_stats(
            gt_seg, pred_seg, self.num_classes, self.normalize_by_image_size, self.class_agnostic
        )
        self.weighted_iou = self.weighted_iou + weighted
        self.gt_area = self.gt_area + total

    def compute(self) -> dict[str, torch.Tensor]:
        """``pc``, ``pc_things``, ``pc_stuff`` (float64), their class counts ``n*``,
        ``pc_per_class`` ``[K]`` (0 for classes without ground truth) and ``covering``: the
        area-weighted best IoU over all ground-truth segments at once (Arbelaez et al.'s
        segmentation covering, no per-class mean)."""
        valid = self.gt_area > 0
        ratio = self.weighted_iou / self.gt_area.clamp(min=1e-300)
        per_class = torch.where(valid, ratio, torch.zeros_like(self.gt_area))
        out: dict[str, torch.Tensor] = {"pc_per_class": per_class,
                                        "covering": self.weighted_iou.sum() / self.gt_area.sum().clamp(min=1e-300)}
        things = self.is_thing
        for suffix, subset in (("", valid), ("_things", valid & things), ("_stuff", valid & ~things)):
            n = subset.sum()
            out[f"pc{suffix}"] = (per_class * subset.double()).sum() / n.clamp(min=1)
            out[f"n{suffix}"] = n
        return out
