"""Panoptic FPN (Kirillov et al., 2019): Mask R-CNN + a semantic FPN head on the same FPN,
fused into panoptic segmentation by detectron2's heuristic (:func:`~lightning_seg.ops.panoptic_fpn_fusion`).

:class:`PanopticRCNN` is the part Panoptic FPN and UPSNet share: the thing/stuff split of the
classes (the R-CNN heads see the thing classes only, contiguous), the ground truth of a batch,
and the task of each loss term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.models.rcnn.mask_rcnn import MaskRCNN
from lightning_seg.models.rcnn.roi_heads import Detections
from lightning_seg.models.rcnn.rpn import BoxTargets
from lightning_seg.models.rcnn.settings import PanopticSettings, settings_from
from lightning_seg.models.rcnn.targets import (
    box_targets_from_batch,
    semantic_targets,
)
from lightning_seg.models.semantic_heads import SemanticFPNHead
from lightning_seg.ops.mask_inference import resized_argmax
from lightning_seg.ops.panoptic_fpn_fusion import panoptic_fpn_fusion
from lightning_seg.structures import InstancePrediction

IGNORE = 255


@dataclass
class PanopticTargets:
    """Ground truth of a batch for the panoptic R-CNN models.

    Attributes:
        boxes: the instance ground truth (thing classes as contiguous thing indices).
        semantic: int64 ``[B, Hp, Wp]`` labels of the semantic head (255: ignored).
        segments: int64 ``[B, Hp, Wp]`` segment of every pixel (-1: none), or None.
        segment_columns: int64 ``[B, N]`` ground-truth column of every segment (-1: not an
            instance), or None.
        segment_classes: int64 ``[B, N]`` class of every segment (-1: padding), or None.
        segment_crowd: bool ``[B, N]`` crowd segments, or None.
    """

    boxes: BoxTargets
    semantic: Tensor
    segments: Tensor | None = None
    segment_columns: Tensor | None = None
    segment_classes: Tensor | None = None
    segment_crowd: Tensor | None = None


@dataclass
class PanopticOutputs:
    """Eval-mode outputs of a panoptic R-CNN model.

    Attributes:
        detections: every detection (for instance AP), thing classes as thing indices.
        semantic_logits: float ``[B, C, h, w]`` of the semantic head at the finest FPN stride.
        panoptic_logits: UPSNet: float ``[B, S + N + 1, h, w]``; None for Panoptic FPN.
        panoptic_index: UPSNet: int64 ``[D']`` rows of ``detections`` in the panoptic slots.
        padded_size: ``(Hp, Wp)`` of the input.
    """

    detections: Detections
    semantic_logits: Tensor
    padded_size: tuple[int, int]
    panoptic_logits: Tensor | None = None
    panoptic_index: Tensor | None = None


class PanopticRCNN(MaskRCNN):
    """Mask R-CNN on the thing classes of a panoptic dataset, plus what a semantic branch needs.

    A subclass builds ``semantic_head`` (FPN levels P2-P5 -> logits at P2's stride) and may
    override :meth:`panoptic_outputs` and :meth:`extra_losses`; :meth:`forward` is shared.

    Args:
        num_classes: ``K``, all classes (things and stuff).
        thing_classes: contiguous ids of the thing classes (the R-CNN heads' classes, in order).
        panoptic: :class:`~lightning_seg.models.rcnn.settings.PanopticSettings` (or a mapping).
        **mask_rcnn_args: :class:`~lightning_seg.models.rcnn.MaskRCNN` arguments.
    """

    semantic_loss_weight = 0.5
    semantic_deformable = False
    prediction_kinds: tuple[str, ...] = ("panoptic", "instance")
    """What :meth:`postprocess` returns."""

    def __init__(self, num_classes: int, thing_classes: Sequence[int], panoptic: PanopticSettings | dict[str, Any] | None = None,
                 **mask_rcnn_args: Any) -> None:
        things = sorted({int(c) for c in thing_classes})
        if not things or things[0] < 0 or things[-1] >= num_classes:
            raise ValueError(f"model.thing_classes must be non-empty ids in [0, {num_classes}), got {list(thing_classes)}")
        stuff = [c for c in range(num_classes) if c not in set(things)]
        if not stuff:
            raise ValueError("a panoptic R-CNN model needs stuff classes: every class is a thing class")
        super().__init__(len(things), **mask_rcnn_args)
        if self.roi_heads.mask_head is None:
            raise ValueError("model.roi_heads.mask_on: a panoptic R-CNN model needs the mask head")
        s = settings_from(panoptic, PanopticSettings, "model.panoptic")
        self.panoptic = replace(
            s,
            semantic_loss_weight=self.semantic_loss_weight if s.semantic_loss_weight is None else s.semantic_loss_weight,
            semantic_deformable=self.semantic_deformable if s.semantic_deformable is None else s.semantic_deformable,
        )
        self.total_classes = num_classes
        self.register_buffer("thing_ids", torch.tensor(things), persistent=False)
        self.register_buffer("stuff_ids", torch.tensor(stuff), persistent=False)
        thing_index = torch.full((num_classes,), -1, dtype=torch.int64)
        thing_index[things] = torch.arange(len(things))
        self.register_buffer("thing_index", thing_index, persistent=False)

    # ---------------------------------------------------------------- losses
    def task_weights(self) -> dict[str, float]:
        """Fixed weight of each task of the loss."""
        return {"instance": self.panoptic.instance_loss_weight, "semantic": self.panoptic.semantic_loss_weight}

    def loss_tasks(self, terms: dict[str, Tensor]) -> dict[str, str]:
        """The task of each loss term."""
        special = {"loss_sem_seg": "semantic", "loss_panoptic": "panoptic"}
        return {k: special.get(k, "instance") for k in terms}

    def semantic_class_map(self) -> Tensor:
        """int64 ``[K]`` label of every class for the semantic head."""
        raise NotImplementedError

    def targets_from_batch(self, targets: Sequence[dict[str, Any]]) -> PanopticTargets:
        """The ground truth of a batch (instances with thing-index labels, semantic labels)."""
        boxes = box_targets_from_batch(targets, with_masks=self.roi_heads.mask_head is not None)
        boxes.labels = self.thing_index[boxes.labels].clamp(min=0)
        return PanopticTargets(boxes, semantic_targets(targets, self.semantic_class_map(), IGNORE))

    @staticmethod
    def _semantic_loss(logits: Tensor, target: Tensor) -> Tensor:
        # logits at the finest stride, brought to the input size as the papers do (x4 bilinear)
        up = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        if not bool((target != IGNORE).any()):
            return up.sum() * 0.0
        return F.cross_entropy(up, target, ignore_index=IGNORE)

    # ---------------------------------------------------------------- the two models
    def forward(self, images: Tensor, image_sizes: Tensor,
                targets: PanopticTargets | None = None) -> dict[str, Tensor] | PanopticOutputs:
        """Loss terms (with ``targets``) or :class:`PanopticOutputs`.

        Args:
            images: float ``[B, 3, Hp, Wp]`` in ``[0, 1]``, padded.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` before padding.
            targets: from :meth:`targets_from_batch` (training).
        """
        features = self.features(images)
        semantic = self.semantic_head(features[:4])
        if targets is None:
            return self.panoptic_outputs(features, semantic, images, image_sizes)
        losses = self.instance_losses(features, images, image_sizes, targets.boxes)
        losses["loss_sem_seg"] = self._semantic_loss(semantic, targets.semantic)
        losses.update(self.extra_losses(features, semantic, targets))
        return losses

    def panoptic_outputs(self, features: list[Tensor], semantic: Tensor, images: Tensor,
                         image_sizes: Tensor) -> PanopticOutputs:
        """Eval-mode outputs from FPN levels P2-P6 and the semantic logits ``[B, C, h, w]``."""
        return PanopticOutputs(self.detect(features, images, image_sizes), semantic,
                               (int(images.shape[-2]), int(images.shape[-1])))

    def extra_losses(self, features: list[Tensor], semantic: Tensor, targets: PanopticTargets) -> dict[str, Tensor]:
        """Loss terms beyond Mask R-CNN's and the semantic cross-entropy (none here)."""
        return {}

    def instance_predictions(self, outputs: PanopticOutputs, image_sizes: Tensor,
                             output_sizes: list[tuple[int, int]]) -> list[InstancePrediction]:
        """Every detection at the output sizes, with its class id among all ``K`` classes.

        Args:
            outputs: eval-mode outputs.
            image_sizes: int64 ``[B, 2]`` sizes the detections refer to.
            output_sizes: ``(H0, W0)`` of each output.

        Returns:
            ``B`` :class:`~lightning_seg.structures.InstancePrediction`: bool masks ``[M, H0, W0]``,
            int64 labels (class ids), float scores ``[M]``, float boxes ``[M, 4]``.
        """
        preds = MaskRCNN.postprocess(self, outputs.detections, image_sizes, output_sizes)
        for p in preds:
            p["labels"] = self.thing_ids[p["labels"]]
        return preds


class PanopticFPN(PanopticRCNN):
    """Panoptic FPN: Mask R-CNN + :class:`~lightning_seg.models.semantic_heads.SemanticFPNHead`
    over P2-P5 predicting the stuff classes and one "things" class (last), detectron2's recipe.

    Training returns the Mask R-CNN terms and ``loss_sem_seg`` (cross-entropy of the x4 upsampled
    logits, ignore 255), unweighted by task (see :meth:`task_weights`). Inference fuses the
    detections scoring at least ``instance_score_threshold`` with the semantic argmax by
    :func:`~lightning_seg.ops.panoptic_fpn_fusion` at each output size.

    Args:
        num_classes, thing_classes, panoptic: see :class:`PanopticRCNN`.
        **mask_rcnn_args: :class:`~lightning_seg.models.rcnn.MaskRCNN` arguments.
    """

    def __init__(self, num_classes: int, thing_classes: Sequence[int], panoptic: PanopticSettings | dict[str, Any] | None = None,
                 **mask_rcnn_args: Any) -> None:
        super().__init__(num_classes, thing_classes, panoptic, **mask_rcnn_args)
        p = self.panoptic
        self.semantic_head = SemanticFPNHead(self.fpn_channels, self.fpn.strides[:4], self.stuff_ids.numel() + 1,
                                             p.semantic_channels, p.semantic_norm)
        if self.channels_last:
            self.semantic_head.to(memory_format=torch.channels_last)

    def semantic_class_map(self) -> Tensor:
        """Stuff class ``stuff_ids[j]`` -> ``j``; every thing class -> ``S`` ("things")."""
        out = torch.full((self.total_classes,), self.stuff_ids.numel(), dtype=torch.int64, device=self.stuff_ids.device)
        out[self.stuff_ids] = torch.arange(self.stuff_ids.numel(), device=self.stuff_ids.device)
        return out

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
            InstancePrediction}`` (see :mod:`lightning_seg.structures`).
        """
        p = self.panoptic
        instances = self.instance_predictions(outputs, image_sizes, output_sizes)
        # semantic channel -> class id: stuff classes, and any thing class for "things"
        to_class = torch.cat([self.stuff_ids, self.thing_ids[:1]])
        semantics = [to_class[resized_argmax(outputs.semantic_logits[i], outputs.padded_size,
                                             tuple(int(v) for v in image_sizes[i]), size)]
                     for i, size in enumerate(output_sizes)]
        panoptic = panoptic_fpn_fusion(instances, semantics, self.thing_ids, self.total_classes,
                                       p.overlap_threshold, p.stuff_area_threshold, p.instance_score_threshold)
        return {"panoptic": panoptic, "instance": instances}

