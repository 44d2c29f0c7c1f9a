"""k-means on pixel features (colour, optionally weighted coordinates: a SLIC-like variant),
batched over images, with scikit-learn's Lloyd iteration and greedy k-means++ seeding.

:func:`lloyd_kmeans` follows ``sklearn.cluster.KMeans(algorithm="lloyd")`` from given centres:
each iteration labels every point by its nearest centre (the first on ties) and moves each
centre to the mean of its points; it stops when the labels repeat (then the centres are those of
the last update) or when the summed squared centre shift is at most ``tol`` times the mean
per-feature variance of the image's points, and in the second case labels the points once more
with the final centres. An empty cluster takes the point farthest from its centre (scikit-learn's
relocation), which leaves the cluster it came from. Images iterate together, each stopping on
its own criterion.

On the CPU (``backend="auto"``) each image runs scikit-learn's own Lloyd kernel with exactly
``KMeans.fit``'s preparation (tolerance from the variances, the points centred on their mean,
the centres moved back), so its results are scikit-learn's by construction; the batched tensor
iteration is for accelerators. The two can part where scikit-learn leaves the order open: when
two or more clusters are empty in one iteration (scikit-learn pairs them with the farthest
points in ``argpartition`` order, the tensor path farthest first), or where two centres are
at exactly equal distance from a point once rounded (scikit-learn computes on centred points).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from lightning_seg.classic.backend import Backend, use_library

__all__ = ["KMeansResult", "kmeans_plus_plus", "lloyd_kmeans", "pixel_features"]


class KMeansResult(NamedTuple):
    """Per image: ``labels`` int64 ``[B, P]``, ``centers`` float ``[B, K, D]``, ``inertia`` float
    ``[B]`` (sum of squared distances to the assigned centres), ``iterations`` int64 ``[B]``."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: torch.Tensor
    iterations: torch.Tensor


