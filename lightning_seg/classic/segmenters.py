"""The classic methods as parameter-free predictors: images in, segment maps out.

Every predictor is an ``nn.Module`` without parameters, built from typed arguments (so a YAML
config names it by ``class_path``), and maps a padded batch to one int64 segment map per image:

* ids ``>= 0`` are segments, ``-1`` marks pixels no segment holds (region growing's ungrown
  pixels);
* where :attr:`ClassicSegmenter.num_clusters` is an int, ids mean the same thing in every image
  (Otsu classes dark to bright, k-means clusters ordered by the luma of their centres, region
  growing's seeds at fixed relative positions), so they can be matched to classes over a whole
  split; where it is None (watershed basins) ids are per image only.

Images of one size are segmented together (one batched call); padding is never looked at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.classic.backend import Backend, use_library
from lightning_seg.classic.kmeans import kmeans_plus_plus, lloyd_kmeans, pixel_features
from lightning_seg.classic.region_growing import gradient_minima_seeds, region_growing
from lightning_seg.classic.thresholding import (
    grey_levels,
    level_histograms,
    multi_otsu_thresholds,
    otsu_thresholds,
    threshold_classes,
)
from lightning_seg.classic.watershed import (
    distance_peak_markers,
    gradient_magnitude,
    h_minima_markers,
    watershed_segments,
)

__all__ = ["ClassicSegmenter", "KMeansSegmentation", "MarkerWatershed", "OtsuThresholding", "RegionGrowing"]

_LUMA = (0.299, 0.587, 0.114)


def to_uint8(images: Tensor) -> Tensor:
    """uint8 ``[B, 3, H, W]`` colours of images uint8 or float in ``[0, 1]`` (a batch's own
    ``x / 255`` rounds back to the stored bytes)."""
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 255).round().clamp(0, 255).to(torch.uint8)


class ClassicSegmenter(nn.Module):
    """Base of the classic predictors (no parameters; see the module docstring).

    Args:
        backend: ``auto`` (the libraries' kernels on the CPU, tensor code on accelerators),
            ``library`` or ``tensor`` (see :mod:`lightning_seg.classic.backend`).
    """

    num_clusters: int | None = None
    """Number of ids comparable across images, or None when ids are per image."""

    def __init__(self, backend: Backend = "auto") -> None:
        super().__init__()
        use_library(backend, torch.device("cpu"), key=f"{type(self).__name__}.backend")
        self.backend = backend

    def segment(self, images: Tensor) -> Tensor:
        """Segment maps of images of one size: uint8 ``[B, 3, H, W]`` -> int64 ``[B, H, W]``."""
        raise NotImplementedError

    def forward(self, images: Tensor, image_sizes: Sequence[Sequence[int]] | None = None) -> list[Tensor]:
        """One int64 ``[h, w]`` segment map per image.

        Args:
            images: uint8 or float in ``[0, 1]`` ``[B, 3, Hp, Wp]`` (a padded batch).
            image_sizes: ``(h, w)`` of each image inside the padding (default: the full size).
        """
        b, _, hp, wp = images.shape
        sizes = [tuple(int(v) for v in s) for s in image_sizes] if image_sizes is not None else [(hp, wp)] * b
        if len(sizes) != b:
            raise ValueError(f"{type(self).__name__}: {b} images but {len(sizes)} image sizes")
        colours = to_uint8(images)
        out: list[Tensor | None] = [None] * b
        for size in dict.fromkeys(sizes):
            idx = [i for i, s in enumerate(sizes) if s == size]
            h, w = size
            maps = self.segment(colours[idx, :, :h, :w].contiguous())
            for j, i in enumerate(idx):
                out[i] = maps[j]
        return out  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class OtsuThresholding(ClassicSegmenter):
    """Otsu (``classes=2``) or multi-level Otsu thresholds of the grey levels; ids are the classes
    from dark (0) to bright.

    Args:
        classes: 2 to 4.
        channel: threshold this channel (0, 1, 2) instead of the luma.
        backend: see :class:`ClassicSegmenter`.
    """

    def __init__(self, classes: int = 2, channel: int | None = None, backend: Backend = "auto") -> None:
        super().__init__(backend)
        if not 2 <= classes <= 4:
            raise ValueError(f"OtsuThresholding.classes must be 2, 3 or 4, got {classes}")
        self.classes = classes
        self.channel = channel
        self.num_clusters = classes

    def segment(self, images: Tensor) -> Tensor:
        levels = grey_levels(images, self.channel)
        hist = level_histograms(levels, backend=self.backend)
        if self.classes == 2:
            thresholds = otsu_thresholds(hist)
        else:
            # an image with fewer distinct levels than classes keeps Otsu's two classes
            few = (hist > 0).sum(1) < self.classes
            thresholds = torch.zeros(len(hist), self.classes - 1, dtype=torch.long, device=hist.device)
            if bool((~few).any()):
                thresholds[~few] = multi_otsu_thresholds(hist[~few], self.classes, backend=self.backend)
            if bool(few.any()):
                thresholds[few] = otsu_thresholds(hist[few])[:, None].expand(-1, self.classes - 1)
        return threshold_classes(levels, thresholds)


class RegionGrowing(ClassicSegmenter):
    """Seeded region growing; id ``s`` is the region of seed ``s`` (the first seed holding a
    pixel), ``-1`` the pixels no region reached.

    Args:
        tolerance: largest per-channel difference from the seed (``mode="seed"``) or from the
            running region mean (``mode="mean"``).
        num_seeds: seeds per image; ``grid`` seeds need a square number (a ``sqrt x sqrt`` grid
            at the same relative positions in every image).
        seeds: ``grid`` or ``gradient_minima`` (the flattest local minima of the gradient,
            flattest first).
        min_distance: window half-size of the gradient minima.
        features: ``grey`` (luma) or ``colour`` (RGB, every channel within ``tolerance``).
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).
        mode: ``seed`` or ``mean``.
        backend: ``library`` grows with scikit-image's flood fill (grey) or scipy's labelling
            (colour); ``tensor`` by batched dilation (the only path of ``mode="mean"``).
    """

    def __init__(
        self,
        tolerance: float = 12.0,
        num_seeds: int = 16,
        seeds: Literal["grid", "gradient_minima"] = "grid",
        min_distance: int = 5,
        features: Literal["grey", "colour"] = "grey",
        connectivity: int = 1,
        mode: Literal["seed", "mean"] = "seed",
        backend: Backend = "auto",
    ) -> None:
        super().__init__(backend)
        side = math.isqrt(num_seeds)
        if num_seeds < 1 or (seeds == "grid" and side * side != num_seeds):
            raise ValueError(f"RegionGrowing.num_seeds must be a positive square for grid seeds, got {num_seeds}")
        if seeds not in ("grid", "gradient_minima"):
            raise ValueError(f"RegionGrowing.seeds must be 'grid' or 'gradient_minima', got {seeds!r}")
        if features not in ("grey", "colour"):
            raise ValueError(f"RegionGrowing.features must be 'grey' or 'colour', got {features!r}")
        if connectivity not in (1, 2):
            raise ValueError(f"RegionGrowing.connectivity must be 1 or 2, got {connectivity}")
        if mode not in ("seed", "mean"):
            raise ValueError(f"RegionGrowing.mode must be 'seed' or 'mean', got {mode!r}")
        self.tolerance, self.seeds, self.min_distance = tolerance, seeds, min_distance
        self.features, self.connectivity, self.mode = features, connectivity, mode
        self.num_clusters = num_seeds

    def seed_points(self, levels: Tensor) -> Tensor:
        """int64 ``[B, S, 2]`` ``(row, col)`` seeds of grey levels ``[B, H, W]``."""
        b, h, w = levels.shape
        if self.seeds == "gradient_minima":
            return gradient_minima_seeds(levels, self.num_clusters, self.min_distance)
        side = math.isqrt(self.num_clusters)
        ys = ((torch.arange(side, device=levels.device) + 0.5) * h / side).long().clamp(max=h - 1)
        xs = ((torch.arange(side, device=levels.device) + 0.5) * w / side).long().clamp(max=w - 1)
        return torch.cartesian_prod(ys, xs).expand(b, -1, -1)

    def segment(self, images: Tensor) -> Tensor:
        levels = grey_levels(images)
        image = levels if self.features == "grey" else images
        method = None
        if self.mode == "seed" and not use_library(self.backend, images.device):
            method = "dilation"
        elif self.mode == "seed" and self.backend == "library":
            method = "flood" if self.features == "grey" else "label"
        labels = region_growing(image, self.seed_points(levels), self.tolerance, self.connectivity, self.mode,
                                method=method)
        return labels - 1

    def extra_repr(self) -> str:
        return (f"tolerance={self.tolerance}, num_seeds={self.num_clusters}, seeds={self.seeds!r}, "
                f"features={self.features!r}, mode={self.mode!r}, {super().extra_repr()}")


class MarkerWatershed(ClassicSegmenter):
    """Marker watershed (scikit-image's, the images of a batch spread over a thread pool).

    ``markers="h_minima"``: the basins of the Sobel gradient of the luma flooded from its
    regional minima of depth ``>= h`` (ids: the basins, 0 upwards). ``markers="distance_peaks"``:
    the Otsu foreground (pixels brighter than Otsu's threshold, or darker with
    ``foreground="dark"``) split by flooding the negated distance to the background from its
    peaks (ids: 0 the background, then one per basin).

    Args:
        markers: ``h_minima`` or ``distance_peaks``.
        h: minimum depth of a marker minimum, in grey levels of gradient.
        min_distance: smallest distance between two distance peaks.
        foreground: which Otsu class is the foreground of ``distance_peaks``: ``bright`` or ``dark``.
        compactness: > 0 gives compact watershed.
        connectivity: 1 or 2.
        backend: see :class:`ClassicSegmenter` (scikit-image on every device).
    """

    def __init__(
        self,
        markers: Literal["h_minima", "distance_peaks"] = "h_minima",
        h: float = 8.0,
        min_distance: int = 5,
        foreground: Literal["bright", "dark"] = "bright",
        compactness: float = 0.0,
        connectivity: int = 1,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(backend)
        if markers not in ("h_minima", "distance_peaks"):
            raise ValueError(f"MarkerWatershed.markers must be 'h_minima' or 'distance_peaks', got {markers!r}")
        if foreground not in ("bright", "dark"):
            raise ValueError(f"MarkerWatershed.foreground must be 'bright' or 'dark', got {foreground!r}")
        if connectivity not in (1, 2):
            raise ValueError(f"MarkerWatershed.connectivity must be 1 or 2, got {connectivity}")
        self.markers, self.h, self.min_distance, self.foreground = markers, h, min_distance, foreground
        self.compactness, self.connectivity = compactness, connectivity

    def segment(self, images: Tensor) -> Tensor:
        levels = grey_levels(images)
        if self.markers == "h_minima":
            grad = gradient_magnitude(levels)
            return watershed_segments(grad, h_minima_markers(grad, self.h), self.connectivity, self.compactness) - 1
        t = otsu_thresholds(level_histograms(levels, backend=self.backend))[:, None, None]
        fg = levels > t if self.foreground == "bright" else levels <= t
        from scipy import ndimage

        dist = torch.stack([torch.from_numpy(ndimage.distance_transform_edt(f)) for f in fg.cpu().numpy()])
        return watershed_segments(-dist.to(levels.device), distance_peak_markers(fg, self.min_distance),
                                  self.connectivity, self.compactness, mask=fg)

    def extra_repr(self) -> str:
        return f"markers={self.markers!r}, h={self.h}, compactness={self.compactness}, {super().extra_repr()}"


class KMeansSegmentation(ClassicSegmenter):
    """k-means on pixel colours (plus weighted coordinates: a SLIC-like variant) with k-means++
    seeding; ids are the clusters ordered by the luma of their centres (dark to bright).

    Args:
        num_clusters: ``k``.
        spatial_weight: weight of the pixel coordinates beside the 0-255 colours (0: colour only).
        max_iter: Lloyd iterations cap.
        tol: relative centre-shift tolerance (scikit-learn's).
        seed: seed of the k-means++ draws (the same draws for every batch).
        backend: see :class:`ClassicSegmenter` (``library``: scikit-learn's Lloyd kernel).
    """

    def __init__(self, num_clusters: int = 5, spatial_weight: float = 0.0, max_iter: int = 300, tol: float = 1e-4,
                 seed: int = 0, backend: Backend = "auto") -> None:
        super().__init__(backend)
        if num_clusters < 1:
            raise ValueError(f"KMeansSegmentation.num_clusters must be >= 1, got {num_clusters}")
        self.num_clusters = num_clusters
        self.spatial_weight, self.max_iter, self.tol, self.seed = spatial_weight, max_iter, tol, seed

    def segment(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        points = pixel_features(images, self.spatial_weight)
        k = min(self.num_clusters, h * w)
        init = kmeans_plus_plus(points, k, torch.Generator().manual_seed(self.seed))
        result = lloyd_kmeans(points, init, self.max_iter, self.tol, backend=self.backend)
        luma = (result.centers[..., :3] * torch.tensor(_LUMA, dtype=result.centers.dtype,
                                                       device=result.centers.device)).sum(-1)
        rank = luma.argsort(1).argsort(1)  # [B, k]: the position of each cluster, dark first
        return rank.gather(1, result.labels).view(b, h, w)

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, spatial_weight={self.spatial_weight}, {super().extra_repr()}"
