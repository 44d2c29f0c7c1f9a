"""Typed settings of the single-stage instance models; the defaults are the papers' R50 recipes.

In a config they are nested keys, e.g. ``--model.solo.score_threshold 0.2`` or::

    model:
      init_args:
        yolact: {num_prototypes: 16, head_channels: 64}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_seg.models.layers import Norm


@dataclass
class SOLOSettings:
    """SOLO / SOLOv2 grid, heads, losses and inference (Wang et al., 2020; mmdetection's R50 configs).

    ``None`` takes the model's recipe value (SOLO / SOLOv2).

    Attributes:
        grid_numbers: ``S`` of each level (P2-P6 at strides 8, 8, 16, 32, 32).
        scale_ranges: ``(low, high)`` of ``sqrt(w * h)`` of the instances each level learns.
        pos_scale: the centre region's share of the half box size (0.2).
        head_channels: width of the category and kernel / mask branches (SOLO 256, SOLOv2 512).
        head_convs: convs of each branch (SOLO 7, SOLOv2 4).
        head_norm: normalisation of the branches (GroupNorm).
        mask_feature_channels: SOLOv2's unified mask-feature branch width (128).
        kernel_channels: SOLOv2's mask-feature channels = dynamic 1x1 kernel length (256).
        decoupled: SOLO only: decoupled SOLO (``S`` x-masks and ``S`` y-masks per level, the
            mask of cell ``(i, j)`` is ``sigmoid(x_j) * sigmoid(y_i)``) instead of ``S**2`` masks.
        focal_alpha, focal_gamma: the category focal loss (0.25, 2).
        category_loss_weight: weight of the focal loss (1).
        mask_loss_weight: weight of the dice loss (3).
        dice_eps: added to each sum of squares in the dice denominator (0.001).
        score_threshold: category score of a candidate (0.1).
        mask_threshold: probability of a mask pixel (0.5).
        pre_nms_topk: candidates per image entering matrix NMS (500).
        nms_kernel, nms_sigma: matrix NMS decay (gaussian, 2.0).
        update_threshold: decayed score a mask needs to be kept (0.05).
        max_detections: masks per image (100).
    """

    grid_numbers: tuple[int, ...] = (40, 36, 24, 16, 12)
    scale_ranges: tuple[tuple[float, float], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    pos_scale: float = 0.2
    head_channels: int | None = None
    head_convs: int | None = None
    head_norm: Norm = "GN"
    mask_feature_channels: int = 128
    kernel_channels: int = 256
    decoupled: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    category_loss_weight: float = 1.0
    mask_loss_weight: float = 3.0
    dice_eps: float = 1e-3
    score_threshold: float = 0.1
    mask_threshold: float = 0.5
    pre_nms_topk: int = 500
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    update_threshold: float = 0.05
    max_detections: int = 100


@dataclass
class YOLACTSettings:
    """YOLACT anchors, heads, losses and inference (Bolya et al., 2019; its ``yolact_base`` config).

    Attributes:
        anchor_sizes: one anchor size per level P3-P7 (24 .. 384 at a 550 input).
        aspect_ratios: anchor height / width ratios (1, 1/2, 2: YOLACT's set).
        square_anchors: square anchors of side ``size / sqrt(ratio)`` (YOLACT's
            ``use_square_anchors``, with which its published models were trained); False gives
            anchors of area ``size**2`` with the ratios.
        head_channels: width of the shared prediction head's 3x3 conv (256).
        num_prototypes: ``k`` prototypes and coefficients (32).
        proto_channels: width of the protonet convs (256).
        positive_iou, negative_iou: prior matching thresholds (0.5, 0.4).
        crowd_iou: a non-positive prior more than this inside a crowd box is ignored (0.7).
        negpos_ratio: OHEM negatives per positive (3).
        min_negatives: OHEM negatives of an image at least (YOLACT drops images without
            positives from training; here they still teach the background with this many).
        class_loss_weight, box_loss_weight, mask_loss_weight, semantic_loss_weight: 1, 1.5,
            6.125, 1.
        masks_per_image: positives per image trained in the mask loss (a random subset, 100).
        score_threshold: a prior is a candidate when its best class score exceeds it (0.05).
        nms_threshold: Fast NMS IoU (0.5).
        nms_top_k: candidates per class entering Fast NMS (200).
        max_detections: detections per image (100).
        mask_threshold: probability of a mask pixel (0.5).
    """

    anchor_sizes: tuple[tuple[float, ...], ...] = ((24,), (48,), (96,), (192,), (384,))
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    square_anchors: bool = True
    head_channels: int = 256
    num_prototypes: int = 32
    proto_channels: int = 256
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    crowd_iou: float = 0.7
    negpos_ratio: int = 3
    min_negatives: int = 16
    class_loss_weight: float = 1.0
    box_loss_weight: float = 1.5
    mask_loss_weight: float = 6.125
    semantic_loss_weight: float = 1.0
    masks_per_image: int = 100
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    nms_top_k: int = 200
    max_detections: int = 100
    mask_threshold: float = 0.5
