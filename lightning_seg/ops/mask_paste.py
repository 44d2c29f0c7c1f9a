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

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PasteMode", "paste_masks", "paste_masks_batched"]

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


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    mode: PasteMode = "detectron2",
    max_bytes: int = 1 << 26,
) -> Tensor:
    """Paste each mask into its box of one ``H x W`` image (see :func:`paste_masks_batched`).

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
    index = torch.zeros(masks.shape[0], dtype=torch.int64, device=masks.device)
    return paste_masks_batched(masks, boxes, index, [image_size], threshold, mode, max_bytes)[0]


def paste_masks_batched(
    masks: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    threshold: float | None = 0.5,
    mode: PasteMode = "detectron2",
    max_bytes: int = 1 << 26,
) -> list[Tensor]:
    """Paste the masks of every image of a batch into their images, all in one pass.

    Only a window around each box is computed: masks (of all images) are grouped by box size,
    each group is resampled by one pair of batched matrix products over its largest window, and
    scattered into one buffer holding every image's output planes (window pixels outside an
    image go to a discarded slot).

    Args:
        masks: float ``[N, S, S]`` mask probabilities in box coordinates.
        boxes: float ``[N, 4]`` xyxy boxes in pixels of their output image.
        image_index: int64 ``[N]`` output image of each mask, grouped (non-decreasing).
        image_sizes: ``(H_b, W_b)`` of each output image.
        threshold: ``probability >= threshold`` as bool; ``None`` keeps the probabilities.
        mode: ``"detectron2"`` or ``"torchvision"`` resampling (see the module docstring).
        max_bytes: bound on the float windows resampled at once.

    Returns:
        per image, bool (or float) ``[N_b, H_b, W_b]`` (views of one buffer).
    """
    device = masks.device
    n, b = masks.shape[0], len(image_sizes)
    dtype = torch.bool if threshold is not None else torch.float32
    # the one host copy: the output tensors' shapes are the per-image detection counts
    counts = torch.bincount(image_index, minlength=b).tolist() if n else [0] * b
    planes = [int(h) * int(w) for h, w in image_sizes]
    starts, first_mask, total, seen = [], [], 0, 0
    for c, p in zip(counts, planes):
        starts.append(total)
        first_mask.append(seen)
        total, seen = total + c * p, seen + c
    buffer = torch.zeros(total + 1, dtype=dtype, device=device)  # the last slot takes the discarded pixels
    outputs = [buffer[o:o + c * p].view(c, int(h), int(w))
               for o, c, p, (h, w) in zip(starts, counts, planes, image_sizes)]
    if n == 0 or total == 0:
        return outputs
    masks, boxes = masks.float(), boxes.float()
    sizes = torch.tensor([[int(h), int(w)] for h, w in image_sizes], device=device)[image_index]
    first = torch.tensor(starts, device=device)[image_index]
    plane = torch.tensor(planes, device=device)[image_index]
    group_start = torch.tensor(first_mask, device=device)[image_index]
    base = first + (torch.arange(n, device=device) - group_start) * plane
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
        # beyond half a source pixel outside the box every tap weight is zero
        margin = length / (2 * masks.shape[-1]) + 1
        lo, hi = start - margin, start + length + margin
        clamp = False
    else:
        raise ValueError(f"paste mode must be 'detectron2' or 'torchvision', got {mode!r}")
    # windows start inside the image and end where the box's support or the image ends
    lo = torch.maximum(lo.floor(), torch.zeros_like(lo))
    hi = torch.minimum(hi.ceil(), sizes.flip(1).to(hi.dtype))
    extent = (hi - lo).clamp(min=1)
    src = masks.shape[-1]
    order = torch.argsort(extent.amax(1), descending=True)
    # group sizes are chosen on the host from the window extents (one copy for the batch)
    spans = extent[order].amax(1).tolist()
    i = 0
    while i < n:
        # the group's first (largest) window bounds the memory of the group
        count = max(1, int(max_bytes // (4 * (spans[i] + 1) ** 2)))
        idx = order[i:i + count]
        i += count
        wh_x, wh_y = (int(v) for v in extent[idx].amax(0).tolist())
        ys = lo[idx, 1:2] + torch.arange(wh_y, device=device, dtype=masks.dtype)
        xs = lo[idx, 0:1] + torch.arange(wh_x, device=device, dtype=masks.dtype)
        wy = _axis_weights(ys, start[idx, 1], length[idx, 1], src, clamp, clamp)
        wx = _axis_weights(xs, start[idx, 0], length[idx, 0], src, clamp, clamp)
        window = torch.bmm(torch.bmm(wy, masks[idx]), wx.transpose(1, 2))
        hw = sizes[idx]
        inside = (ys < hw[:, 0:1])[:, :, None] & (xs < hw[:, 1:2])[:, None, :]
        pos = base[idx, None, None] + ys.long()[:, :, None] * hw[:, 1, None, None] + xs.long()[:, None, :]
        pos = torch.where(inside, pos, torch.full_like(pos, total)).view(len(idx), -1)
        values = window.view(len(idx), -1)
        buffer[pos] = values >= threshold if threshold is not None else values
    return outputs
