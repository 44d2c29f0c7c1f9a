"""Masks as per-instance linear combinations of per-image feature maps (SOLOv2, YOLACT).

SOLOv2 predicts a 1x1 conv kernel per positive cell and applies it to its image's mask
features; YOLACT combines its image's prototypes with an instance's coefficients. Both are
``mask_n = kernel_n . features[image_n]`` over the channel axis. The references run one conv
or one matrix product per image; here the kernels of the batch are grouped into a padded
``[B, N_max, E]`` tensor and the whole batch is one ``bmm``.
"""

from __future__ import annotations

import torch

from .image_groups import group_by_image

__all__ = ["linear_combination_masks", "yolact_box_crop"]


def linear_combination_masks(features: torch.Tensor, kernels: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """``out[n] = sum_e kernels[n, e] * features[image_index[n], e]`` for every kernel.

    Args:
        features: float ``[B, E, h, w]``.
        kernels: float ``[N, E]`` (images in any order).
        image_index: int64 ``[N]`` image of each kernel.

    Returns:
        float ``[N, h, w]`` mask logits, in the order of ``kernels``.
    """
    b, e, h, w = features.shape
    n = kernels.shape[0]
    if kernels.ndim != 2 or kernels.shape[1] != e or image_index.shape != (n,):
        raise ValueError(f"linear_combination_masks: kernels [N, {e}] and image_index [N] expected, got "
                         f"{tuple(kernels.shape)} and {tuple(image_index.shape)}")
    if n == 0:
        return features.new_zeros(0, h, w)
    groups = group_by_image(image_index, b)
    out = torch.bmm(groups.pad(kernels.to(features.dtype)), features.flatten(2))  # [B, width, h*w]
    return out[groups.image, groups.rank].view(n, h, w)


def yolact_box_crop(boxes: torch.Tensor, size: tuple[int, int], padding: int = 1) -> torch.Tensor:
    """YOLACT's ``crop``: bool ``[N, h, w]``, pixel ``(i, j)`` inside box ``n`` when
    ``x1 - padding <= j < x2 + padding`` and likewise for ``i`` (box corners clamped to the map).

    Args:
        boxes: float ``[N, 4]`` xyxy in pixels of the ``size`` map.
        size: ``(h, w)``.
        padding: pixels added on every side (YOLACT: 1).
    """
    h, w = size
    x1 = (torch.minimum(boxes[:, 0], boxes[:, 2]) - padding).clamp(min=0)
    x2 = (torch.maximum(boxes[:, 0], boxes[:, 2]) + padding).clamp(max=w)
    y1 = (torch.minimum(boxes[:, 1], boxes[:, 3]) - padding).clamp(min=0)
    y2 = (torch.maximum(boxes[:, 1], boxes[:, 3]) + padding).clamp(max=h)
    cols = torch.arange(w, device=boxes.device, dtype=boxes.dtype)
    rows = torch.arange(h, device=boxes.device, dtype=boxes.dtype)
    in_x = (cols >= x1[:, None]) & (cols < x2[:, None])
    in_y = (rows >= y1[:, None]) & (rows < y2[:, None])
    return in_y[:, :, None] & in_x[:, None, :]
