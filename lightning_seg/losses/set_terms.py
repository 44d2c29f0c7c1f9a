"""The terms of the set criterion: each gives a matching cost and, for matched pairs, its losses.

A :class:`SetLossTerm` sees one decoder layer's outputs (``pred_logits [B,Q,K+1]`` and, as the
term needs, ``pred_masks [B,Q,h,w]`` or ``pred_boxes [B,Q,4]``) and the padded targets of the
batch (:class:`~lightning_seg.losses.set_targets.PaddedTargets`):

* :meth:`SetLossTerm.prepare` runs once per criterion call (shared random draws);
* :meth:`SetLossTerm.cost` gives its weighted share of the ``[B, Q, T]`` matching cost;
* :meth:`SetLossTerm.loss` gives its unweighted losses of the matched pairs, summed over pairs
  and divided by the number of targets (``loss_ce`` is a mean over predictions instead).

Terms: :class:`LabelsTerm` (``loss_ce``), :class:`PointMasksTerm` (``loss_mask`` BCE +
``loss_dice`` on importance-sampled points, Mask2Former), :class:`DenseMasksTerm` (``loss_mask``
focal + ``loss_dice`` on every target pixel, MaskFormer/DETR), :class:`BoxesTerm`
(``loss_bbox`` L1 + ``loss_giou``, DETR). The pairwise costs come from
:mod:`lightning_seg.ops.matching_costs`, shared with the matcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..ops.matching import Matching, point_mask_costs
from ..ops.matching_costs import (
    box_l1_cost,
    class_cost,
    generalized_iou_cost,
    pairwise_dice,
    pairwise_sigmoid_focal,
)
from ..ops.point_sampling import (
    gather_points,
    most_uncertain_candidates,
    point_sample,
    point_sample_binary,
    point_sample_grid,
    rand_points_row_major,
    sample_points_by_uncertainty,
)
from .set_mask_losses import dice_per_mask, sigmoid_bce_per_mask, sigmoid_focal_per_mask
from .set_targets import PaddedTargets

Layer = Mapping[str, Tensor]
"""One decoder layer's outputs: ``pred_logits``, and ``pred_masks`` / ``pred_boxes``."""


class Pairs(NamedTuple):
    """Matched (image, prediction, target) triples of one layer, each int64 ``[M]``."""

    batch_idx: Tensor
    pred_idx: Tensor
    target_idx: Tensor


class SetLossTerm(nn.Module):
    """Base of the criterion's terms (see the module docstring)."""

    loss_names: tuple[str, ...] = ()
    required_outputs: tuple[str, ...] = ("pred_logits",)

    def prepare(self, padded: PaddedTargets) -> Any:
        """Per-call state shared by every layer (random draws); ``None`` by default."""
        return None

    def cost(self, layer: Layer, padded: PaddedTargets, context: Any) -> Tensor | None:
        """Weighted matching cost float32 ``[B, Q, T]`` (``None``: no cost, e.g. ``T = 0``)."""
        raise NotImplementedError

    def loss(
        self, layer: Layer, padded: PaddedTargets, matching: Matching, pairs: Pairs, num_targets: Tensor,
        context: Any,
    ) -> dict[str, Tensor]:
        """Unweighted float32 scalar losses keyed by :attr:`loss_names`."""
        raise NotImplementedError


def _zero(x: Tensor) -> Tensor:
    # Keeps the graph connected, so every rank sees the same parameters used.
    return x.float().sum() * 0.0


