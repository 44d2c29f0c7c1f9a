"""Mask R-CNN (He et al., 2017) on a ResNet + FPN: RPN, RoIAlign box head, mask head.

Input is the batch contract's padded ``images`` in ``[0, 1]`` (the backbone normalises) and the
size of every image before padding; nothing is resized inside the model, unlike torchvision's
``GeneralizedRCNNTransform``: the data layer resizes. Detections are in input pixels;
:meth:`MaskRCNN.postprocess` scales them to any output size and pastes the masks.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.layers import Norm
from lightning_seg.models.necks import FPN
from lightning_seg.models.rcnn.roi_heads import Detections, RoIHeads
from lightning_seg.models.rcnn.rpn import BoxTargets, RegionProposalNetwork, clip_boxes
from lightning_seg.models.rcnn.settings import (
    RoIHeadsSettings,
    RPNSettings,
    settings_from,
)
from lightning_seg.ops.mask_paste import paste_masks_batched
from lightning_seg.structures import InstancePrediction


class MaskRCNN(nn.Module):
    """Mask R-CNN with an FPN (P2-P5 and P6 by max-pooling), detectron2's R50-FPN defaults.

    Args:
        num_classes: ``K`` thing classes.
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet (timm or torchvision; ``frozen_stages=1`` freezes the stem and res2, as
            detectron2's ``FREEZE_AT: 2``; frozen BN).
        fpn_channels: FPN width.
        fpn_norm: normalisation in the FPN (torchvision v2: BN).
        rpn: :class:`~lightning_seg.models.rcnn.settings.RPNSettings` (or a mapping of its fields).
        roi_heads: :class:`~lightning_seg.models.rcnn.settings.RoIHeadsSettings` (or a mapping).
        channels_last: run the backbone, the FPN and the RoI heads' convs in channels-last
            memory format (faster convolutions on CPU and with cuDNN; same arithmetic up to
            float rounding).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "torchvision",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        fpn_norm: Norm = "none",
        rpn: RPNSettings | dict[str, Any] | None = None,
        roi_heads: RoIHeadsSettings | dict[str, Any] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fpn_channels = fpn_channels
        self.backbone = build_backbone(backbone, backbone_source, pretrained, None, frozen_stages, freeze_bn,
                                       backbone_kwargs)
        if self.backbone.feature_names[-4:] != ["res2", "res3", "res4", "res5"]:
            raise ValueError(f"Mask R-CNN needs backbone features res2..res5, {backbone!r} gives "
                             f"{self.backbone.feature_names}")
        self.fpn = FPN(self.backbone.channels[-4:], fpn_channels, norm=fpn_norm, extra_levels="maxpool",
                       in_strides=self.backbone.strides[-4:], init="c2_xavier")
        rpn_s = settings_from(rpn, RPNSettings, "rpn")
        roi_s = settings_from(roi_heads, RoIHeadsSettings, "roi_heads")
        self.rpn_loss_weight = rpn_s.loss_weight
        rpn_kwargs = {k: v for k, v in vars(rpn_s).items() if k != "loss_weight"}
        self.rpn = RegionProposalNetwork(fpn_channels, self.fpn.strides, **rpn_kwargs)
        self.roi_heads = RoIHeads(fpn_channels, self.fpn.strides[:4], num_classes, roi_s)
        self.channels_last = self.roi_heads.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def settings(self) -> RoIHeadsSettings:
        """The RoI-head settings (inference thresholds, pasting)."""
        return self.roi_heads.settings

    def features(self, images: Tensor) -> list[Tensor]:
        """FPN levels P2-P6, float ``[B, C, ceil(H / s), ceil(W / s)]`` for s = 4..64 (contiguous)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # roi_align reads contiguous maps: convert once here rather than in every call
        return [f.contiguous() for f in self.fpn(self.backbone(images)[-4:])]

    def forward(self, images: Tensor, image_sizes: Tensor, targets: BoxTargets | None = None) -> dict[str, Tensor] | Detections:
        """Losses (with ``targets``) or detections.

        Args:
            images: float ``[B, 3, Hp, Wp]`` in ``[0, 1]``, padded.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` of each image before padding.
            targets: ground truth (training), see :class:`~lightning_seg.models.rcnn.rpn.BoxTargets`.

        Returns:
            ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}`` weighted
            float scalars with targets, else :class:`~lightning_seg.models.rcnn.roi_heads.Detections`.
        """
        features = self.features(images)
        if targets is None:
            return self.detect(features, images, image_sizes)
        return self.instance_losses(features, images, image_sizes, targets)

    def instance_losses(self, features: list[Tensor], images: Tensor, image_sizes: Tensor,
                        targets: BoxTargets) -> dict[str, Tensor]:
        """The RPN and RoI-head loss terms from FPN levels P2-P6 (see :meth:`forward`)."""
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        proposals, valid, rpn_losses = self.rpn(features, image_sizes, padded, targets)
        losses = {k: v * self.rpn_loss_weight for k, v in rpn_losses.items()}
        losses.update(self.roi_heads.losses(features[:4], proposals, valid, targets))
        return losses

    def detect(self, features: list[Tensor], images: Tensor, image_sizes: Tensor,
               with_masks: bool = True) -> Detections:
        """Detections (with mask probabilities unless ``with_masks=False``) from FPN levels P2-P6."""
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        proposals, valid, _ = self.rpn(features, image_sizes, padded, None)
        return self.roi_heads.detect(features[:4], proposals, valid, image_sizes, with_masks=with_masks)

    @torch.no_grad()
    def postprocess(self, detections: Detections, image_sizes: Tensor,
                    output_sizes: list[tuple[int, int]]) -> list[InstancePrediction]:
        """Per-image predictions with boxes scaled to ``output_sizes`` and masks pasted there.

        Args:
            detections: from :meth:`forward`.
            image_sizes: int64 ``[B, 2]`` sizes the detections refer to.
            output_sizes: ``(H, W)`` of each output (e.g. the original image size).

        Returns:
            ``B`` :class:`~lightning_seg.structures.InstancePrediction`: bool masks ``[M, H, W]``,
            int64 labels, float scores, float boxes ``[M, 4]``.
        """
        s = self.settings
        det = detections
        img = det.image_index
        out_hw = torch.tensor([[int(h), int(w)] for h, w in output_sizes], device=det.boxes.device)
        ratio = out_hw.to(det.boxes.dtype) / image_sizes.to(det.boxes.dtype)  # [B, 2] as (h, w)
        boxes = det.boxes * ratio[img][:, [1, 0, 1, 0]]
        # clipped to the output image (scaling may round past its edge), as detectron2 does
        boxes = clip_boxes(boxes, out_hw[img])
        per_image = det.counts.tolist()
        if det.mask_probs is not None:
            masks = paste_masks_batched(det.mask_probs, boxes, img, output_sizes, s.mask_threshold, s.paste_mode)
        else:
            masks = [torch.zeros(c, *size, dtype=torch.bool, device=boxes.device)
                     for c, size in zip(per_image, output_sizes)]
        return [InstancePrediction(masks=m, labels=lab, scores=sc, boxes=bx) for m, lab, sc, bx in zip(
            masks, det.labels.split(per_image), det.scores.split(per_image), boxes.split(per_image))]
