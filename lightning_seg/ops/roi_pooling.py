"""RoI features from an FPN and RoI mask targets, on ``torchvision.ops.roi_align``.

:func:`multiscale_roi_align` is torchvision's ``MultiScaleRoIAlign`` (and detectron2's
``ROIPooler``) for RoIs given as one ``[K, 5]`` tensor (batch index, xyxy) rather than a list
per image: each RoI reads the level ``floor(4 + log2(sqrt(area) / 224))`` clamped to the
pyramid. :func:`crop_mask_targets` is detectron2's ``BitMasks.crop_and_resize`` for the RoIs of
a whole batch, converting the ground-truth masks to float a bounded chunk at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_area, roi_align

__all__ = ["assign_fpn_levels", "crop_mask_targets", "multiscale_roi_align"]


def assign_fpn_levels(boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0,
                      canonical_level: int = 4, eps: float = 1e-6) -> Tensor:
    """Pyramid level of each box, counted from ``min_level`` (FPN paper eq. 1).

    Args:
        boxes: float ``[K, 4]`` xyxy in input pixels.
        min_level, max_level: levels of the finest and coarsest maps (2 and 5 for P2-P5).
        canonical_size, canonical_level: a box of ``canonical_size`` pixels reads ``canonical_level``.
        eps: added before the floor (torchvision's 1e-6), so exact powers of two do not drop a level.

    Returns:
        int64 ``[K]`` in ``[0, max_level - min_level]``.
    """
    size = box_area(boxes).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_size) + eps)
    return (level.clamp(min_level, max_level) - min_level).to(torch.int64)


def multiscale_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    strides: Sequence[int],
    output_size: int,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign of each RoI on its pyramid level.

    Args:
        features: ``L`` float maps ``[B, C, H_l, W_l]``, finest first (P2..P5).
        rois: float ``[K, 5]``: batch index, then xyxy in input pixels.
        strides: stride of each map (powers of two).
        output_size: side of the pooled features.
        sampling_ratio: bilinear samples per bin side (0: adaptive, detectron2; torchvision uses 2).
        aligned: half-pixel offset (detectron2's ROIAlignV2); ``False`` is torchvision's default.

    Returns:
        float ``[K, C, output_size, output_size]``.
    """
    levels = assign_fpn_levels(rois[:, 1:], int(math.log2(strides[0])), int(math.log2(strides[-1])))
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        idx = torch.nonzero(levels == level).squeeze(1)
        if idx.numel():
            out[idx] = roi_align(feature, rois[idx], output_size, 1.0 / stride, sampling_ratio, aligned)
    return out


def _crop_windows(masks: Tensor, mask_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Masks cut to one common window size around their boxes, and each window's ``(x0, y0)``."""
    h, w = masks.shape[-2:]
    lo = (mask_boxes[:, :2].floor() - 1).clamp(min=0)
    hi = mask_boxes[:, 2:].ceil() + 1
    ww = max(1, min(w, int((hi[:, 0] - lo[:, 0]).max())))
    wh = max(1, min(h, int((hi[:, 1] - lo[:, 1]).max())))
    x0 = lo[:, 0].clamp(max=w - ww).long()
    y0 = lo[:, 1].clamp(max=h - wh).long()
    rows = y0[:, None] + torch.arange(wh, device=masks.device)
    cols = x0[:, None] + torch.arange(ww, device=masks.device)
    g = torch.arange(masks.shape[0], device=masks.device)
    return masks[g[:, None, None], rows[:, :, None], cols[:, None, :]], torch.stack([x0, y0], 1)


def crop_mask_targets(
    masks: Tensor,
    boxes: Tensor,
    mask_index: Tensor,
    output_size: int,
    aligned: bool = True,
    threshold: float | None = 0.5,
    max_elements: int = 1 << 26,
    mask_boxes: Tensor | None = None,
) -> Tensor:
    """Each RoI's ground-truth mask, cropped to the RoI and resized (Mask R-CNN mask targets).

    Args:
        masks: bool ``[G, H, W]`` ground-truth masks (of the whole batch, padded to one size).
        boxes: float ``[R, 4]`` xyxy RoIs in mask pixels.
        mask_index: int64 ``[R]`` index into ``masks`` of each RoI's ground truth.
        output_size: side ``M`` of the targets (28).
        aligned: half-pixel offset of ``roi_align`` (detectron2: True).
        threshold: binarise at ``>= threshold`` (detectron2); ``None`` keeps the soft values
            (torchvision).
        max_elements: at most this many mask pixels are converted to float at once.
        mask_boxes: float ``[G, 4]`` xyxy boxes of the masks (every pixel of mask ``g`` inside
            box ``g``, x2/y2 exclusive): only a window around each box, one pixel wider on each
            side, is read and converted to float (zero ring, so the samples outside equal the
            full mask's; same values up to float rounding of the shifted coordinates).

    Returns:
        float ``[R, M, M]``.
    """
    out = boxes.new_zeros(boxes.shape[0], output_size, output_size)
    if boxes.shape[0] == 0:
        return out
    if mask_boxes is not None and masks.shape[0]:
        masks, origin = _crop_windows(masks, mask_boxes)
        boxes = boxes - origin[mask_index].repeat(1, 2).to(boxes.dtype)
    per_chunk = max(1, max_elements // max(1, masks.shape[-1] * masks.shape[-2]))
    for start in range(0, masks.shape[0], per_chunk):
        stop = min(start + per_chunk, masks.shape[0])
        idx = torch.nonzero((mask_index >= start) & (mask_index < stop)).squeeze(1)
        if idx.numel() == 0:
            continue
        rois = torch.cat([(mask_index[idx] - start)[:, None].to(boxes.dtype), boxes[idx]], dim=1)
        chunk = masks[start:stop, None].to(boxes.dtype)
        out[idx] = roi_align(chunk, rois, output_size, 1.0, 0, aligned)[:, 0]
    return (out >= threshold).to(out.dtype) if threshold is not None else out