def pixel_features(images: torch.Tensor, spatial_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel features of images uint8 or float ``[B, C, H, W]``: the ``C`` channel values
    and, when ``spatial_weight > 0``, the row and column times it. Returns float64 ``[B, H W, C (+2)]``."""
    b, c, h, w = images.shape
    feats = images.double().flatten(2).transpose(1, 2)
    if spatial_weight > 0:
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=images.device),
                                torch.arange(w, dtype=torch.float64, device=images.device), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()], 1) * spatial_weight
        feats = torch.cat([feats, coords.expand(b, -1, -1)], 2)
    return feats


def _squared_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``[B, P, D]`` x ``[B, K, D]`` -> ``[B, P, K]`` squared Euclidean distances (clamped at 0)."""
    d = (points * points).sum(-1, keepdim=True) - 2 * points @ centers.transpose(1, 2) + \
        (centers * centers).sum(-1)[:, None]
    return d.clamp(min=0)


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (scikit-learn's): the first centre uniformly at random, then of
    ``local_trials`` (``2 + floor(ln k)``) candidates drawn with probability proportional to the
    squared distance to the nearest chosen centre, the one that lowers the total most.

    Args:
        points: float ``[B, P, D]``; k: clusters; generator: the draws (on the CPU).

    Returns:
        float ``[B, K, D]`` initial centres (points of the images).
    """
    b, p, _ = points.shape
    if not 1 <= k <= p:
        raise ValueError(f"kmeans_plus_plus: need 1 <= k <= number of points ({p}), got k={k}")
    trials = local_trials or 2 + int(math.log(k))
    rows = torch.arange(b, device=points.device)
    first = torch.randint(0, p, (b,), generator=generator).to(points.device)
    centers = [points[rows, first]]
    closest = _squared_distances(points, centers[0][:, None]).squeeze(-1)  # [B, P]
    for _ in range(1, k):
        weights = closest / closest.sum(1, keepdim=True).clamp(min=1e-300)
        weights = torch.where(closest.sum(1, keepdim=True) > 0, weights, torch.full_like(weights, 1.0 / p))
        cand = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator).to(points.device)
        cand_pts = points[rows[:, None], cand]  # [B, T, D]
        d = _squared_distances(points, cand_pts)  # [B, P, T]
        pot = torch.minimum(closest[..., None], d).sum(1)  # [B, T]
        best = pot.argmin(1)
        centers.append(cand_pts[rows, best])
        closest = torch.minimum(closest, d[rows, :, best])
    return torch.stack(centers, 1)


def lloyd_kmeans(points: torch.Tensor, centers: torch.Tensor, max_iter: int = 300, tol: float = 1e-4,
                 backend: Backend = "auto") -> KMeansResult:
    """Lloyd's k-means from ``centers`` (the module docstring's rules).

    Args:
        points: float ``[B, P, D]`` (float64 for scikit-learn's results to the last digit).
        centers: float ``[B, K, D]`` initial centres.
        max_iter: iteration cap.
        tol: relative tolerance on the centre shift.
        backend: ``library`` (scikit-learn's Lloyd kernel per image, in float64), ``tensor``
            (batched torch, in ``points``' dtype) or ``auto`` (library on the CPU).

    Returns:
        :class:`KMeansResult`.
    """
    if points.ndim != 3 or centers.ndim != 3 or centers.shape[0] != points.shape[0] or \
            centers.shape[2] != points.shape[2]:
        raise ValueError(f"lloyd_kmeans: points [B, P, D] and centers [B, K, D], got {tuple(points.shape)} "
                         f"and {tuple(centers.shape)}")
    if use_library(backend, points.device):
        return _sklearn_lloyd(points, centers, max_iter, tol)
    b, p, _ = points.shape
    k = centers.shape[1]
    rows = torch.arange(b, device=points.device)
    centers = centers.to(points.dtype).clone()
    threshold = points.var(1, unbiased=False).mean(1) * tol  # [B]
    labels_old = torch.full((b, p), -1, dtype=torch.long, device=points.device)
    labels = labels_old.clone()
    running = torch.ones(b, dtype=torch.bool, device=points.device)
    strict = torch.zeros_like(running)
    iterations = torch.zeros(b, dtype=torch.long, device=points.device)
    for _ in range(max_iter):
        dist = _squared_distances(points, centers)
        new_labels = dist.argmin(-1)
        labels = torch.where(running[:, None], new_labels, labels)
        one_hot = torch.zeros(b, p, k, dtype=points.dtype, device=points.device)
        one_hot.scatter_(2, labels[..., None], 1.0)
        sums = one_hot.transpose(1, 2) @ points  # [B, K, D]
        counts = one_hot.sum(1)  # [B, K]
        empty = running[:, None] & (counts == 0)
        if bool(empty.any()):
            own = dist.gather(2, labels[..., None]).squeeze(-1)
            for i in torch.nonzero(empty.any(1)).flatten().tolist():
                far = own[i].argsort(descending=True, stable=True)
                for j, cl in enumerate(torch.nonzero(empty[i]).flatten().tolist()):
                    pt = int(far[j])
                    old = int(labels[i, pt])
                    sums[i, old] -= points[i, pt]
                    counts[i, old] -= 1
                    sums[i, cl] = points[i, pt]
                    counts[i, cl] = 1
        new_centers = sums / counts.clamp(min=1)[..., None]
        shift = ((new_centers - centers) ** 2).sum((1, 2))
        centers = torch.where(running[:, None, None], new_centers, centers)
        iterations += running.long()
        same = (labels == labels_old).all(1)
        strict |= running & same
        running &= ~same & ~(shift <= threshold)
        labels_old = labels.clone()
        if not bool(running.any()):
            break
    relabel = ~strict
    if bool(relabel.any()):
        labels = torch.where(relabel[:, None], _squared_distances(points, centers).argmin(-1), labels)
    inertia = ((points - centers[rows[:, None], labels]) ** 2).sum((1, 2))
    return KMeansResult(labels, centers, inertia, iterations)


def _lloyd_kernel():
    """scikit-learn's single Lloyd run and its thread count, or None where they cannot be imported."""
    try:
        from sklearn.cluster._kmeans import _kmeans_single_lloyd
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    except ImportError:
        return None
    return _kmeans_single_lloyd, _openmp_effective_n_threads


def _sklearn_lloyd(points: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansResult:
    """scikit-learn's Lloyd run on each image, prepared as ``KMeans.fit`` prepares it."""
    kernel = _lloyd_kernel()
    labels, out_centers, inertia, iterations = [], [], [], []
    for x, c in zip(points.detach().cpu().double().numpy(), centers.detach().cpu().double().numpy()):
        if kernel is None:  # the kernel moved: the public estimator (same results, more overhead)
            from sklearn.cluster import KMeans

            km = KMeans(c.shape[0], init=c, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd").fit(x)
            lab, cen, ine, it = km.labels_, km.cluster_centers_, km.inertia_, km.n_iter_
        else:
            threshold = float(np.mean(np.var(x, axis=0)) * tol) if tol else 0.0
            mean = x.mean(axis=0)
            lab, ine, cen, it = kernel[0](
                np.ascontiguousarray(x - mean), np.ones(x.shape[0]), np.ascontiguousarray(c - mean),
                max_iter=max_iter, tol=threshold, n_threads=kernel[1]())
            cen = cen + mean
        labels.append(lab.astype(np.int64))
        out_centers.append(cen)
        inertia.append(ine)
        iterations.append(it)
    dev = points.device
    return KMeansResult(torch.from_numpy(np.stack(labels)).to(dev),
                        torch.from_numpy(np.stack(out_centers)).to(dev, points.dtype),
                        torch.tensor(inertia, dtype=points.dtype, device=dev),
                        torch.tensor(iterations, dtype=torch.int64, device=dev))
