"""YOLACT's losses (its ``MultiBoxLoss`` with the ``yolact_base`` settings), batched over images.

Priors are matched to the ground truth by :func:`~lightning_seg.ops.yolact_match` (positive at
IoU >= 0.5, background < 0.4, neutral between and inside crowd regions). With ``P`` the number
of positive priors of the batch:

* class: softmax cross-entropy of the positives and of the OHEM negatives (3 per positive,
  the highest background loss), summed, / P;
* box: smooth-L1 (beta 1) of the coded boxes of the positives, summed, x 1.5 / P;
* mask: for at most 100 random positives per image, the BCE of ``prototypes . coefficients``
  against the ground-truth mask at prototype resolution, summed inside the ground-truth box
  (YOLACT's crop, 1 pixel of padding) and divided by the box area in prototype pixels, scaled
  by the image's positives / trained positives when it had more than 100, summed, x 6.125 / P;
* semantic: per-class sigmoid BCE of the P3 logits against the union of each class's masks at
  P3 resolution, summed, / (h3 w3) / B.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from lightning_seg.losses.solo_loss import downsample_masks
from lightning_seg.ops.dynamic_masks import linear_combination_masks, yolact_box_crop
from lightning_seg.ops.image_groups import group_by_image
from lightning_seg.ops.yolact_matching import ohem_negatives, yolact_match

__all__ = ["YOLACTCriterion", "random_subset_per_image"]


class PrototypeOutputs(Protocol):
    """What :class:`YOLACTCriterion` reads (:class:`~lightning_seg.models.dense_instance.YOLACTOutputs`)."""

    class_logits: Tensor
    box_deltas: Tensor
    coefficients: Tensor
    prototypes: Tensor
    semantic_logits: Tensor
    anchors: Tensor
    padded_size: tuple[int, int]


def random_subset_per_image(image_index: Tensor, num_images: int, limit: int, generator: torch.Generator | None = None) -> Tensor:
    """bool ``[N]``: at most ``limit`` rows per image, chosen uniformly at random (all rows of an
    image with fewer). ``image_index`` int64 ``[N]``."""
    n = image_index.shape[0]
    # rank of each row among its image's rows in a random order
    perm = torch.randperm(n, generator=generator, device=image_index.device)
    keep = torch.empty(n, dtype=torch.bool, device=image_index.device)
    keep[perm] = group_by_image(image_index[perm], num_images).rank < limit
    return keep


class YOLACTCriterion(nn.Module):
    """YOLACT's targets and losses for a batch.

    Args:
        num_classes: ``K`` (the background is class ``K``).
        positive_iou, negative_iou, crowd_iou: prior matching.
        negpos_ratio, min_negatives: OHEM.
        class_loss_weight, box_loss_weight, mask_loss_weight, semantic_loss_weight: term weights.
        masks_per_image: positives per image in the mask loss.
        box_weights: the box coder weights (10, 10, 5, 5).
    """

    def __init__(self, num_classes: int, positive_iou: float = 0.5, negative_iou: float = 0.4, crowd_iou: float = 0.7,
                 negpos_ratio: int = 3, min_negatives: int = 0, class_loss_weight: float = 1.0,
                 box_loss_weight: float = 1.5, mask_loss_weight: float = 6.125, semantic_loss_weight: float = 1.0,
                 masks_per_image: int = 100, box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.positive_iou, self.negative_iou, self.crowd_iou = positive_iou, negative_iou, crowd_iou
        self.negpos_ratio, self.min_negatives = negpos_ratio, min_negatives
        self.weights = dict(loss_cls=class_loss_weight, loss_box=box_loss_weight, loss_mask=mask_loss_weight,
                            loss_semantic=semantic_loss_weight)
        self.masks_per_image = masks_per_image
        self.box_coder = BoxCoder(box_weights)

    def forward(self, outputs: PrototypeOutputs, boxes: Tensor, labels: Tensor, valid: Tensor, masks: Tensor,
                mask_index: Tensor, crowd_boxes: Tensor | None = None, crowd_valid: Tensor | None = None) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box", "loss_mask", "loss_semantic"}`` weighted float scalars.

        Args:
            outputs: the model's :class:`~lightning_seg.models.dense_instance.YOLACTOutputs`.
            boxes: float ``[B, G, 4]`` xyxy ground truth in input pixels; labels int64 ``[B, G]``;
                valid bool ``[B, G]``.
            masks: bool ``[M, Hp, Wp]`` ground-truth masks; mask_index int64 ``[B, G]`` (-1 padding).
            crowd_boxes, crowd_valid: float ``[B, C, 4]`` / bool ``[B, C]`` crowd regions.
        """
        k = self.num_classes
        b = boxes.shape[0]
        logits = outputs.class_logits.float()
        match = yolact_match(boxes, valid, outputs.anchors, crowd_boxes, crowd_valid, self.positive_iou,
                             self.negative_iou, self.crowd_iou)
        pos = match.state == 1
        num_pos = pos.sum().clamp(min=1).float()
        target = torch.where(pos, labels.gather(1, match.gt_index), k)
        neg = ohem_negatives(logits, match.state, self.negpos_ratio, background=k, min_negatives=self.min_negatives)
        chosen = pos | neg
        loss_cls = F.cross_entropy(logits[chosen], target[chosen], reduction="sum") / num_pos

        pb, pa = torch.nonzero(pos, as_tuple=True)
        g = match.gt_index[pb, pa]
        gt = boxes[pb, g].float()
        codes = self.box_coder.encode_single(gt, outputs.anchors[pa].float())
        loss_box = F.smooth_l1_loss(outputs.box_deltas[pb, pa].float(), codes, beta=1.0, reduction="sum") / num_pos
        loss_box = loss_box + outputs.box_deltas.sum() * 0.0  # a gradient path without positives (DDP)

        # mask loss: a random subset of the positives of each image
        proto = outputs.prototypes.float()
        h, w = proto.shape[-2:]
        keep = random_subset_per_image(pb, b, self.masks_per_image)
        mb, mg, ma = pb[keep], g[keep], pa[keep]
        # an image with more positives than it trains scales its terms by positives / trained (YOLACT)
        counts = torch.bincount(pb, minlength=b).float()
        scale = counts / counts.clamp(max=self.masks_per_image).clamp(min=1)
        loss_mask = proto.sum() * 0.0 + outputs.coefficients.sum() * 0.0
        if mb.numel():
            mask_logits = linear_combination_masks(proto, outputs.coefficients[mb, ma].float(), mb)
            rows, inverse = torch.unique(mask_index[mb, mg], return_inverse=True)
            targets = downsample_masks(masks[rows], (h, w), strict=True)[inverse]
            sy, sx = h / outputs.padded_size[0], w / outputs.padded_size[1]
            box = boxes[mb, mg].float() * boxes.new_tensor([sx, sy, sx, sy])
            inside = yolact_box_crop(box, (h, w))
            bce = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
            # degenerate boxes (under a prototype pixel) count as one pixel
            area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).clamp(min=1.0)
            per_mask = (bce * inside).flatten(1).sum(1) / area * scale[mb]
            loss_mask = loss_mask + per_mask.sum() / num_pos

        # semantic auxiliary loss: union of each class's masks at P3 resolution
        sem = outputs.semantic_logits.float()
        hs, ws = sem.shape[-2:]
        seg = torch.zeros(b * k, hs * ws, device=sem.device)
        vb, vg = torch.nonzero(valid & (mask_index >= 0), as_tuple=True)
        if vb.numel():
            at_p3 = downsample_masks(masks, (hs, ws), strict=True).flatten(1)[mask_index[vb, vg]]
            # 0/1 masks: the union is the clamped sum
            seg.index_add_(0, vb * k + labels[vb, vg], at_p3).clamp_(max=1.0)
        loss_sem = F.binary_cross_entropy_with_logits(sem.flatten(0, 1).flatten(1), seg, reduction="sum") / (hs * ws) / b
        terms = dict(loss_cls=loss_cls, loss_box=loss_box, loss_mask=loss_mask, loss_semantic=loss_sem)
        return {name: v * self.weights[name] for name, v in terms.items()}
