"""Seeded region growing on grey levels or colours, 4- or 8-connected.

``tolerance`` is relative to the seed (``mode="seed"``: a pixel joins when every channel is within
``tolerance`` of the seed's, and it is connected to the seed through such pixels: scikit-image's
``flood`` for one channel) or to the running region mean (``mode="mean"``: the region grows one
ring of neighbours at a time, each ring judged against the mean of the region so far). Several
seeds give a label map: a pixel belongs to the first seed whose region holds it (0: none).

Three paths give the same regions. ``"flood"`` (the CPU default for one channel) runs
scikit-image's flood-fill kernel for every seed on one padded copy of each image, the images
spread over a thread pool (where that kernel cannot be imported it calls ``flood`` itself);
``"label"`` (the CPU default for colours) labels the tolerance mask of each seed with
``scipy.ndimage.label`` and keeps the seed's component; ``"dilation"`` (the tensor path for
accelerators, all seeds of a batch at once) dilates the seeds inside their masks until nothing
changes. ``mode="mean"`` has the dilation path only. On integer images a pixel joins when
``|value - seed| <= floor(tolerance)``, which is the same rule.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lightning_seg.classic.backend import map_images

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

    A pixel is a minimum when no pixel of its ``2 min_distance + 1`` window has a smaller
    gradient; a connected plateau of such pixels (a flat region) gives one seed, its first pixel
    in raster order. Seeds are ordered flattest first, ties by position, so every device and
    batch gives the same seeds.

    Args:
        levels: float or int ``[B, H, W]`` grey levels.
        num_seeds: seeds per image.
        min_distance: window half-size.

    Returns:
        int64 ``[B, S, 2]`` ``(row, col)``; images with fewer plateaus repeat their flattest one.
    """
    from scipy import ndimage

    if num_seeds < 1 or min_distance < 1:
        raise ValueError(f"gradient_minima_seeds: num_seeds ({num_seeds}) and min_distance ({min_distance}) "
                         "must be >= 1")
    x = levels.double()[:, None]
    gy = x[..., 1:, :] - x[..., :-1, :]
    gx = x[..., :, 1:] - x[..., :, :-1]
    grad = F.pad(gy.abs(), (0, 0, 0, 1)) + F.pad(gx.abs(), (0, 1, 0, 0))  # [B, 1, H, W]
    k = 2 * min_distance + 1
    local_min = -F.max_pool2d(-grad, k, stride=1, padding=min_distance)
    is_min = (grad <= local_min)[:, 0].cpu().numpy()
    g = grad[:, 0].cpu().numpy()
    w = levels.shape[-1]
    out = []
    for minima, gi in zip(is_min, g):
        lab, n = ndimage.label(minima, structure=np.ones((3, 3), dtype=bool))
        flat = np.flatnonzero(lab)
        first = np.full(n, lab.size, dtype=np.int64)
        np.minimum.at(first, lab.ravel()[flat] - 1, flat)  # each plateau's first pixel
        order = np.lexsort((first, gi.ravel()[first]))  # flattest first, then by position
        idx = first[order][:num_seeds]
        idx = np.concatenate([idx, np.full(num_seeds - len(idx), idx[0])])
        out.append(np.stack([idx // w, idx % w], 1))
    return torch.from_numpy(np.stack(out)).to(levels.device)


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
    method: Literal["flood", "label", "dilation"] | None = None,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Grow a region from every seed (the module docstring's rules).

    Args:
        image: ``[B, H, W]`` grey levels or ``[B, C, H, W]`` colours (any real dtype).
        seeds: int64 ``[B, S, 2]`` ``(row, col)`` per image (or ``[S, 2]`` for every image).
        tolerance: largest per-channel difference a pixel may have.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).
        mode: ``seed`` or ``mean``.
        method: ``flood`` (one channel), ``label`` or ``dilation``; default on the CPU with
            ``mode="seed"``: ``flood`` for one channel, ``label`` for several; else ``dilation``.
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
    if method is None:
        method = ("flood" if c == 1 else "label") if x.device.type == "cpu" and mode == "seed" else "dilation"
    if method not in ("flood", "label", "dilation"):
        raise ValueError(f"region_growing: method must be 'flood', 'label' or 'dilation', got {method!r}")
    if method != "dilation" and mode == "mean":
        raise ValueError("region_growing: mode 'mean' has the dilation method only")
    if method == "flood":
        if c != 1:
            raise ValueError(f"region_growing: method 'flood' takes one channel, got {c}")
        structure = _structure(connectivity)
        imgs = x[:, 0].cpu().numpy()
        pts = seeds.cpu().numpy()
        out = map_images(lambda i: _flood_labels(imgs[i], pts[i], tolerance, structure), list(range(b)))
        return torch.from_numpy(np.stack(out) if b else np.zeros((0, h, w), np.int64)).to(image.device)
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


def _flood_kernel():
    """scikit-image's flood-fill kernel and its neighbour offsets, or None where they cannot be imported."""
    try:
        from skimage.morphology._flood_fill_cy import _flood_fill_tolerance
        from skimage.morphology._util import _offsets_to_raveled_neighbors
    except ImportError:
        return None
    return _flood_fill_tolerance, _offsets_to_raveled_neighbors


def _flood_labels(image: np.ndarray, seeds: np.ndarray, tolerance: float, structure: np.ndarray) -> np.ndarray:
    """First-seed label map of one image from scikit-image's flood fill: ``[H, W]`` -> int64 ``[H, W]``."""
    if np.issubdtype(image.dtype, np.integer):
        tolerance = math.floor(tolerance)
        lo, hi = int(image.min()), int(image.max())
        dtype = np.uint8 if 0 <= lo and hi <= 255 else np.int64
    else:
        dtype = np.float64
    kernel = _flood_kernel()
    if kernel is None:  # the kernel moved: the public call, one padded copy per seed
        from skimage.segmentation import flood

        labels = np.zeros(image.shape, dtype=np.int64)
        for s, (y, x) in enumerate(seeds.tolist()):
            region = flood(image.astype(dtype), (y, x), footprint=structure, tolerance=tolerance)
            np.copyto(labels, s + 1, where=region & (labels == 0))
        return labels
    fill, neighbour_offsets = kernel
    h, w = image.shape
    # one padded copy for all seeds; the border flags (2) stop the fill as flood's own do
    work = np.zeros((h + 2, w + 2), dtype=dtype)
    work[1:-1, 1:-1] = image
    offsets = neighbour_offsets(work.shape, structure, center=(1, 1))
    flags = np.full((h + 2, w + 2), 2, dtype=np.uint8)
    inner = flags[1:-1, 1:-1]
    labels = np.zeros((h, w), dtype=np.int32)
    info = np.iinfo(dtype) if dtype != np.float64 else None
    for s, (y, x) in enumerate(seeds.tolist()):
        inner.fill(0)
        v = work[y + 1, x + 1]
        lo_tol = v.item() - tolerance if info is None else max(int(info.min), v.item() - tolerance)
        hi_tol = v.item() + tolerance if info is None else min(int(info.max), v.item() + tolerance)
        fill(work.ravel(), flags.ravel(), offsets, (y + 1) * (w + 2) + x + 1, v, lo_tol, hi_tol)
        np.copyto(labels, s + 1, where=(inner == 1) & (labels == 0))
    return labels.astype(np.int64)
