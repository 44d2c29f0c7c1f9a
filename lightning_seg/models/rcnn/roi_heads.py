"""RoI heads of Mask R-CNN: proposal sampling, box and mask losses, detections, all batched.

Training: the ground-truth boxes join the padded proposals ``[B, P + G, 4]``, every image's
proposals are matched and sampled in one pass (:mod:`lightning_seg.ops.box_matching`), and the
sampled RoIs of the whole batch go through the heads as one ``[R, 5]`` tensor. Inference:
class-specific boxes of every RoI and class are thresholded and suppressed by one
``batched_nms`` over (image, class) groups, and the top detections of every image kept by rank,
without a per-image loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms

from lightning_seg.models.rcnn.heads import BoxHead, BoxPredictor, MaskHead
from lightning_seg.models.rcnn.rpn import BoxTargets, clip_boxes, top_per_image
from lightning_seg.models.rcnn.settings import RoIHeadsSettings
from lightning_seg.ops.box_matching import (
    batched_box_iou,
    ignore_crowd_overlaps,
    match_boxes,
    sample_balanced,
)
from lightning_seg.ops.roi_pooling import crop_mask_targets, multiscale_roi_align


@dataclass
class Detections:
    """Detections of a batch, grouped by image in decreasing score order.

    Attributes:
        boxes: float ``[D, 4]`` xyxy in input pixels.
        scores: float ``[D]``.
        labels: int64 ``[D]`` contiguous class ids.
        image_index: int64 ``[D]``.
        counts: int64 ``[B]`` detections per image.
        mask_probs: float ``[D, M, M]`` mask probabilities in box coordinates, or None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image_index: Tensor
    counts: Tensor
    mask_probs: Tensor | None = None


