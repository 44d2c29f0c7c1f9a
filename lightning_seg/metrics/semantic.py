"""Semantic segmentation scores from one dataset-level confusion matrix."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import Metric

from lightning_seg.structures import IGNORE_INDEX


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel confusion matrix, rows = ground truth, columns = prediction, plus a "no class" column.

    Pixels whose target equals ``ignore_index`` are left out. A prediction outside
    ``[0, K)`` (e.g. ``ignore_index`` where a model abstains) lands in column ``K``: it is a
    miss for the ground-truth class and a false positive for none. No host synchronisation:
    ignored pixels are counted in an extra bin that is dropped.

    Args:
        preds: integer ``[...]`` predicted class ids.
        target: integer ``[...]`` (same shape) class ids in ``[0, K)`` or ``ignore_index``.
        num_classes: ``K``.
        ignore_index: void value of ``target`` (None: none).

    Returns:
        int64 ``[K, K + 1]``.
    """
    k = num_classes
    t = target.reshape(-1).long()
    p = preds.reshape(-1).long()
    p = torch.where((p >= 0) & (p < k), p, torch.full_like(p, k))
    valid = (t >= 0) & (t < k)
    if ignore_index is not None:
        valid &= t != ignore_index
    n_bins = k * (k + 1)
    idx = torch.where(valid, t * (k + 1) + p, torch.full_like(t, n_bins))
    if idx.device.type == "cpu":
        counts = torch.bincount(idx, minlength=n_bins + 1)
    else:
        # bincount needs the max on the host; a scatter keeps the update asynchronous.
        counts = torch.zeros(n_bins + 1, dtype=torch.int64, device=idx.device)
        counts.index_add_(0, idx, torch.ones_like(idx))
    return counts[:n_bins].reshape(k, k + 1)


def semantic_scores(
    confmat: torch.Tensor, average: Literal["present", "all"] = "present"
) -> dict[str, torch.Tensor]:
    """Scores of a ``[K, K]`` or ``[K, K + 1]`` confusion matrix (rows = ground truth; the
    optional last column counts pixels predicted as no class).

    Per class ``c``: ``IoU = TP / (TP + FP + FN)`` and ``acc = TP / (TP + FN)``.

    ``average="present"`` (mmsegmentation / detectron2): a class whose IoU (accuracy) is
    undefined — no pixel of it in the ground truth nor the prediction (in the ground truth) —
    is left out of mIoU (mAcc) and reported as NaN. ``average="all"`` (the ADE20K benchmark kit):
    the mean runs over all ``K`` classes and undefined values count as 0.

    Returns:
        float64 scalars ``pixel_acc``, ``mAcc``, ``mIoU``, ``fwIoU`` and ``[K]``
        ``per_class_iou``, ``per_class_acc``.
    """
    if average not in ("present", "all"):
        raise ValueError(f"average must be 'present' or 'all', got {average!r}")
    cm = confmat.double()
    k = cm.shape[0]
    tp = cm[:, :k].diagonal()
    gt = cm.sum(1)
    union = gt + cm[:, :k].sum(0) - tp
    total = cm.sum()
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    if average == "present":
        miou, macc = iou.nanmean(), acc.nanmean()
    else:
        miou, macc = iou.nan_to_num(0.0).mean(), acc.nan_to_num(0.0).mean()
    freq = gt / total.clamp(min=1)
    return {
        "pixel_acc": tp.sum() / total.clamp(min=1),
        "mAcc": macc,
        "mIoU": miou,
        "fwIoU": (freq * iou.nan_to_num(0.0)).sum(),
        "per_class_iou": iou,
        "per_class_acc": acc,
    }


class SemanticSegmentationMetrics(Metric):
    """Pixel accuracy, mAcc, mIoU, FWIoU and per-class IoU / accuracy over a whole dataset.

    One ``[K, K + 1]`` int64 confusion matrix (last column: predicted ``ignore_index``, a miss)
    is accumulated (summed across processes); the scores
    come from it at the end, so they are dataset-level, not averages of per-image scores.

    Args:
        num_classes: ``K``.
        ignore_index: target value of void pixels (not counted).
        average: ``"present"`` leaves classes absent from ground truth and prediction out of the
            means (mmsegmentation / detectron2); ``"all"`` averages over all ``K`` classes with
            0 for absent ones (ADE20K benchmark kit).
        validate_args: raise on class ids outside ``[0, K)`` (synchronises with the device).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    confmat: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        average: Literal["present", "all"] = "present",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if average not in ("present", "all"):
            raise ValueError(f"average must be 'present' or 'all', got {average!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.average = average
        self.validate_args = validate_args
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes + 1, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch.

        Args:
            preds: integer ``[B, H, W]`` class map (``ignore_index`` = no class, a miss), or
                float ``[B, K, H, W]`` scores (argmax).
            target: integer ``[B, H, W]`` class ids or ``ignore_index``.
        """
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"score maps must be [B,{self.num_classes},H,W] for target {tuple(target.shape)}; "
                    f"got {tuple(preds.shape)}"
                )
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        if self.validate_args:
            k = self.num_classes
            bad_t = (target < 0) | (target >= k)
            if self.ignore_index is not None:
                bad_t &= target != self.ignore_index
            if bool(bad_t.any()):
                raise ValueError(
                    f"target holds values {torch.unique(target[bad_t])[:10].tolist()} outside "
                    f"[0, {k}) that are not ignore_index={self.ignore_index}"
                )
            bad_p = (preds < 0) | (preds >= k)
            if self.ignore_index is not None:
                bad_p &= preds != self.ignore_index
            if bool(bad_p.any()):
                raise ValueError(
                    f"preds hold values {torch.unique(preds[bad_p])[:10].tolist()} outside [0, {k}) "
                    f"that are not ignore_index={self.ignore_index}"
                )
        self.confmat = self.confmat + confusion_matrix(preds, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, torch.Tensor]:
        """See :func:`semantic_scores`."""
        return semantic_scores(self.confmat, self.average)
