"""YOLACT (Bolya et al., ICCV 2019) on a ResNet + FPN P3-P7.

A one-stage detector whose anchors (one size per level, three aspect ratios) predict a class
(softmax with a background column), a box and ``k`` mask coefficients (tanh) from a head shared
by every level; a protonet on P3 predicts ``k`` prototype masks at 1/4 of the input, and an
instance's mask is ``sigmoid(prototypes . coefficients)`` cropped by its box. A 1x1 conv on P3
gives the semantic auxiliary logits. The layout follows YOLACT's ``yolact_base`` config; the
prior matching, OHEM and Fast NMS are in :mod:`lightning_seg.ops`, the losses in
:mod:`lightning_seg.losses.yolact_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.dense_instance.settings import YOLACTSettings
from lightning_seg.models.layers import ConvNormAct
from lightning_seg.models.necks import FPN
from lightning_seg.models.rcnn.anchors import AnchorGrid
from lightning_seg.models.rcnn.rpn import clip_boxes
from lightning_seg.models.rcnn.settings import settings_from
from lightning_seg.ops.dynamic_masks import linear_combination_masks, yolact_box_crop
from lightning_seg.ops.fast_nms import fast_nms
from lightning_seg.ops.mask_inference import binary_masks_at_size
from lightning_seg.structures import InstancePrediction

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""SSD / YOLACT box coding: centre offsets / (0.1 x prior size), log size ratios / 0.2."""


@dataclass
class YOLACTOutputs:
    """Raw outputs of :class:`YOLACT` (``A`` anchors over all levels).

    Attributes:
        class_logits: float ``[B, A, K + 1]`` (background last).
        box_deltas: float ``[B, A, 4]`` coded against the anchors (:data:`BOX_WEIGHTS`).
        coefficients: float ``[B, A, k]`` in ``[-1, 1]``.
        prototypes: float ``[B, k, h, w]`` (non-negative) at 1/4 of the padded input.
        semantic_logits: float ``[B, K, h3, w3]`` at P3.
        anchors: float ``[A, 4]`` xyxy in input pixels.
        padded_size: ``(Hp, Wp)`` of the input.
    """

    class_logits: Tensor
    box_deltas: Tensor
    coefficients: Tensor
    prototypes: Tensor
    semantic_logits: Tensor
    anchors: Tensor
    padded_size: tuple[int, int]

    def prototype_scale(self) -> tuple[float, float]:
        """``(sy, sx)``: prototype pixels per input pixel."""
        return self.prototypes.shape[-2] / self.padded_size[0], self.prototypes.shape[-1] / self.padded_size[1]


