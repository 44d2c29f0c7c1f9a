"""The classic methods as parameter-free predictors: images in, segment maps out.

Every predictor is an ``nn.Module`` without parameters, built from typed arguments (so a YAML
config names it by ``class_path``), and maps a padded batch to one int64 segment map per image:

* ids ``>= 0`` are segments, ``-1`` marks pixels no segment holds (region growing's ungrown
  pixels);
* where :attr:`ClassicSegmenter.num_clusters` is an int, ids mean the same thing in every image
  (Otsu classes dark to bright, k-means clusters ordered by the luma of their centres, region
  growing's grid or given seeds at fixed relative positions), so they can be matched to classes
  over a whole split; where it is None (watershed basins, region growing from gradient minima)
  ids are per image only.

Images of one size are segmented together (one batched call); padding is never looked at, and
an image's segments do not depend on the batch it comes in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.classic.backend import Backend, map_images, use_library
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
    from dark (0) to bright. An image with fewer distinct levels than ``classes`` is split by
    Otsu's single threshold (ids 0 and 1 only).

    Args:
        classes: 2 to 4.
        channel: threshold this channel (0, 1, 2) instead of the luma.
        backend: see :class:`ClassicSegmenter`.
    """

    def __init__(self, classes: int = 2, channel: int | None = None, backend: Backend = "auto") -> None:
        super().__init__(backend)
        if not 2 <= classes <= 4:
            raise ValueError(f"OtsuThresholding.classes must be 2, 3 or 4, got {classes}")
        if channel not in (None, 0, 1, 2):
            raise ValueError(f"OtsuThresholding.channel must be None, 0, 1 or 2, got {channel}")
        self.classes = classes
        self.channel = channel
        self.num_clusters = classes

    def segment(self, images: Tensor) -> Tensor:
        levels = grey_levels(images, self.channel)
        hist = level_histograms(levels, backend=self.backend)
        if self.classes == 2:
            thresholds = otsu_thresholds(hist, self.backend)
        else:
            # an image with fewer distinct levels than classes keeps Otsu's two classes
            few = (hist > 0).sum(1) < self.classes
            thresholds = torch.zeros(len(hist), self.classes - 1, dtype=torch.long, device=hist.device)
            if bool((~few).any()):
                thresholds[~few] = multi_otsu_thresholds(hist[~few], self.classes, backend=self.backend)
            if bool(few.any()):
                thresholds[few] = otsu_thresholds(hist[few], self.backend)[:, None].expand(-1, self.classes - 1)
        return threshold_classes(levels, thresholds)


