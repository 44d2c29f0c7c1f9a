"""Seeded region growing on grey levels or colours, 4- or 8-connected.

``tolerance`` is relative to the seed (``mode="seed"``: a pixel joins when every channel is within
``tolerance`` of the seed's, and it is connected to the seed through such pixels: scikit-image's
``flood`` for one channel) or to the running region mean (``mode="mean"``: the region grows one
ring of neighbours at a time, each ring judged against the mean of the region so far). Several
seeds give a label map: a pixel belongs to the first seed whose region holds it (0: none).

Two paths give the same regions: ``"label"`` (CPU default) labels the tolerance mask of each
seed with ``scipy.ndimage.label`` and keeps the seed's component; ``"dilation"`` (tensor path for
accelerators, all seeds of a batch at once) dilates the seeds inside their masks until nothing
changes. ``mode="mean"`` has the dilation path only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gradient_minima_seeds", "grid_seeds", "region_growing"]


def grid_seeds(height: int, width: int, step: int) -> torch.Tensor:
    """Seeds at the centres of a ``step``-pixel grid: int64 ``[S, 2]`` ``(row, col)``."""
    if step < 1:
        raise ValueError(f"grid_seeds: step must be >= 1, got {step}")
    ys = torch.arange(step // 2, height, step)
    xs = torch.arange(step // 2, width, step)
    return torch.cartesian_prod(ys, xs)


def gradient_minima_seeds(levels: torch.Tensor, num_seeds: int, min_distance: int = 5) -> torch.Tensor:
    """Seeds at local minima of the gradient magnitude (flat regions), per image.

    Args:
        levels: float or int ``[B, H, W]`` grey levels.
        num_seeds: seeds per image (the flattest local minima first).
        min_distance: a minimum is the smallest gradient in its ``2 min_distance + 1`` window.

    Returns:
        int64 ``[B, S, 2]`` ``(row, col)``; images with fewer minima repeat their flattest one.
    """
    x = levels.double()[:, None]
    gy = x[..., 1:, :] - x[..., :-1, :]
    gx = x[..., :, 1:] - x[..., :, :-1]
    grad = F.pad(gy.abs(), (0, 0, 0, 1)) + F.pad(gx.abs(), (0, 1, 0, 0))  # [B, 1, H, W]
    k = 2 * min_distance + 1
    local_min = -F.max_pool2d(-grad, k, stride=1, padding=min_distance)
    is_min = grad <= local_min
    score = torch.where(is_min, -grad, torch.tensor(float("-inf"), dtype=grad.dtype, device=grad.device)).flatten(1)
    idx = score.topk(num_seeds, dim=1).indices  # [B, S]
    best = score.argmax(1, keepdim=True)
    idx = torch.where(score.gather(1, idx) > float("-inf"), idx, best)
    w = levels.shape[-1]
    return torch.stack([idx // w, idx % w], -1)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 1:
        return np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    if connectivity == 2:
        return np.ones((3, 3), dtype=bool)
    raise ValueError(f"region_growing: connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}")


def _dilate(region: torch.Tensor, connectivity: int) -> torch.Tensor:
    """One step of 4- or 8-connected dilation of a float 0/1 ``[N, 1, H, W]`` map."""
    if connectivity == 2:
        return F.max_pool2d(region, 3, stride=1, padding=1)
    rows = F.max_pool2d(region, (3, 1), stride=1, padding=(1, 0))
    cols = F.max_pool2d(region, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(rows, cols)


def region_growing(
    image: torch.Tensor,
    seeds: torch.Tensor,
    tolerance: float,
    connectivity: int = 1,
    mode: Literal["seed", "mean"] = "seed",
    method: Literal["label", "dilation"] | None = None,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Grow a region from every seed (the module docstring's rules).

    Args:
        image: ``[B, H, W]`` grey levels or ``[B, C, H, W]`` colours (any real dtype).
        seeds: int64 ``[B, S, 2]`` ``(row, col)`` per image (or ``[S, 2]`` for every image).
        tolerance: largest per-channel difference a pixel may have.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).
        mode: ``seed`` or ``mean``.
        method: ``label`` or ``dilation``; default ``label`` on CPU with ``mode="seed"``.
        max_steps: dilation steps cap (default ``H W``).

    Returns:
        int64 ``[B, H, W]`` labels: ``s + 1`` for the first seed ``s`` whose region holds the pixel, 0 for none.
    """
    x = image[:, None] if image.ndim == 3 else image
    if x.ndim != 4:
        raise ValueError(f"region_growing: image must be [B, H, W] or [B, C, H, W], got {tuple(image.shape)}")
    b, c, h, w = x.shape
    seeds = seeds.expand(b, -1, -1) if seeds.ndim == 2 else seeds
    if seeds.shape[0] != b or seeds.shape[-1] != 2:
        raise ValueError(f"region_growing: seeds must be [B, S, 2] or [S, 2], got {tuple(seeds.shape)}")
    if seeds.numel() and (int(seeds[..., 0].min()) < 0 or int(seeds[..., 0].max()) >= h
                          or int(seeds[..., 1].min()) < 0 or int(seeds[..., 1].max()) >= w):
        raise ValueError(f"region_growing: seeds must lie inside the {h}x{w} image")
    _structure(connectivity)
    if mode not in ("seed", "mean"):
        raise ValueError(f"region_growing: mode must be 'seed' or 'mean', got {mode!r}")
    method = method or ("label" if x.device.type == "cpu" and mode == "seed" else "dilation")
    if method == "label" and mode == "mean":
        raise ValueError("region_growing: mode 'mean' has the dilation method only")
    s = seeds.shape[1]
    x = x.double()
    rows = torch.arange(b, device=x.device)[:, None].expand(b, s)
    seed_values = x.permute(0, 2, 3, 1)[rows, seeds[..., 0], seeds[..., 1]]  # [B, S, C]
    regions = torch.zeros(b, s, h, w, dtype=torch.bool, device=x.device)
    if method == "label":
        from scipy import ndimage

        structure = _structure(connectivity)
        for i in range(b):
            for j in range(s):
                mask = ((x[i] - seed_values[i, j][:, None, None]).abs() <= tolerance).all(0).cpu().numpy()
                lab, _ = ndimage.label(mask, structure=structure)
                comp = lab[int(seeds[i, j, 0]), int(seeds[i, j, 1])]
                regions[i, j] = torch.from_numpy(lab == comp)
    else:
        region = torch.zeros(b * s, 1, h, w, dtype=x.dtype, device=x.device)
        flat = region.view(b, s, h, w)
        flat[rows, torch.arange(s, device=x.device).expand(b, s), seeds[..., 0], seeds[..., 1]] = 1.0
        xs = x[:, None].expand(b, s, c, h, w)
        reference = seed_values[..., None, None]  # [B, S, C, 1, 1]
        within = ((xs - reference).abs() <= tolerance).all(2).reshape(b * s, 1, h, w)
        for _ in range(max_steps or h * w):
            if mode == "mean":
                r = region.view(b, s, 1, h, w)
                reference = (xs * r).sum((3, 4), keepdim=True) / r.sum((3, 4), keepdim=True)
                within = ((xs - reference).abs() <= tolerance).all(2).reshape(b * s, 1, h, w)
            grown = torch.maximum(region, _dilate(region, connectivity) * within)
            if torch.equal(grown, region):
                break
            region = grown
        regions = region.view(b, s, h, w) > 0
    # the first seed holding a pixel names it
    first = torch.where(regions.any(1), regions.float().argmax(1) + 1, 0)
    return first.long()
