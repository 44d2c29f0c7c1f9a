"""Typed settings of the RPN and the RoI heads; the defaults are detectron2's R50-FPN recipe.

In a config they are nested keys, e.g. ``--model.rpn.nms_threshold 0.7`` or::

    model:
      init_args:
        roi_heads: {batch_size_per_image: 64, mask_head_dims: [64, 64]}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from lightning_seg.models.layers import Norm
from lightning_seg.ops.mask_paste import PasteMode


@dataclass
class RPNSettings:
    """Region proposal network (see :class:`~lightning_seg.models.rcnn.rpn.RegionProposalNetwork`).

    Attributes:
        anchor_sizes: anchor sizes per pyramid level P2..P6.
        aspect_ratios: anchor height / width.
        conv_depth: 3x3 convs of the head.
        positive_iou, negative_iou: anchor labelling IoU thresholds.
        batch_size_per_image, positive_fraction: anchors sampled per image.
        box_weights: box coder weights.
        smooth_l1_beta: 0 = L1 box loss.
        nms_threshold: proposal NMS IoU.
        pre_nms_topk_train, pre_nms_topk_test: proposals per level before NMS.
        post_nms_topk_train, post_nms_topk_test: proposals per image after NMS.
        min_box_size: proposals with a side at or below this are dropped.
        crowd_ioa_threshold: non-positive anchors this much inside a crowd box are ignored.
        round_anchors, anchor_stride_from_sizes: torchvision's anchor conventions.
        loss_weight: factor of both RPN losses.
    """

    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    conv_depth: int = 1
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 0.0
    nms_threshold: float = 0.7
    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000
    post_nms_topk_test: int = 1000
    min_box_size: float = 0.0
    crowd_ioa_threshold: float = 0.5
    round_anchors: bool = False
    anchor_stride_from_sizes: bool = False
    loss_weight: float = 1.0


@dataclass
class RoIHeadsSettings:
    """Box and mask heads (see :class:`~lightning_seg.models.rcnn.roi_heads.RoIHeads`).

    Attributes:
        batch_size_per_image, positive_fraction, positive_iou: RoI sampling (512, 25 % at IoU 0.5).
        append_gt_boxes: add the ground-truth boxes to the proposals in training.
        box_weights: box coder weights (10, 10, 5, 5).
        smooth_l1_beta: 0 = L1 box loss.
        sampling_ratio: RoIAlign samples per bin side (0 adaptive; torchvision 2).
        aligned: RoIAlign half-pixel offset (detectron2's ROIAlignV2; torchvision False).
        box_resolution, mask_resolution: pooled sizes (7, 14).
        box_head_convs, box_head_conv_dim, box_head_fcs, box_head_dim, box_head_norm: box head.
        class_agnostic_box: one box regression per RoI.
        mask_on: predict masks (False: Faster R-CNN).
        mask_head_dims, mask_head_norm, class_agnostic_mask: mask head.
        mask_target_threshold: binarise the RoIAlign'd targets (None: soft, torchvision).
        mask_target_aligned: RoIAlign half-pixel offset of the targets (torchvision False).
        score_threshold, nms_threshold, detections_per_image, min_box_size: inference.
        crowd_ioa_threshold: non-foreground RoIs this much inside a crowd box are not sampled.
        paste_mode, mask_threshold: pasting the 28x28 masks into the image.
        box_loss_weight, mask_loss_weight: factors of the box (classification and regression)
            and mask losses.
    """

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    positive_iou: float = 0.5
    append_gt_boxes: bool = True
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 0.0
    sampling_ratio: int = 0
    aligned: bool = True
    box_resolution: int = 7
    mask_resolution: int = 14
    box_head_convs: int = 0
    box_head_conv_dim: int = 256
    box_head_fcs: int = 2
    box_head_dim: int = 1024
    box_head_norm: Norm = "none"
    class_agnostic_box: bool = False
    mask_on: bool = True
    mask_head_dims: tuple[int, ...] = (256, 256, 256, 256)
    mask_head_norm: Norm = "none"
    class_agnostic_mask: bool = False
    mask_target_threshold: float | None = 0.5
    mask_target_aligned: bool = True
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_box_size: float = 0.0
    crowd_ioa_threshold: float = 0.5
    paste_mode: PasteMode = "detectron2"
    mask_threshold: float = 0.5
    box_loss_weight: float = 1.0
    mask_loss_weight: float = 1.0


@dataclass
class PanopticSettings:
    """Semantic head, loss weights and panoptic inference of Panoptic FPN and UPSNet.

    ``None`` takes the model's recipe value (Panoptic FPN / UPSNet).

    Attributes:
        semantic_channels: width of the semantic head (128).
        semantic_norm: its normalisation (GroupNorm).
        semantic_deformable: deformable 3x3 convs in UPSNet's semantic subnet (UPSNet: True).
        semantic_convs: depth of UPSNet's shared semantic subnet (2).
        semantic_loss_weight: weight of the semantic cross-entropy (0.5 / 0.2).
        instance_loss_weight: weight of the Mask R-CNN terms (1.0).
        panoptic_loss_weight: weight of UPSNet's panoptic cross-entropy (0.1).
        loss_weighting: ``fixed`` weights, or ``uncertainty``: task weights learned by
            homoscedastic uncertainty (Kendall et al., 2018), started at the fixed weights.
        overlap_threshold: Panoptic FPN fusion: an instance more covered than this is skipped.
        stuff_area_threshold: stuff segments smaller than this (pixels) are dropped (4096).
        instance_score_threshold: detections below this score are not used (0.5).
        keep_instance_fraction: UPSNet training: fraction of ground-truth instances given to the
            panoptic head (rounded down, at least one); the pixels of the others are its
            "unknown" class (0.7; 1.0 keeps all and has no unknown channel).
        instance_nms_threshold: UPSNet inference: class-agnostic NMS IoU of the detections (0.5).
        instance_covered_threshold: UPSNet inference: a detection whose mask is more covered
            than this by higher-scored ones is dropped (0.3).
        instance_covered_same_class: count only the higher-scored masks of the same class (UPSNet's
            code) instead of all.
    """

    semantic_channels: int = 128
    semantic_norm: Norm = "GN"
    semantic_deformable: bool | None = None
    semantic_convs: int = 2
    semantic_loss_weight: float | None = None
    instance_loss_weight: float = 1.0
    panoptic_loss_weight: float = 0.1
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    overlap_threshold: float = 0.5
    stuff_area_threshold: int = 4096
    instance_score_threshold: float = 0.5
    keep_instance_fraction: float = 0.7
    instance_nms_threshold: float = 0.5
    instance_covered_threshold: float = 0.3
    instance_covered_same_class: bool = False


def settings_from(value: Any, cls: type, key: str) -> Any:
    """``cls`` from an instance, a mapping of its fields (unknown keys fail naming ``key``) or None."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{key}: unknown keys {unknown}; valid keys: {sorted(names)}")
        return cls(**value)
    raise TypeError(f"{key}: expected a mapping of {cls.__name__} fields, got {type(value).__name__}")


