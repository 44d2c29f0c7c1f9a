"""Paste fixed-size RoI masks (Mask R-CNN's 28x28) into full images, all masks at once.

Bilinear resampling is separable: mask ``i`` pasted into an ``H x W`` image is
``Wy_i @ m_i @ Wx_i^T`` with ``Wy_i`` ``[H, S]`` and ``Wx_i`` ``[W, S]`` the 1-D interpolation
weights of its box. Two batched matrix products per chunk of masks replace torchvision's
per-mask Python loop (``paste_masks_in_image``) and detectron2's full-image ``grid_sample``;
memory is bounded by pasting ``max_bytes`` worth of output at a time.

Two conventions, selected by ``mode``:

* ``"detectron2"`` (``_do_paste_mask``): image pixel centre ``x + 0.5`` maps to mask coordinate
  ``(x + 0.5 - x1) / (x2 - x1) * S - 0.5``; samples outside the mask read zero.
* ``"torchvision"``: the mask is padded by one zero pixel, its box enlarged by ``(S + 2) / S``
  and truncated to integers, and the mask resized to the integer box with
  ``F.interpolate(mode="bilinear", align_corners=False)`` (edge-clamped), zero outside the box.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PasteMode", "paste_masks"]

PasteMode = Literal["detectron2", "torchvision"]


def _axis_weights(start: Tensor, length: Tensor, size: int, src: int, clamp: bool, inside: Tensor | None) -> Tensor:
    """``[N, size, src]`` bilinear weights of output pixels ``0..size-1`` on source pixels ``0..src-1``.

    ``start``/``length``: float ``[N]`` where the source spans in output pixels; output pixel
    ``x`` reads source coordinate ``(x + 0.5 - start) / length * src - 0.5``.
    """
    x = torch.arange(size, device=start.device, dtype=start.dtype)
    scale = src / length
    u = (x[None, :] + 0.5 - start[:, None]) * scale[:, None] - 0.5
    if clamp:
        u = u.clamp(0, src - 1)
    taps = torch.arange(src, device=start.device, dtype=start.dtype)
    w = (1 - (u[:, :, None] - taps).abs()).clamp(min=0)
    if inside is not None:
        w = w * inside[:, :, None]
    return w


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    mode: PasteMode = "detectron2",
    max_bytes: int = 1 << 28,
) -> Tensor:
    """Paste each mask into its box of an ``H x W`` image.

    Args:
        masks: float ``[N, S, S]`` mask probabilities in box coordinates.
        boxes: float ``[N, 4]`` xyxy boxes in output pixels.
        image_size: ``(H, W)`` of the output.
        threshold: return ``probability >= threshold`` as bool; ``None`` returns the probabilities.
        mode: ``"detectron2"`` or ``"torchvision"`` resampling (see the module docstring).
        max_bytes: bound on the float output pasted at once.

    Returns:
        bool (or float with ``threshold=None``) ``[N, H, W]``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    n = masks.shape[0]
    dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros(n, h, w, dtype=dtype, device=masks.device)
    if n == 0 or h == 0 or w == 0:
        return out
    masks = masks.float()
    boxes = boxes.float()
    if mode == "torchvision":
        s = masks.shape[-1]
        masks = F.pad(masks, (1, 1, 1, 1))
        scale = (s + 2.0) / s
        centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
        # torchvision casts with .to(int64): truncation toward zero
        ibox = torch.cat([centre - half, centre + half], dim=1).trunc()
        start = ibox[:, :2]
        length = (ibox[:, 2:] - ibox[:, :2] + 1).clamp(min=1)
        clamp = True
    elif mode == "detectron2":
        start = boxes[:, :2]
        length = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        clamp = False
    else:
        raise ValueError(f"paste mode must be 'detectron2' or 'torchvision', got {mode!r}")
    src = masks.shape[-1]
    per_chunk = max(1, max_bytes // (4 * h * w))
    for i in range(0, n, per_chunk):
        j = min(i + per_chunk, n)
        inside_x = inside_y = None
        if clamp:  # zero outside the integer box (the clamped weights would smear the edge)
            xs = torch.arange(w, device=masks.device, dtype=masks.dtype)
            ys = torch.arange(h, device=masks.device, dtype=masks.dtype)
            inside_x = ((xs >= start[i:j, 0:1]) & (xs < start[i:j, 0:1] + length[i:j, 0:1])).to(masks.dtype)
            inside_y = ((ys >= start[i:j, 1:2]) & (ys < start[i:j, 1:2] + length[i:j, 1:2])).to(masks.dtype)
        wx = _axis_weights(start[i:j, 0], length[i:j, 0], w, src, clamp, inside_x)
        wy = _axis_weights(start[i:j, 1], length[i:j, 1], h, src, clamp, inside_y)
        pasted = torch.bmm(torch.bmm(wy, masks[i:j]), wx.transpose(1, 2))
        out[i:j] = pasted >= threshold if threshold is not None else pasted
    return out
