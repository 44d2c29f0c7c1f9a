"""Paste fixed-size RoI masks (Mask R-CNN's 28x28) into full images, all masks at once.

Bilinear resampling is separable: mask ``i`` pasted into a window of the image is
``Wy_i @ m_i @ Wx_i^T`` with ``Wy_i`` ``[h, S]`` and ``Wx_i`` ``[w, S]`` the 1-D interpolation
weights of its box. Masks are grouped by box size and each group is resampled by two batched
matrix products over its largest window, then scattered into the zero image: this replaces
torchvision's per-mask Python loop (``paste_masks_in_image``) and detectron2's full-image
``grid_sample``, and memory is bounded by ``max_bytes`` of windows at a time.

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


def _axis_weights(x: Tensor, start: Tensor, length: Tensor, src: int, clamp: bool, box_only: bool) -> Tensor:
    """``[N, n, src]`` bilinear weights of output pixels ``x`` (float ``[N, n]``) on source pixels.

    ``start``/``length``: float ``[N]`` where the source spans in output pixels; pixel ``x`` reads
    source coordinate ``(x + 0.5 - start) / length * src - 0.5`` (edge-clamped with ``clamp``;
    zero outside ``[start, start + length)`` with ``box_only``).
    """
    u = (x + 0.5 - start[:, None]) * (src / length)[:, None] - 0.5
    if clamp:
        u = u.clamp(0, src - 1)
    taps = torch.arange(src, device=x.device, dtype=x.dtype)
    w = (1 - (u[:, :, None] - taps).abs()).clamp(min=0)
    if box_only:
        inside = (x >= start[:, None]) & (x < (start + length)[:, None])
        w = w * inside[:, :, None].to(w.dtype)
    return w


def _windows(lo: Tensor, hi: Tensor, size: int) -> tuple[Tensor, int]:
    """Integer window origins ``[N]`` and one common length covering ``[lo, hi)`` inside ``[0, size)``."""
    lo, hi = lo.floor().clamp(0, size), hi.ceil().clamp(0, size)
    length = max(1, min(size, int((hi - lo).max())))
    return lo.clamp(max=size - length), length


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    mode: PasteMode = "detectron2",
    max_bytes: int = 1 << 26,
) -> Tensor:
    """Paste each mask into its box of an ``H x W`` image.

    Only a window around each box is computed: masks are grouped by box size, and every group
    is resampled in one pair of batched matrix products over its largest window.

    Args:
        masks: float ``[N, S, S]`` mask probabilities in box coordinates.
        boxes: float ``[N, 4]`` xyxy boxes in output pixels.
        image_size: ``(H, W)`` of the output.
        threshold: return ``probability >= threshold`` as bool; ``None`` returns the probabilities.
        mode: ``"detectron2"`` or ``"torchvision"`` resampling (see the module docstring).
        max_bytes: bound on the float windows resampled at once.

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
        lo, hi = start, start + length
        clamp = True
    elif mode == "detectron2":
        start = boxes[:, :2]
        length = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        src = masks.shape[-1]
        # beyond half a source pixel outside the box every tap weight is zero
        margin = length / (2 * src) + 1
        lo, hi = start - margin, start + length + margin
        clamp = False
    else:
        raise ValueError(f"paste mode must be 'detectron2' or 'torchvision', got {mode!r}")
    src = masks.shape[-1]
    extent = (hi - lo).amax(1)
    order = torch.argsort(extent, descending=True)
    flat = out.view(n, h * w)
    i = 0
    while i < n:
        # the largest window of the group bounds its size: grow the group while it fits
        big = float(extent[order[min(n - 1, i)]])
        count = max(1, int(max_bytes // (4 * (big + 2) ** 2)))
        idx = order[i:i + count]
        i += count
        oy, wh_y = _windows(lo[idx, 1], hi[idx, 1], h)
        ox, wh_x = _windows(lo[idx, 0], hi[idx, 0], w)
        ys = oy[:, None] + torch.arange(wh_y, device=masks.device, dtype=masks.dtype)
        xs = ox[:, None] + torch.arange(wh_x, device=masks.device, dtype=masks.dtype)
        wy = _axis_weights(ys, start[idx, 1], length[idx, 1], src, clamp, clamp)
        wx = _axis_weights(xs, start[idx, 0], length[idx, 0], src, clamp, clamp)
        window = torch.bmm(torch.bmm(wy, masks[idx]), wx.transpose(1, 2))
        pos = (ys.long()[:, :, None] * w + xs.long()[:, None, :]).view(len(idx), -1)
        values = window.view(len(idx), -1)
        flat[idx[:, None], pos] = values >= threshold if threshold is not None else values
    return out