def settings_dict(value: Any, cls: type, key: str) -> dict[str, Any]:
    """Plain-dict form of :func:`settings_from` (what checkpoints store as hyper-parameters)."""
    return asdict(settings_from(value, cls, key))


TorchvisionVersion = Literal["v1", "v2"]


def torchvision_settings(version: TorchvisionVersion = "v1") -> dict[str, Any]:
    """Constructor arguments of :class:`~lightning_seg.models.rcnn.MaskRCNN` that reproduce
    torchvision's ``maskrcnn_resnet50_fpn`` (``v1``) or ``maskrcnn_resnet50_fpn_v2`` in eval mode.

    Returns:
        ``dict(backbone=..., fpn_norm=..., rpn=RPNSettings, roi_heads=RoIHeadsSettings)``, with
        torchvision's NCHW memory format (``channels_last=False``) for bit-level agreement.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"torchvision Mask R-CNN version must be 'v1' or 'v2', got {version!r}")
    v2 = version == "v2"
    rpn = RPNSettings(conv_depth=2 if v2 else 1, min_box_size=1e-3, round_anchors=True,
                      anchor_stride_from_sizes=True, smooth_l1_beta=1.0 / 9, post_nms_topk_train=2000)
    roi = RoIHeadsSettings(sampling_ratio=2, aligned=False, min_box_size=1e-2, paste_mode="torchvision",
                           mask_target_threshold=None, mask_target_aligned=False, smooth_l1_beta=1.0 / 9,
                           box_head_convs=4 if v2 else 0, box_head_fcs=1 if v2 else 2,
                           box_head_norm="BN" if v2 else "none", mask_head_norm="BN" if v2 else "none")
    return dict(backbone="resnet50", backbone_source="torchvision", freeze_bn=not v2, channels_last=False,
                fpn_norm="BN" if v2 else "none", rpn=rpn, roi_heads=roi)
