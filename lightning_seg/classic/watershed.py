"""Marker-based watershed on the gradient magnitude, with markers from distance-transform peaks or
h-minima; scikit-image's ``watershed`` is the implementation (a CPU step for the whole batch,
its images spread over a thread pool: the kernels release the GIL), so its results are
scikit-image's by construction."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from lightning_seg.classic.backend import map_images

__all__ = ["distance_peak_markers", "gradient_magnitude", "h_minima_markers", "watershed_segments"]


def gradient_magnitude(levels: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of grey levels float or int ``[B, H, W]`` -> float64 ``[B, H, W]``
    (scikit-image's ``filters.sobel``)."""
    from skimage.filters import sobel

    x = levels.detach().cpu().double().numpy()
    return _stacked(map_images(sobel, list(x)), x.shape, levels.device)


def h_minima_markers(gradient: torch.Tensor, h: float) -> torch.Tensor:
    """Markers at the regional minima of depth at least ``h`` (``skimage.morphology.h_minima``),
    each connected minimum its own label: float ``[B, H, W]`` -> int64 ``[B, H, W]`` (0 = none)."""
    from scipy import ndimage
    from skimage.morphology import h_minima

    x = gradient.detach().cpu().numpy()
    return _stacked(map_images(lambda g: ndimage.label(h_minima(g, h))[0], list(x)), x.shape, gradient.device).long()


def distance_peak_markers(foreground: torch.Tensor, min_distance: int = 5,
                          distance: torch.Tensor | None = None) -> torch.Tensor:
    """Markers at the peaks of the Euclidean distance to the background of a binary image
    (``skimage.feature.peak_local_max`` on ``scipy.ndimage.distance_transform_edt``, border peaks
    included), one label per peak: bool ``[B, H, W]`` -> int64 ``[B, H, W]`` (0 = none).
    ``distance``: the distance maps float ``[B, H, W]`` when already computed."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    def one(i: int) -> np.ndarray:
        dist = ndimage.distance_transform_edt(fg[i]) if dists is None else dists[i]
        peaks = peak_local_max(dist, min_distance=min_distance, labels=fg[i].astype(np.int32), exclude_border=False)
        m = np.zeros(dist.shape, dtype=np.int64)
        m[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return m

    fg = foreground.detach().cpu().numpy()
    dists = None if distance is None else distance.detach().cpu().numpy()
    return _stacked(map_images(one, list(range(fg.shape[0]))), fg.shape, foreground.device)


def watershed_segments(elevation: torch.Tensor, markers: torch.Tensor, connectivity: Literal[1, 2] = 1,
                       compactness: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Flood ``elevation`` from ``markers`` (``skimage.segmentation.watershed``), per image.

    Args:
        elevation: float ``[B, H, W]`` (e.g. :func:`gradient_magnitude`).
        markers: int64 ``[B, H, W]``, 0 where the label is to be found.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).
        compactness: > 0 gives compact watershed (more regular basins).
        mask: optional bool ``[B, H, W]``; pixels outside stay 0.

    Returns:
        int64 ``[B, H, W]`` basin labels (the markers' values).
    """
    from skimage.segmentation import watershed

    if elevation.shape != markers.shape:
        raise ValueError(f"watershed_segments: elevation {tuple(elevation.shape)} and markers "
                         f"{tuple(markers.shape)} differ")
    elev, mark = elevation.detach().cpu().numpy(), markers.detach().cpu().numpy()
    masks = None if mask is None else mask.detach().cpu().numpy()
    out = map_images(lambda i: watershed(elev[i], mark[i], connectivity=connectivity, compactness=compactness,
                                         mask=None if masks is None else masks[i]), list(range(elev.shape[0])))
    return _stacked(out, elev.shape, elevation.device).long()


def _stacked(arrays: list[np.ndarray], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The per-image results as one ``[B, H, W]`` tensor on ``device`` (an empty batch stays empty)."""
    return torch.from_numpy(np.stack(arrays) if arrays else np.zeros(shape)).to(device)