class RoIHeads(nn.Module):
    """Box head + predictor and mask head on RoIAlign features of P2-P5.

    Args:
        in_channels: FPN width.
        strides: strides of the levels the heads read (P2-P5: 4, 8, 16, 32).
        num_classes: ``K`` (background is class ``K`` of the box classifier).
        settings: see :class:`~lightning_seg.models.rcnn.settings.RoIHeadsSettings`.
        box_head, box_predictor, mask_head: replace the default heads (injectable modules).
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, settings: RoIHeadsSettings,
                 box_head: nn.Module | None = None, box_predictor: nn.Module | None = None,
                 mask_head: nn.Module | None = None) -> None:
        super().__init__()
        s = self.settings = settings
        self.strides = [int(x) for x in strides]
        self.num_classes = num_classes
        self.box_head = box_head or BoxHead(in_channels, s.box_resolution, s.box_head_convs, s.box_head_conv_dim,
                                            s.box_head_fcs, s.box_head_dim, s.box_head_norm)
        self.box_predictor = box_predictor or BoxPredictor(s.box_head_dim, num_classes, s.class_agnostic_box)
        self.mask_head = mask_head if mask_head is not None or not s.mask_on else MaskHead(
            in_channels, num_classes, s.mask_head_dims, s.mask_head_norm, s.class_agnostic_mask)
        self.box_coder = BoxCoder(tuple(s.box_weights))
        self.channels_last = False
        """Feed the conv heads channels-last RoI features (set by the model with its weights)."""

    def _pool(self, features: Sequence[Tensor], rois: Tensor, size: int, convs: bool = True) -> Tensor:
        pooled = multiscale_roi_align(features, rois, self.strides, size, self.settings.sampling_ratio,
                                      self.settings.aligned)
        return pooled.contiguous(memory_format=torch.channels_last) if self.channels_last and convs else pooled

    def _box_outputs(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        convs = getattr(self.box_head, "num_convs", 1) > 0
        return self.box_predictor(self.box_head(self._pool(features, rois, self.settings.box_resolution, convs)))

    def _mask_logits(self, features: Sequence[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        logits = self.mask_head(self._pool(features, rois, self.settings.mask_resolution))
        if logits.shape[1] == 1:
            return logits[:, 0]
        return logits[torch.arange(logits.shape[0], device=logits.device), labels]

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample_proposals(self, proposals: Tensor, valid: Tensor, targets: BoxTargets) -> tuple[Tensor, ...]:
        """Match and sample the RoIs of every image.

        Args:
            proposals: float ``[B, P, 4]``; valid: bool ``[B, P]``.
            targets: the batch's ground truth.

        Returns:
            ``(image_index, boxes, classes, gt_index, foreground)`` of the ``R`` sampled RoIs:
            int64 ``[R]``, float ``[R, 4]``, int64 ``[R]`` (``K`` = background), int64 ``[R]``
            matched ground truth (column of ``targets.boxes``), bool ``[R]``.
        """
        s = self.settings
        if s.append_gt_boxes:
            proposals = torch.cat([proposals, targets.boxes], 1)
            valid = torch.cat([valid, targets.valid], 1)
        iou = batched_box_iou(targets.boxes, proposals)
        matches, labels = match_boxes(iou, targets.valid, s.positive_iou, s.positive_iou)
        labels = labels.masked_fill(~valid, -1)
        labels = ignore_crowd_overlaps(labels, proposals, targets.crowd_boxes, targets.crowd_valid,
                                       s.crowd_ioa_threshold)
        positive, negative = sample_balanced(labels, s.batch_size_per_image, s.positive_fraction)
        bi, pi = torch.nonzero(positive | negative, as_tuple=True)
        gt = matches[bi, pi]
        fg = positive[bi, pi]
        classes = torch.where(fg, targets.labels[bi, gt], torch.full_like(gt, self.num_classes))
        return bi, proposals[bi, pi], classes, gt, fg

    def losses(self, features: Sequence[Tensor], proposals: Tensor, valid: Tensor,
               targets: BoxTargets) -> dict[str, Tensor]:
        """``loss_cls`` (CE over the sampled RoIs), ``loss_box_reg`` (foreground, divided by the
        number of sampled RoIs), ``loss_mask`` (BCE on the ground-truth class channel)."""
        s = self.settings
        bi, boxes, classes, gt, fg = self.sample_proposals(proposals, valid, targets)
        rois = torch.cat([bi[:, None].to(boxes.dtype), boxes], 1)
        logits, deltas = self._box_outputs(features, rois)
        if classes.numel() == 0:  # no proposal and no ground truth in the batch
            zero = logits.sum() * 0.0 + deltas.sum() * 0.0
            out = {"loss_cls": zero, "loss_box_reg": zero}
            if self.mask_head is not None:
                out["loss_mask"] = self._mask_logits(features, rois, classes).sum() * 0.0
            return out
        loss_cls = F.cross_entropy(logits.float(), classes)
        fi = torch.nonzero(fg).squeeze(1)
        deltas = deltas.float().reshape(deltas.shape[0], deltas.shape[1] // 4, 4)
        cls_fg = classes[fi] if deltas.shape[1] > 1 else torch.zeros_like(classes[fi])
        target_deltas = self.box_coder.encode_single(targets.boxes[bi[fi], gt[fi]].float(), boxes[fi].float())
        loss_box = F.smooth_l1_loss(deltas[fi, cls_fg], target_deltas, beta=s.smooth_l1_beta,
                                    reduction="sum") / max(classes.numel(), 1)
        out = {"loss_cls": loss_cls * s.box_loss_weight, "loss_box_reg": loss_box * s.box_loss_weight}
        if self.mask_head is not None:
            mask_logits = self._mask_logits(features, rois[fi], classes[fi])
            if fi.numel() == 0 or targets.masks is None:
                loss_mask = mask_logits.sum() * 0.0
            else:
                mask_targets = crop_mask_targets(targets.masks, boxes[fi], targets.mask_index[bi[fi], gt[fi]],
                                                 mask_logits.shape[-1], aligned=s.mask_target_aligned,
                                                 threshold=s.mask_target_threshold,
                                                 mask_boxes=targets.boxes[targets.valid])
                loss_mask = F.binary_cross_entropy_with_logits(mask_logits, mask_targets)
            out["loss_mask"] = loss_mask * s.mask_loss_weight
        return out

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, features: Sequence[Tensor], proposals: Tensor, valid: Tensor, image_sizes: Tensor,
               with_masks: bool = True) -> Detections:
        """Scored, suppressed detections (and their mask probabilities) of every image.

        Args:
            features: P2-P5 float ``[B, C, h_l, w_l]``.
            proposals: float ``[B, P, 4]``; valid: bool ``[B, P]``.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` before padding.
            with_masks: run the mask head on the detections.
        """
        bi, pi = torch.nonzero(valid, as_tuple=True)
        boxes = proposals[bi, pi]
        rois = torch.cat([bi[:, None].to(boxes.dtype), boxes], 1)
        logits, deltas = self._box_outputs(features, rois)
        det = self.select_detections(logits, deltas, boxes, bi, image_sizes)
        if self.mask_head is not None and with_masks:
            det_rois = torch.cat([det.image_index[:, None].to(det.boxes.dtype), det.boxes], 1)
            det.mask_probs = self._mask_logits(features, det_rois, det.labels).sigmoid()
        return det

    @torch.no_grad()
    def select_detections(self, logits: Tensor, deltas: Tensor, boxes: Tensor, image_index: Tensor,
                          image_sizes: Tensor) -> Detections:
        """Box-head outputs of the RoIs of a batch -> thresholded, suppressed, top-k detections.

        The same detections as suppressing every (RoI, class) candidate above the score
        threshold (torchvision, detectron2), from far fewer boxes: greedy NMS decides a box
        from the higher-scored boxes of its group only, so NMS over each image's ``M``
        highest-scored candidates keeps exactly the full run's decisions for them; once at
        least ``detections_per_image`` of them survive (or ``M`` covers every candidate) the
        top detections are final. ``M`` starts at ``4 * detections_per_image`` (candidates tied
        with the ``M``-th score included) and grows by 4x while an image needs it.

        Args:
            logits: float ``[R, K + 1]``; deltas: float ``[R, 4K]`` (or ``[R, 4]``).
            boxes: float ``[R, 4]`` the RoIs, grouped by image; image_index: int64 ``[R]``.
            image_sizes: int64 ``[B, 2]``.

        Returns:
            :class:`Detections` without masks.
        """
        s, k = self.settings, self.num_classes
        b, r = image_sizes.shape[0], boxes.shape[0]
        if r == 0:
            empty = boxes.new_zeros(0)
            index = torch.zeros(0, dtype=torch.int64, device=boxes.device)
            return Detections(boxes.new_zeros(0, 4), empty, index, index, torch.zeros(b, dtype=torch.int64,
                                                                                     device=boxes.device))
        scores = F.softmax(logits.float(), -1)[:, :k]
        counts = torch.bincount(image_index, minlength=b)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(r, device=boxes.device) - starts[image_index]
        width = int(counts.max()) * k
        # per-image rows of candidate scores, -1 where there is none (NaN scores are none)
        table = scores.new_full((b, width), -1.0)
        cols = (rank[:, None] * k + torch.arange(k, device=boxes.device)).reshape(-1)
        table[image_index.repeat_interleave(k), cols] = scores.reshape(-1)
        table = table.masked_fill(~(table > s.score_threshold), -1.0)
        available = (table >= 0).sum(1)
        m = min(width, 4 * s.detections_per_image)
        # decode in float32 even under autocast, as detectron2 does
        deltas = deltas.float().reshape(r, deltas.shape[1] // 4, 4)
        boxes = boxes.float()
        while True:
            # every candidate scoring at least each image's m-th score (ties at the cut included),
            # in (image, RoI, class) order: NMS breaks score ties by input order
            cut = table.topk(m, dim=1).values[:, -1:].clamp(min=0)
            chosen = (table >= cut) & (table >= 0)
            bi, flat = torch.nonzero(chosen, as_tuple=True)
            roi = starts[bi] + torch.div(flat, k, rounding_mode="floor")
            cls = flat % k
            d = deltas[roi, cls if deltas.shape[1] > 1 else torch.zeros_like(cls)]
            pred = self.box_coder.decode_single(d, boxes[roi])
            pred = clip_boxes(pred, image_sizes[bi])
            wh = pred[:, 2:] - pred[:, :2]
            ok = torch.nonzero((wh > s.min_box_size).all(1) & torch.isfinite(pred).all(1)).squeeze(1)
            cand_boxes, cand_scores, cand_cls, cand_img = pred[ok], table[bi, flat][ok], cls[ok], bi[ok]
            # float64 offsets: (image, class) groups are separated by coordinate offsets in NMS
            kept = batched_nms(cand_boxes.double(), cand_scores.double(), cand_img * k + cand_cls, s.nms_threshold)
            per_image = torch.bincount(cand_img[kept], minlength=b)
            done = (per_image >= s.detections_per_image) | (chosen.sum(1) >= available)
            if m >= width or bool(done.all()):
                break
            m = min(width, m * 4)
        order, _ = top_per_image(cand_img[kept], b, s.detections_per_image)
        kept = kept[order]
        img = cand_img[kept]
        return Detections(cand_boxes[kept], cand_scores[kept], cand_cls[kept], img, torch.bincount(img, minlength=b))
