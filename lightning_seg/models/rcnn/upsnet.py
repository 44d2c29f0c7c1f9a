"""UPSNet (Xiong et al., 2019): Mask R-CNN + a deformable semantic head over all classes + a
parameter-free panoptic head that learns the fusion, with an "unknown" class.

Training feeds the panoptic head the ground-truth boxes and classes of a random
``keep_instance_fraction`` of every image's instances; the pixels of the others are labelled
"unknown", so that channel learns to claim thing pixels no instance explains. Inference takes the
detections scoring at least ``instance_score_threshold``, suppresses them class-agnostically,
drops those whose mask (at the logits' resolution) is more than ``instance_covered_threshold``
covered by higher-scored ones (of any class; ``instance_covered_same_class`` counts only those
of its class, as UPSNet's code), and reads the panoptic argmax; unknown pixels are void. The
panoptic logits are built at 1/4 of the input (UPSNet's code builds them at full size in
inference) and resized to each output band by band. Not reproduced: UPSNet's code's extra step
that relabels an instance as stuff when half its pixels vote for one stuff class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from lightning_seg.models.rcnn.panoptic_fpn import (
    IGNORE,
    PanopticOutputs,
    PanopticRCNN,
    PanopticTargets,
)
from lightning_seg.models.rcnn.settings import PanopticSettings
from lightning_seg.models.rcnn.targets import segment_maps
from lightning_seg.models.semantic_heads import UPSNetSemanticHead
from lightning_seg.ops.mask_inference import resized_argmax
from lightning_seg.ops.mask_paste import paste_masks_batched
from lightning_seg.ops.panoptic_fpn_fusion import paste_in_score_order
from lightning_seg.ops.upsnet_panoptic import (
    upsnet_panoptic_inference,
    upsnet_panoptic_logits,
)


def random_keep(valid: Tensor, fraction: float) -> Tensor:
    """A uniformly random ``fraction`` of every image's instances, as UPSNet keeps them.

    Args:
        valid: bool ``[B, G]`` real ground-truth columns.
        fraction: share to keep; the count is rounded down, and at least one is kept.

    Returns:
        bool ``[B, G]``, a subset of ``valid``.
    """
    r = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, 2.0)
    rank = r.argsort(1).argsort(1)
    n = valid.sum(1)
    n_keep = torch.where(n > 0, torch.floor(n.double() * fraction).long().clamp(min=1), 0)
    return valid & (rank < n_keep[:, None])


def drop_covered(masks: Sequence[Tensor], scores: Tensor, labels: Tensor, threshold: float,
                 same_class: bool = False) -> Tensor:
    """Which instances to keep: those at most ``threshold`` covered by higher-scored kept ones.

    Args:
        masks: per image bool ``[n_b, h, w]``, the instances grouped by image.
        scores: float ``[N]``; labels: int64 ``[N]`` (``N = sum n_b``).
        threshold: largest covered fraction of a kept mask.
        same_class: only masks of the same class cover (UPSNet's code).

    Returns:
        bool ``[N]``.
    """
    counts = [int(m.shape[0]) for m in masks]
    if not same_class:
        return torch.cat(paste_in_score_order(list(masks), list(scores.split(counts)), threshold)[1])
    # one group per (image, class), grouped by a stable sort: other classes do not cover
    image = torch.repeat_interleave(torch.arange(len(counts), device=scores.device),
                                    torch.tensor(counts, device=scores.device))
    group = image * (int(labels.max()) + 1) + labels
    by_group = torch.sort(group, stable=True)[1]
    sizes = torch.unique_consecutive(group[by_group], return_counts=True)[1].tolist()
    flat = torch.cat(list(masks))[by_group]
    _, accepted = paste_in_score_order(list(flat.split(sizes)), list(scores[by_group].split(sizes)), threshold)
    keep = torch.empty_like(by_group, dtype=torch.bool)
    keep[by_group] = torch.cat(accepted)
    return keep


class UPSNet(PanopticRCNN):
    """UPSNet on a ResNet + FPN.

    Training returns the Mask R-CNN terms, ``loss_sem_seg`` (cross-entropy over all classes of
    the x4 upsampled semantic logits) and ``loss_panoptic`` (cross-entropy of the x4 upsampled
    panoptic logits against the panoptic target: stuff class, the instance's slot, unknown for
    dropped instances, ignored on crowd and void), unweighted by task (see :meth:`task_weights`;
    UPSNet: semantic 0.2, panoptic 0.1).

    Args:
        num_classes, thing_classes, panoptic: see :class:`~lightning_seg.models.rcnn.panoptic_fpn.PanopticRCNN`.
        **mask_rcnn_args: :class:`~lightning_seg.models.rcnn.MaskRCNN` arguments.
    """

    semantic_loss_weight = 0.2
    semantic_deformable = True
    prediction_kinds = ("panoptic", "instance", "semantic")

    def __init__(self, num_classes: int, thing_classes: Sequence[int], panoptic: PanopticSettings | dict[str, Any] | None = None,
                 **mask_rcnn_args: Any) -> None:
        super().__init__(num_classes, thing_classes, panoptic, **mask_rcnn_args)
        p = self.panoptic
        self.semantic_head = UPSNetSemanticHead(self.fpn_channels, self.fpn.strides[:4], num_classes, p.semantic_channels,
                                                p.semantic_convs, p.semantic_norm, bool(p.semantic_deformable))
        # UPSNet drops the unknown channel when training keeps every instance
        self.with_unknown = self.panoptic.keep_instance_fraction < 1.0
        stuff_index = torch.full((num_classes,), -1, dtype=torch.int64)
        stuff_index[self.stuff_ids] = torch.arange(self.stuff_ids.numel())
        self.register_buffer("stuff_index", stuff_index, persistent=False)

    def task_weights(self) -> dict[str, float]:
        return {**super().task_weights(), "panoptic": self.panoptic.panoptic_loss_weight}

    def semantic_class_map(self) -> Tensor:
        """Every class keeps its id: the semantic head predicts all ``K`` classes."""
        return torch.arange(self.total_classes, device=self.stuff_ids.device)

    def targets_from_batch(self, targets: Sequence[dict[str, Any]]) -> PanopticTargets:
        """The base targets plus the segment maps the panoptic loss needs."""
        out = super().targets_from_batch(targets)
        out.segments, out.segment_columns = segment_maps(targets)
        out.segment_classes = torch.full_like(out.segment_columns, -1)
        out.segment_crowd = torch.zeros_like(out.segment_columns, dtype=torch.bool)
        for i, t in enumerate(targets):
            out.segment_classes[i, : t["labels"].numel()] = t["labels"]
            out.segment_crowd[i, : t["labels"].numel()] = t["iscrowd"]
        return out

    def extra_losses(self, features: list[Tensor], semantic: Tensor, targets: PanopticTargets) -> dict[str, Tensor]:
        """``loss_panoptic``."""
        return {"loss_panoptic": self.panoptic_loss(features, semantic, targets)}

    def panoptic_target(self, targets: PanopticTargets, keep: Tensor, num_slots: int) -> Tensor:
        """int64 ``[B, Hp, Wp]`` channel of every pixel: its stuff class, its kept instance's slot
        (slots in ground-truth column order), unknown (``S + num_slots``) for a dropped instance,
        255 on crowd, void and things that are not ground-truth instances.

        Args:
            targets: with the segment maps.
            keep: bool ``[B, G]`` ground-truth columns given to the panoptic head.
            num_slots: ``N``.
        """
        s = self.stuff_ids.numel()
        cls, col = targets.segment_classes, targets.segment_columns
        stuff = self.stuff_index[cls.clamp(min=0)]
        slot = torch.cumsum(keep.long(), 1) - 1
        c = col.clamp(min=0)
        instance = torch.where(keep.gather(1, c), s + slot.gather(1, c), torch.full_like(c, s + num_slots))
        channel = torch.where((cls >= 0) & (stuff >= 0) & ~targets.segment_crowd, stuff,
                              torch.where(col >= 0, instance, torch.full_like(c, IGNORE)))
        seg = targets.segments
        out = torch.gather(channel, 1, seg.clamp(min=0).flatten(1)).view_as(seg)
        return torch.where(seg >= 0, out, torch.full_like(out, IGNORE))

    def panoptic_loss(self, features: list[Tensor], semantic: Tensor, targets: PanopticTargets) -> Tensor:
        """Cross-entropy of the panoptic logits built from the kept ground-truth instances.

        Args:
            features: FPN levels P2-P6 float ``[B, C, h_l, w_l]``.
            semantic: float ``[B, K, h, w]`` semantic logits at P2's stride.
            targets: the batch's ground truth with its segment maps.

        Returns:
            float scalar.
        """
        bt = targets.boxes
        keep = random_keep(bt.valid, self.panoptic.keep_instance_fraction)
        bi, gi = torch.nonzero(keep, as_tuple=True)
        num_slots = max(1, int(keep.sum(1).max()))
        boxes = bt.boxes[bi, gi]
        labels = bt.labels[bi, gi]
        rois = torch.cat([bi[:, None].to(boxes.dtype), boxes], 1)
        mask_logits = self.roi_heads._mask_logits(features[:4], rois, labels)
        stride = self.fpn.strides[0]
        logits = upsnet_panoptic_logits(semantic.float(), self.stuff_ids, self.thing_ids, mask_logits.float(),
                                        boxes / stride, self.thing_ids[labels], bi, num_slots, self.with_unknown)
        target = self.panoptic_target(targets, keep, num_slots)
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if not bool((target != IGNORE).any()):
            return up.sum() * 0.0
        return F.cross_entropy(up, target, ignore_index=IGNORE)

    @torch.no_grad()
    def panoptic_outputs(self, features: list[Tensor], semantic: Tensor, images: Tensor,
                          image_sizes: Tensor) -> PanopticOutputs:
        p = self.panoptic
        det = self.detect(features, images, image_sizes, with_masks=False)
        b = image_sizes.shape[0]
        h, w = semantic.shape[-2:]
        stride = self.fpn.strides[0]
        rois = torch.cat([det.image_index[:, None].to(det.boxes.dtype), det.boxes], 1)
        mask_logits = self.roi_heads._mask_logits(features[:4], rois, det.labels).float()
        det.mask_probs = mask_logits.sigmoid()
        idx = torch.nonzero(det.scores >= p.instance_score_threshold).squeeze(1)
        idx = idx[batched_nms(det.boxes[idx].double(), det.scores[idx].double(), det.image_index[idx],
                              p.instance_nms_threshold)]
        # grouped by image, in decreasing score order within each (batched_nms sorts by score)
        idx = idx[torch.sort(det.image_index[idx], stable=True)[1]]
        counts = torch.bincount(det.image_index[idx], minlength=b).tolist()
        binary = paste_masks_batched(det.mask_probs[idx], det.boxes[idx] / stride, det.image_index[idx],
                                     [(h, w)] * b, threshold=0.5)
        if idx.numel():
            idx = idx[drop_covered(binary, det.scores[idx], det.labels[idx], p.instance_covered_threshold,
                                   p.instance_covered_same_class)]
        counts = torch.bincount(det.image_index[idx], minlength=b)
        num_slots = max(1, int(counts.max())) if b else 1
        logits = upsnet_panoptic_logits(semantic.float(), self.stuff_ids, self.thing_ids, mask_logits[idx],
                                        det.boxes[idx] / stride, self.thing_ids[det.labels[idx]], det.image_index[idx],
                                        num_slots, self.with_unknown)
        return PanopticOutputs(det, semantic, (int(images.shape[-2]), int(images.shape[-1])), logits, idx)

    @torch.no_grad()
    def postprocess(self, outputs: PanopticOutputs, image_sizes: Tensor,  # type: ignore[override]
                    output_sizes: list[tuple[int, int]]) -> dict[str, list[Any]]:
        """Predictions at ``output_sizes``.

        Args:
            outputs: from :meth:`forward` in eval mode.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` of the images before padding.
            output_sizes: ``(H0, W0)`` of each result.

        Returns:
            ``{"panoptic": B PanopticPrediction (int32 [H0, W0] ids), "instance": B
            InstancePrediction, "semantic": B int64 [H0, W0] class maps}``.
        """
        det, idx = outputs.detections, outputs.panoptic_index
        b = image_sizes.shape[0]
        sizes = [tuple(int(v) for v in s) for s in image_sizes]
        counts = torch.bincount(det.image_index[idx], minlength=b).tolist()
        labels = list(self.thing_ids[det.labels[idx]].split(counts))
        scores = list(det.scores[idx].split(counts))
        panoptic = upsnet_panoptic_inference(outputs.panoptic_logits, counts, self.stuff_ids, labels, scores,
                                             outputs.padded_size, sizes, output_sizes, self.panoptic.stuff_area_threshold)
        semantic = [resized_argmax(outputs.semantic_logits[i], outputs.padded_size, sizes[i], size)
                    for i, size in enumerate(output_sizes)]
        return {"panoptic": panoptic, "instance": self.instance_predictions(outputs, image_sizes, output_sizes),
                "semantic": semantic}