class LabelsTerm(SetLossTerm):
    """Cross-entropy over ``K+1`` classes, the no-object class weighted by ``eos_coef``.

    Cost: ``cost_weight * -softmax(logits)[label]``. Loss ``loss_ce``: the weighted mean over
    all predictions, as ``F.cross_entropy(weight=...)``; unmatched predictions target no-object.

    Args:
        num_classes: ``K``.
        eos_coef: weight of the no-object class.
        cost_weight: weight of the class cost in matching.
    """

    loss_names = ("loss_ce",)

    def __init__(self, num_classes: int, eos_coef: float = 0.1, cost_weight: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cost_weight = cost_weight
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def cost(self, layer: Layer, padded: PaddedTargets, context: Any) -> Tensor:
        return self.cost_weight * class_cost(layer["pred_logits"], padded.labels)

    def loss(self, layer, padded, matching, pairs, num_targets, context) -> dict[str, Tensor]:
        tgt_idx = matching.target_for_pred.clamp(min=0)
        if padded.labels.shape[1] > 0:
            matched = torch.gather(padded.labels, 1, tgt_idx)
        else:
            matched = torch.zeros_like(tgt_idx)
        target_classes = torch.where(matching.target_for_pred >= 0, matched, torch.full_like(tgt_idx, self.num_classes))
        loss = F.cross_entropy(layer["pred_logits"].float().transpose(1, 2), target_classes,
                               weight=self.empty_weight.float())
        return {"loss_ce": loss}


def _matched_masks(layer: Layer, pairs: Pairs) -> Tensor:
    """float ``[M, h, w]``: the matched predictions' mask logits."""
    pred_masks = layer["pred_masks"]
    q = pred_masks.shape[1]
    # index_select, not advanced indexing: its backward is an index_add into the [B, Q, h, w]
    # gradient, several times faster than the accumulating index_put of advanced indexing.
    return pred_masks.flatten(0, 1).index_select(0, pairs.batch_idx * q + pairs.pred_idx)


class SharedDraws(NamedTuple):
    """Random points drawn once per criterion call and reused by every decoder layer.

    Attributes:
        match_points: float32 ``[B, P, 2]`` uniform matching points per image (each set in
            increasing ``y``, see :func:`lightning_seg.ops.point_sampling.rand_points_row_major`).
        match_targets: float32 ``[B, T, P]`` the padded targets sampled there.
        points: float32 ``[B, C + R, 2]`` per image: ``C`` importance-sampling candidates
            followed by ``R`` fresh uniform points (each draw in increasing ``y``).
        grid: ``2 * points - 1``, the same points in ``grid_sample`` coordinates.
        targets: float32 ``[B, T, C + R]`` the padded targets sampled at ``points``.
        num_candidates: ``C``.
    """

    match_points: Tensor
    match_targets: Tensor
    points: Tensor
    grid: Tensor
    targets: Tensor
    num_candidates: int


class PointMasksTerm(SetLossTerm):
    """Mask2Former's mask terms: sigmoid BCE (``loss_mask``) and dice (``loss_dice``) on points.

    Matching scores every (query, target) pair at ``num_points`` uniform points per image;
    the losses of a matched mask use ``num_points`` points chosen as PointRend does
    (``oversample_ratio * num_points`` uniform candidates, the ``importance_sample_ratio``
    most uncertain of them, plus fresh uniform points).

    Args:
        num_points: points per mask (and per image for matching).
        oversample_ratio: candidates per chosen point.
        importance_sample_ratio: share of points chosen by uncertainty.
        shared_points: ``True``: every decoder layer is matched at the same uniform points of
            an image (drawn once per call, so the targets are sampled once instead of once per
            layer), and the matched masks of an image share one draw of candidates and of fresh
            uniform points. ``False``: fresh matching points per layer, candidates and fresh
            points per mask, as Mask2Former and HF transformers draw them. Each layer's and each
            mask's points have the same distribution either way, so the expected loss is the
            same (``tests/losses/test_set_criterion.py`` checks it over many draws).
        mask_weight, dice_weight: weights of the two matching costs.
    """

    loss_names = ("loss_mask", "loss_dice")
    required_outputs = ("pred_logits", "pred_masks")

    def __init__(self, num_points: int = 12544, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 shared_points: bool = True, mask_weight: float = 5.0, dice_weight: float = 5.0) -> None:
        super().__init__()
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.shared_points = shared_points
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight

    @torch.no_grad()
    def prepare(self, padded: PaddedTargets) -> SharedDraws | None:
        """Draw this call's matching points, candidates and fresh points; sample the targets.

        The bool targets are read at every drawn point once (``point_sample_binary``), so
        no decoder layer converts a target mask to float.
        """
        if not self.shared_points or padded.labels.shape[1] == 0:
            return None
        b = padded.masks.shape[0]
        dev = padded.masks.device
        num_candidates = int(self.num_points * self.oversample_ratio)
        num_random = self.num_points - int(self.importance_sample_ratio * self.num_points)
        # Each draw is a set, so it is drawn in row-major order: every later read of the
        # targets and of the masks at these points is then nearly sequential.
        match_points = rand_points_row_major(b, self.num_points, device=dev)
        points = torch.cat(
            [rand_points_row_major(b, num_candidates, device=dev), rand_points_row_major(b, num_random, device=dev)],
            dim=1,
        )
        return SharedDraws(
            match_points, point_sample_binary(padded.masks, match_points), points, points.mul(2.0).sub_(1.0),
            point_sample_binary(padded.masks, points), num_candidates,
        )

    def cost(self, layer: Layer, padded: PaddedTargets, context: SharedDraws | None) -> Tensor | None:
        if padded.labels.shape[1] == 0:
            return None
        pred_masks = layer["pred_masks"]
        if context is None:
            points = torch.rand(pred_masks.shape[0], self.num_points, 2, device=pred_masks.device)
            return point_mask_costs(pred_masks, padded.masks, points, self.mask_weight, self.dice_weight)
        return point_mask_costs(pred_masks, None, context.match_points, self.mask_weight, self.dice_weight,
                                target_samples=context.match_targets)

    @torch.no_grad()
    def _shared_loss_points(self, pred_masks: Tensor, matching: Matching, pairs: Pairs,
                            shared: SharedDraws) -> tuple[Tensor, Tensor]:
        """Importance-sampled points of the matched masks from the shared draws, in
        ``grid_sample`` coordinates, and their target values: float32 ``[M, P, 2]`` and
        ``[M, P]`` for the ``M`` pairs."""
        batch_idx, target_idx = pairs.batch_idx, pairs.target_idx
        b, q = pred_masks.shape[:2]
        num_targets = matching.pred_for_target.shape[1]
        m = batch_idx.shape[0]
        c = shared.num_candidates
        total = shared.points.shape[1]
        # Matched masks laid out by (image, target), so one bilinear pass per image scores
        # all of its masks at the image's candidates. Slots of unmatched targets get some
        # query's mask: they are scored but never selected below.
        slot_query = matching.pred_for_target.clamp(min=0)
        slot_query = slot_query + torch.arange(b, device=slot_query.device)[:, None] * q
        by_target = pred_masks.detach().flatten(0, 1).index_select(0, slot_query.view(-1))
        by_target = by_target.view(b, num_targets, *pred_masks.shape[2:])
        rows = torch.stack([batch_idx, target_idx], 1)
        k = int(self.importance_sample_ratio * self.num_points)
        idx = most_uncertain_candidates(by_target, shared.points[:, :c], k, rows)
        fresh = torch.arange(c, total, device=pred_masks.device)
        # [M, P] indices into the batch's flattened C + R points per image, written in place
        # (no concatenated copy): [M, P] int64 temporaries are large at training sizes.
        point_idx = torch.empty((m, k + total - c), dtype=torch.long, device=fresh.device)
        image_start = (batch_idx * total)[:, None]
        torch.add(idx, image_start, out=point_idx[:, :k])
        torch.add(fresh, image_start, out=point_idx[:, k:])
        grid = gather_points(shared.grid, point_idx)
        point_idx += (batch_idx * (num_targets - 1) * total + target_idx * total)[:, None]
        labels = shared.targets.view(-1).index_select(0, point_idx.view(-1))
        return grid, labels.view(m, -1)

    def loss(self, layer, padded, matching, pairs, num_targets, context) -> dict[str, Tensor]:
        pred_masks = layer["pred_masks"]
        if pairs.batch_idx.numel() == 0:
            zero = _zero(pred_masks)
            return {"loss_mask": zero, "loss_dice": zero}
        src = _matched_masks(layer, pairs)  # [M, h, w]
        if context is not None:
            grid, labels = self._shared_loss_points(pred_masks, matching, pairs, context)
            logits = point_sample_grid(src.float()[:, None], grid)[:, 0]
        else:
            b, t = padded.labels.shape
            rows = (pairs.batch_idx * t + pairs.target_idx)[:, None]
            tgt_masks = padded.masks.reshape(b * t, *padded.masks.shape[2:])
            points = sample_points_by_uncertainty(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            labels = point_sample_binary(tgt_masks, points, rows)[:, 0]
            logits = point_sample(src.float(), points)
        return {
            "loss_mask": sigmoid_bce_per_mask(logits, labels).sum() / num_targets,
            "loss_dice": dice_per_mask(logits, labels).sum() / num_targets,
        }


class DenseMasksTerm(SetLossTerm):
    """MaskFormer's mask terms: sigmoid focal (``loss_mask``) and dice (``loss_dice``) on every
    pixel of the target grid, the predicted masks upsampled bilinearly to it.

    Matching upsamples every query's mask to the target size (``[B, Q, H, W]`` float32), so
    keep targets modest.

    Args:
        focal_alpha, focal_gamma: focal-loss parameters.
        mask_weight, dice_weight: weights of the two matching costs.
    """

    loss_names = ("loss_mask", "loss_dice")
    required_outputs = ("pred_logits", "pred_masks")

    def __init__(self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, mask_weight: float = 20.0,
                 dice_weight: float = 1.0) -> None:
        super().__init__()
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight

    def cost(self, layer: Layer, padded: PaddedTargets, context: Any) -> Tensor | None:
        if padded.labels.shape[1] == 0:
            return None
        h, w = padded.masks.shape[-2:]
        logits = F.interpolate(layer["pred_masks"].float(), size=(h, w), mode="bilinear", align_corners=False)
        logits = logits.flatten(2).transpose(1, 2)  # [B, HW, Q]
        tgt = padded.masks.flatten(2).float()
        focal = pairwise_sigmoid_focal(logits, tgt, self.focal_alpha, self.focal_gamma)
        return self.mask_weight * focal + self.dice_weight * pairwise_dice(logits.sigmoid(), tgt)

    def loss(self, layer, padded, matching, pairs, num_targets, context) -> dict[str, Tensor]:
        if pairs.batch_idx.numel() == 0:
            zero = _zero(layer["pred_masks"])
            return {"loss_mask": zero, "loss_dice": zero}
        src = _matched_masks(layer, pairs)
        b, t = padded.labels.shape
        h, w = padded.masks.shape[-2:]
        logits = F.interpolate(src.float()[:, None], size=(h, w), mode="bilinear", align_corners=False).flatten(1)
        labels = padded.masks.reshape(b * t, h, w)[pairs.batch_idx * t + pairs.target_idx].flatten(1).float()
        focal = sigmoid_focal_per_mask(logits, labels, self.focal_alpha, self.focal_gamma)
        return {"loss_mask": focal.sum() / num_targets, "loss_dice": dice_per_mask(logits, labels).sum() / num_targets}


class BoxesTerm(SetLossTerm):
    """DETR's box terms: L1 (``loss_bbox``) and generalised IoU (``loss_giou``) on normalised boxes.

    Predicted boxes are ``pred_boxes`` float ``[B, Q, 4]`` ``(cx, cy, w, h)`` in ``[0, 1]`` of the
    unpadded image; target boxes (xyxy pixels in the targets) are normalised by each image's
    size once per call.

    Args:
        l1_weight, giou_weight: weights of the two matching costs (DETR: 5, 2).
    """

    loss_names = ("loss_bbox", "loss_giou")
    required_outputs = ("pred_logits", "pred_boxes")

    def __init__(self, l1_weight: float = 5.0, giou_weight: float = 2.0) -> None:
        super().__init__()
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight

    def prepare(self, padded: PaddedTargets) -> Tensor:
        """float32 ``[B, T, 4]`` normalised ``cx, cy, w, h`` target boxes."""
        if padded.boxes is None or padded.image_sizes is None:
            raise ValueError("SetCriterion 'boxes' term: the targets need 'boxes' (and 'image_size')")
        h, w = padded.image_sizes.float().unbind(-1)
        scale = torch.stack([w, h, w, h], -1)[:, None, :]
        return box_convert(padded.boxes.float() / scale, "xyxy", "cxcywh")

    def cost(self, layer: Layer, padded: PaddedTargets, context: Tensor) -> Tensor | None:
        if padded.labels.shape[1] == 0:
            return None
        pred = layer["pred_boxes"]
        return self.l1_weight * box_l1_cost(pred, context) + self.giou_weight * generalized_iou_cost(pred, context)

    def loss(self, layer, padded, matching, pairs, num_targets, context) -> dict[str, Tensor]:
        pred_boxes = layer["pred_boxes"]
        if pairs.batch_idx.numel() == 0:
            zero = _zero(pred_boxes)
            return {"loss_bbox": zero, "loss_giou": zero}
        q = pred_boxes.shape[1]
        src = pred_boxes.float().flatten(0, 1).index_select(0, pairs.batch_idx * q + pairs.pred_idx)
        tgt = context[pairs.batch_idx, pairs.target_idx]
        giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                        reduction="sum")
        return {"loss_bbox": F.l1_loss(src, tgt, reduction="sum") / num_targets, "loss_giou": giou / num_targets}
