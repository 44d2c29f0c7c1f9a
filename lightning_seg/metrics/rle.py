"""Run-length encoding of binary masks on their own device, in COCO's column-major convention.

A mask ``[H, W]`` read column by column (Fortran order) is a sequence of alternating runs of
zeros and ones, starting with zeros (a run of length 0 when the first pixel is set). COCO's
uncompressed RLE is that list of run lengths. Encoding here is vectorised over all masks of a
batch; only the run lengths (a few per mask row crossing) leave the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def encode_runs(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run lengths of a batch of masks.

    Args:
        masks: bool ``[M, H, W]``.

    Returns:
        ``runs`` int64 ``[R]`` all masks' run lengths concatenated, and ``num_runs`` int64
        ``[M]`` how many of them belong to each mask.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M,H,W], got {tuple(masks.shape)}")
    m, h, w = masks.shape
    n = h * w
    device = masks.device
    if m == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    flat = masks.transpose(1, 2).reshape(m, n).bool()
    # Run boundaries: every change between neighbours, plus the first pixel when it is set
    # (the first run is zeros, of length 0 then).
    rows, cols = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=True)
    first = torch.nonzero(flat[:, 0], as_tuple=True)[0]
    rows = torch.cat([first, rows])
    cols = torch.cat([torch.zeros_like(first), cols + 1])
    # Boundaries of each mask: 0, every change position, n. Sorting (mask, position) keys
    # puts each mask's boundaries together and in order.
    stride = n + 1
    starts = torch.arange(m, device=device) * stride
    keys = torch.cat([starts, rows * stride + cols, starts + n])
    keys, _ = torch.sort(keys)
    mask_of = keys // stride
    same_mask = mask_of[1:] == mask_of[:-1]
    runs = (keys[1:] - keys[:-1])[same_mask]
    num_runs = torch.bincount(rows, minlength=m) + 1
    return runs, num_runs


def runs_to_coco(runs: np.ndarray, height: int, width: int) -> dict[str, Any]:
    """COCO compressed RLE (``{"size": [H, W], "counts": str}``) from one mask's run lengths."""
    from pycocotools import mask as mask_util

    rle = mask_util.frPyObjects({"size": [height, width], "counts": [int(r) for r in runs]}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def masks_to_coco_rles(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO compressed RLEs of bool ``[M, H, W]`` masks (encoded on their device)."""
    runs, num_runs = encode_runs(masks)
    h, w = masks.shape[-2:]
    runs_np = runs.cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(num_runs.cpu().numpy())])
    return [runs_to_coco(runs_np[bounds[i] : bounds[i + 1]], h, w) for i in range(masks.shape[0])]