class PrototypeNet(nn.Module):
    """YOLACT's protonet: three 3x3 conv-ReLU, 2x bilinear upsampling, a 3x3 conv-ReLU and a 1x1
    conv-ReLU to ``k`` prototypes. ``[B, C, h, w]`` -> ``[B, k, 2h, 2w]``."""

    def __init__(self, in_channels: int, channels: int = 256, num_prototypes: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm="none")
                                     for i in range(3)))
        self.refine = ConvNormAct(channels, channels, 3, norm="none")
        self.out = ConvNormAct(channels, num_prototypes, 1, norm="none")

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(self.convs(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(self.refine(x))


class YOLACTHead(nn.Module):
    """The prediction head shared by every level: a 3x3 conv-ReLU, then 3x3 convs to the class
    logits, box deltas and tanh coefficients of each of ``A`` anchors per cell.

    ``[B, C, h, w]`` -> ``([B, h*w*A, K+1], [B, h*w*A, 4], [B, h*w*A, k])`` (cell-major, anchor innermost).
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, channels: int = 256,
                 num_prototypes: int = 32) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.upfeature = ConvNormAct(in_channels, channels, 3, norm="none")
        self.classes = nn.Conv2d(channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.boxes = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.coefficients = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.upfeature(x)
        b = x.shape[0]

        def flat(t: Tensor) -> Tensor:
            return t.permute(0, 2, 3, 1).reshape(b, -1, t.shape[1] // self.num_anchors)

        return flat(self.classes(f)), flat(self.boxes(f)), flat(self.coefficients(f)).tanh()


class YOLACT(nn.Module):
    """YOLACT with a ResNet and an FPN P3-P7 (P6 and P7 by stride-2 convs on P5, ReLU after each
    3x3 output conv, as YOLACT's FPN; its top-down pathway upsamples by nearest neighbour where
    YOLACT's is bilinear).

    Args:
        num_classes: ``K`` thing classes.
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet (YOLACT: ImageNet ResNet-50 / 101, BatchNorm trained at 8 images per GPU,
            frozen below 6).
        fpn_channels: FPN width (256).
        yolact: :class:`~lightning_seg.models.dense_instance.settings.YOLACTSettings` (or a mapping).
    """

    predicts_boxes = True

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "torchvision",
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        yolact: YOLACTSettings | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.settings = s = settings_from(yolact, YOLACTSettings, "yolact")
        self.backbone = build_backbone(backbone, backbone_source, pretrained, None, frozen_stages, freeze_bn,
                                       backbone_kwargs)
        if self.backbone.feature_names[-3:] != ["res3", "res4", "res5"]:
            raise ValueError(f"YOLACT needs backbone features res3..res5, {backbone!r} gives {self.backbone.feature_names}")
        self.fpn = FPN(self.backbone.channels[-3:], fpn_channels, output_activation=True, extra_levels="conv",
                       num_extra_levels=2, extra_relu=False, in_strides=self.backbone.strides[-3:], init="c2_xavier")
        if len(s.anchor_sizes) != len(self.fpn.strides):
            raise ValueError(f"yolact.anchor_sizes has {len(s.anchor_sizes)} levels, the FPN has "
                             f"{len(self.fpn.strides)} (P3-P7)")
        # anchors centred on the cells, as YOLACT's priors at (i + 0.5) / conv size of the input
        self.anchor_grid = AnchorGrid(s.anchor_sizes, s.aspect_ratios, self.fpn.strides, offset=0.5,
                                      square=s.square_anchors, fractional_strides=True)
        self.head = YOLACTHead(fpn_channels, num_classes, self.anchor_grid.num_anchors, s.head_channels,
                               s.num_prototypes)
        self.protonet = PrototypeNet(fpn_channels, s.proto_channels, s.num_prototypes)
        self.semantic = nn.Conv2d(fpn_channels, num_classes, 1)
        self.box_coder = BoxCoder(BOX_WEIGHTS)
        # YOLACT's init of everything past the backbone and FPN: Xavier-uniform weights, zero bias
        for m in (*self.head.modules(), *self.protonet.modules(), self.semantic):
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> YOLACTOutputs:
        """Images float ``[B, 3, Hp, Wp]`` in ``[0, 1]`` -> :class:`YOLACTOutputs`."""
        levels = self.fpn(self.backbone(images)[-3:])
        cls, box, coef = zip(*(self.head(x) for x in levels))
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        anchors = torch.cat(self.anchor_grid([tuple(x.shape[-2:]) for x in levels], padded))
        return YOLACTOutputs(torch.cat(cls, 1), torch.cat(box, 1), torch.cat(coef, 1), self.protonet(levels[0]),
                             self.semantic(levels[0]), anchors, padded)

    def decode_boxes(self, outputs: YOLACTOutputs) -> Tensor:
        """Boxes float ``[B, A, 4]`` xyxy in input pixels from the deltas."""
        b, a, _ = outputs.box_deltas.shape
        anchors = outputs.anchors[None].expand(b, -1, -1).reshape(-1, 4)
        return self.box_coder.decode_single(outputs.box_deltas.reshape(-1, 4).float(), anchors).view(b, a, 4)

    @torch.no_grad()
    def postprocess(self, outputs: YOLACTOutputs, image_sizes: Tensor,
                    output_sizes: list[tuple[int, int]]) -> list[InstancePrediction]:
        """Detections of every image at ``output_sizes`` (YOLACT's inference, batched over images).

        Class probabilities (softmax, background dropped) and decoded boxes clipped to the image
        go through :func:`~lightning_seg.ops.fast_nms` with the decoded boxes; the survivors'
        boxes are clipped to the image, each mask is ``sigmoid(prototypes . coefficients)``
        cropped by its box at prototype resolution, resized to the output size and thresholded;
        boxes are scaled to the output size.

        Args:
            outputs: from :meth:`forward`.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` of each image inside the padded input.
            output_sizes: ``(H0, W0)`` of each output.

        Returns:
            ``B`` :class:`~lightning_seg.structures.InstancePrediction` (bool masks ``[M, H0, W0]``,
            int64 labels, float32 scores, float32 boxes ``[M, 4]``), by decreasing score.
        """
        s = self.settings
        scores = outputs.class_logits.float().softmax(-1)[..., :-1]
        boxes = self.decode_boxes(outputs)
        # YOLACT suppresses the decoded boxes and clips the survivors
        nms = fast_nms(boxes, scores, None, s.nms_threshold, s.nms_top_k, s.max_detections, s.score_threshold)
        bi, slot = torch.nonzero(nms.valid, as_tuple=True)
        rows = nms.indices[bi, slot]
        det_boxes = clip_boxes(boxes[bi, rows], image_sizes[bi])
        coef = outputs.coefficients[bi, rows].float()
        logits = linear_combination_masks(outputs.prototypes.float(), coef, bi)
        sy, sx = outputs.prototype_scale()
        crop = yolact_box_crop(det_boxes * det_boxes.new_tensor([sx, sy, sx, sy]), tuple(logits.shape[-2:]))
        probs = logits.sigmoid() * crop
        counts = nms.valid.sum(1).tolist()
        out = []
        for i, (p, bx, lab, sc) in enumerate(zip(probs.split(counts), det_boxes.split(counts),
                                                nms.labels[nms.valid].split(counts), nms.scores[nms.valid].split(counts))):
            h, w = (int(v) for v in image_sizes[i])
            oh, ow = output_sizes[i]
            masks = binary_masks_at_size(p, outputs.padded_size, (h, w), (oh, ow), s.mask_threshold)
            scale = bx.new_tensor([ow / w, oh / h, ow / w, oh / h])
            out.append(InstancePrediction(masks=masks, labels=lab, scores=sc.float(),
                                          boxes=clip_boxes(bx * scale, bx.new_tensor([oh, ow]))))
        return out