class RegionGrowing(ClassicSegmenter):
    """Seeded region growing; id ``s`` is the region of seed ``s`` (the first seed holding a
    pixel), ``-1`` the pixels no region reached.

    Args:
        tolerance: largest per-channel difference from the seed (``mode="seed"``) or from the
            running region mean (``mode="mean"``).
        num_seeds: seeds per image; ``grid`` seeds need a square number (a ``sqrt x sqrt`` grid
            at the same relative positions in every image); ignored by ``given`` seeds.
        seeds: ``grid``, ``gradient_minima`` (one seed per flat plateau of the gradient, flattest
            first; ids are then per image) or ``given`` (``positions``).
        positions: ``given`` seeds as ``(row, col)`` fractions of the image size in ``[0, 1]``.
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
        seeds: Literal["grid", "gradient_minima", "given"] = "grid",
        positions: list[tuple[float, float]] | None = None,
        min_distance: int = 5,
        features: Literal["grey", "colour"] = "grey",
        connectivity: int = 1,
        mode: Literal["seed", "mean"] = "seed",
        backend: Backend = "auto",
    ) -> None:
        super().__init__(backend)
        if seeds not in ("grid", "gradient_minima", "given"):
            raise ValueError(f"RegionGrowing.seeds must be 'grid', 'gradient_minima' or 'given', got {seeds!r}")
        if seeds == "given":
            if not positions or any(len(p) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in p)
                                    for p in positions):
                raise ValueError(f"RegionGrowing.positions must be (row, col) fractions in [0, 1] for given seeds, "
                                 f"got {positions}")
            num_seeds = len(positions)
        elif positions:
            raise ValueError(f"RegionGrowing.positions are used by seeds='given' only, got seeds={seeds!r}")
        side = math.isqrt(num_seeds)
        if num_seeds < 1 or (seeds == "grid" and side * side != num_seeds):
            raise ValueError(f"RegionGrowing.num_seeds must be a positive square for grid seeds, got {num_seeds}")
        if tolerance < 0 or min_distance < 1:
            raise ValueError(f"RegionGrowing.tolerance ({tolerance}) must be >= 0 and min_distance ({min_distance}) >= 1")
        self.positions = [tuple(float(v) for v in p) for p in positions or []]
        if features not in ("grey", "colour"):
            raise ValueError(f"RegionGrowing.features must be 'grey' or 'colour', got {features!r}")
        if connectivity not in (1, 2):
            raise ValueError(f"RegionGrowing.connectivity must be 1 or 2, got {connectivity}")
        if mode not in ("seed", "mean"):
            raise ValueError(f"RegionGrowing.mode must be 'seed' or 'mean', got {mode!r}")
        self.tolerance, self.seeds, self.min_distance = tolerance, seeds, min_distance
        self.features, self.connectivity, self.mode = features, connectivity, mode
        self.num_seeds = num_seeds
        # the k-th flattest plateau is a different place in every image: no shared ids
        self.num_clusters = None if seeds == "gradient_minima" else num_seeds

    def seed_points(self, levels: Tensor) -> Tensor:
        """int64 ``[B, S, 2]`` ``(row, col)`` seeds of grey levels ``[B, H, W]``."""
        b, h, w = levels.shape
        if self.seeds == "gradient_minima":
            return gradient_minima_seeds(levels, self.num_seeds, self.min_distance)
        if self.seeds == "given":
            frac = torch.tensor(self.positions, dtype=torch.float64, device=levels.device)
            rows = (frac[:, 0] * h).long().clamp(0, h - 1)
            cols = (frac[:, 1] * w).long().clamp(0, w - 1)
            return torch.stack([rows, cols], 1).expand(b, -1, -1)
        side = math.isqrt(self.num_seeds)
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
        where = f", positions={self.positions}" if self.positions else ""
        return (f"tolerance={self.tolerance}, num_seeds={self.num_seeds}, seeds={self.seeds!r}{where}, "
                f"features={self.features!r}, mode={self.mode!r}, {super().extra_repr()}")


class MarkerWatershed(ClassicSegmenter):
    """Marker watershed (scikit-image's, the images of a batch spread over a thread pool).

    ``markers="h_minima"``: the Sobel gradient of the luma flooded from its regional minima of
    depth ``>= h`` (ids: the basins, 0 upwards; an image without such a minimum, e.g. a flat one,
    is one basin). ``markers="distance_peaks"``: the Otsu foreground (pixels brighter than Otsu's
    threshold, or darker with ``foreground="dark"``) gets one marker per peak of its distance to
    the background and the background one marker; then the gradient (``elevation="gradient"``)
    or, inside the foreground only, the negated distance (``elevation="distance"``, the classic
    split of touching objects) is flooded. Ids: 0 the background, then one per foreground basin.

    Args:
        markers: ``h_minima`` or ``distance_peaks``.
        h: minimum depth of a marker minimum, in grey levels of gradient (>= 0).
        min_distance: smallest distance between two distance peaks (>= 1).
        foreground: which Otsu class is the foreground of ``distance_peaks``: ``bright`` or ``dark``.
        elevation: what ``distance_peaks`` floods: ``gradient`` or ``distance``.
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
        elevation: Literal["gradient", "distance"] = "gradient",
        compactness: float = 0.0,
        connectivity: int = 1,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(backend)
        if markers not in ("h_minima", "distance_peaks"):
            raise ValueError(f"MarkerWatershed.markers must be 'h_minima' or 'distance_peaks', got {markers!r}")
        if foreground not in ("bright", "dark"):
            raise ValueError(f"MarkerWatershed.foreground must be 'bright' or 'dark', got {foreground!r}")
        if elevation not in ("gradient", "distance"):
            raise ValueError(f"MarkerWatershed.elevation must be 'gradient' or 'distance', got {elevation!r}")
        if connectivity not in (1, 2):
            raise ValueError(f"MarkerWatershed.connectivity must be 1 or 2, got {connectivity}")
        if h < 0 or compactness < 0 or min_distance < 1:
            raise ValueError(f"MarkerWatershed: h ({h}) and compactness ({compactness}) must be >= 0, "
                             f"min_distance ({min_distance}) >= 1")
        self.markers, self.h, self.min_distance, self.foreground = markers, h, min_distance, foreground
        self.elevation, self.compactness, self.connectivity = elevation, compactness, connectivity

    def segment(self, images: Tensor) -> Tensor:
        from scipy import ndimage

        levels = grey_levels(images)
        grad = gradient_magnitude(levels)
        if self.markers == "h_minima":
            markers = h_minima_markers(grad, self.h)
            for i in torch.nonzero(markers.flatten(1).amax(1) == 0).flatten().tolist():
                flat = int(grad[i].argmin())  # no minimum deep enough: one basin
                markers[i].view(-1)[flat] = 1
            return watershed_segments(grad, markers, self.connectivity, self.compactness) - 1
        t = otsu_thresholds(level_histograms(levels, backend=self.backend), self.backend)[:, None, None]
        fg = levels > t if self.foreground == "bright" else levels <= t
        dist = torch.stack([torch.from_numpy(d) for d in map_images(ndimage.distance_transform_edt,
                                                                     list(fg.cpu().numpy()))]).to(levels.device)
        peaks = distance_peak_markers(fg, self.min_distance, distance=dist)
        if self.elevation == "distance":
            return watershed_segments(-dist, peaks, self.connectivity, self.compactness, mask=fg)
        background = peaks.flatten(1).amax(1)[:, None, None] + 1
        markers = torch.where(fg, peaks, background)
        basins = watershed_segments(grad, markers, self.connectivity, self.compactness)
        return torch.where(basins == background, 0, basins)

    def extra_repr(self) -> str:
        return (f"markers={self.markers!r}, h={self.h}, elevation={self.elevation!r}, "
                f"compactness={self.compactness}, {super().extra_repr()}")


class KMeansSegmentation(ClassicSegmenter):
    """k-means on pixel colours (plus weighted coordinates: a SLIC-like variant) with k-means++
    seeding; ids are the clusters ordered by the luma of their centres (dark to bright).

    Args:
        num_clusters: ``k``.
        spatial_weight: weight of the pixel coordinates beside the 0-255 colours (0: colour only).
        max_iter: Lloyd iterations cap.
        tol: relative centre-shift tolerance (scikit-learn's).
        seed: seed of the k-means++ draws (each image draws from its own generator with this
            seed, so its clusters do not depend on the batch it comes in).
        backend: see :class:`ClassicSegmenter` (``library``: scikit-learn's Lloyd kernel).
    """

    def __init__(self, num_clusters: int = 5, spatial_weight: float = 0.0, max_iter: int = 300, tol: float = 1e-4,
                 seed: int = 0, backend: Backend = "auto") -> None:
        super().__init__(backend)
        if num_clusters < 1 or max_iter < 1 or tol < 0 or spatial_weight < 0:
            raise ValueError(f"KMeansSegmentation: num_clusters ({num_clusters}) and max_iter ({max_iter}) must be "
                             f">= 1, tol ({tol}) and spatial_weight ({spatial_weight}) >= 0")
        self.num_clusters = num_clusters
        self.spatial_weight, self.max_iter, self.tol, self.seed = spatial_weight, max_iter, tol, seed

    def segment(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        points = pixel_features(images, self.spatial_weight)
        k = min(self.num_clusters, h * w)
        init = torch.cat([kmeans_plus_plus(points[i : i + 1], k, torch.Generator().manual_seed(self.seed))
                          for i in range(b)])
        result = lloyd_kmeans(points, init, self.max_iter, self.tol, backend=self.backend)
        luma = (result.centers[..., :3] * torch.tensor(_LUMA, dtype=result.centers.dtype,
                                                       device=result.centers.device)).sum(-1)
        rank = luma.argsort(dim=1, stable=True).argsort(1)  # [B, k]: the position of each cluster, dark first
        return rank.gather(1, result.labels).view(b, h, w)

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, spatial_weight={self.spatial_weight}, {super().extra_repr()}"
