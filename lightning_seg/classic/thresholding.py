"""Otsu and multi-level Otsu thresholds of grey-level images, batched with one histogram per image.

The rules are scikit-image's ``threshold_otsu`` / ``threshold_multiotsu`` on integer images:
one bin per grey level, Otsu's threshold is the level ``t`` maximising the between-class
variance ``w1(t) w2(t+1) (m1(t) - m2(t+1))^2`` of the classes ``<= t`` and ``> t`` (the first
such level), the multi-level thresholds maximise ``sum_c S_c^2 / P_c`` over the classes' pixel
mass ``P`` and first moment ``S`` (the first maximum in lexicographic order). Levels outside an
image's ``[min, max]`` have no pixels and are never chosen. Computed in float64.

On the CPU (``backend="auto"``) the histograms are numpy ``bincount`` of each image and the
thresholds scikit-image's own functions on those histograms (its results by construction); the
tensor path (one ``bincount`` for the batch, the scores of every level or level tuple at once)
is for accelerators. scikit-image scores in float32 and the tensor path in float64, so on a
histogram whose best two levels (tuples) score within float32 rounding of each other they can
pick different ones; on the real sample images they agree (``tests/classic``).
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_seg.classic.backend import Backend, use_library

__all__ = ["grey_levels", "level_histograms", "multi_otsu_thresholds", "otsu_thresholds", "threshold_classes"]


def grey_levels(images: torch.Tensor, channel: int | None = None) -> torch.Tensor:
    """Grey levels of RGB images: uint8 ``[B, 3, H, W]`` -> uint8 ``[B, H, W]``.

    ``channel`` picks one channel; ``None`` uses ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B``,
    rounded. One byte per pixel keeps the histograms memory-bound at a quarter of int32's cost.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"grey_levels: images must be [B, 3, H, W], got {tuple(images.shape)}")
    if channel is not None:
        if not 0 <= channel < 3:
            raise ValueError(f"grey_levels: channel must be 0, 1 or 2, got {channel}")
        return images[:, channel].clamp(0, 255).to(torch.uint8).contiguous()
    x = images.double()
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).round().clamp(0, 255).to(torch.uint8)


def level_histograms(levels: torch.Tensor, num_levels: int = 256, valid: torch.Tensor | None = None,
                     backend: Backend = "auto") -> torch.Tensor:
    """Pixel count of every grey level in every image.

    Args:
        levels: integer ``[B, H, W]`` in ``[0, num_levels)``.
        num_levels: ``L``.
        valid: optional bool ``[B, H, W]``; only these pixels are counted (padding excluded).
        backend: ``library`` (numpy ``bincount`` per image), ``tensor`` (one torch ``bincount``
            for the batch) or ``auto`` (library on the CPU).

    Returns:
        float64 ``[B, L]``.
    """
    b = levels.shape[0]
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise ValueError(f"level_histograms: levels must be integers, got {levels.dtype}")
    if use_library(backend, levels.device) and b:
        lv = levels.cpu().numpy().reshape(b, -1)
        ok = None if valid is None else valid.cpu().numpy().reshape(b, -1)
        counts = np.zeros((b, num_levels))
        for i in range(b):
            x = lv[i] if ok is None else lv[i][ok[i]]
            # bincount itself rejects negative levels; a longer result means levels >= L
            try:
                c = _byte_histogram(x) if x.dtype == np.uint8 and num_levels == 256 else \
                    np.bincount(x, minlength=num_levels)
            except ValueError:  # negative levels
                c = None
            if c is None or len(c) > num_levels:
                _check_levels(levels, num_levels)
            counts[i] = c
        return torch.from_numpy(counts).to(levels.device)
    _check_levels(levels, num_levels)
    flat = levels.reshape(b, -1).long() + torch.arange(b, device=levels.device)[:, None] * num_levels
    weights = None if valid is None else valid.reshape(b, -1).double().flatten()
    counts = torch.bincount(flat.flatten(), weights=weights, minlength=b * num_levels)
    return counts.double().view(b, num_levels)


def _byte_histogram(x: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 vector, counting pairs of bytes as one uint16 (half the
    elements of a plain ``bincount``; the 256 x 256 pair counts fold back to levels)."""
    even = x[: x.size - x.size % 2]
    pairs = np.bincount(np.ascontiguousarray(even).view(np.uint16), minlength=1 << 16).reshape(256, 256)
    # little- or big-endian, a pair counts once for each of its two bytes
    hist = pairs.sum(0) + pairs.sum(1)
    if x.size % 2:
        hist[x[-1]] += 1
    return hist


def _non_empty_range(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram cut to its first..last non-empty level, with those levels (scikit-image's
    ``(counts, bin_centers)``, as it builds them from an integer image)."""
    nz = np.flatnonzero(row)
    lo, hi = int(nz[0]), int(nz[-1])
    return row[lo : hi + 1], np.arange(lo, hi + 1)


def _check_levels(levels: torch.Tensor, num_levels: int) -> None:
    if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= num_levels):
        raise ValueError(f"level_histograms: levels must lie in [0, {num_levels}), got "
                         f"[{int(levels.min())}, {int(levels.max())}]")


def otsu_thresholds(hist: torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """Otsu's threshold of each histogram (the module docstring's rule).

    Args:
        hist: float ``[B, L]`` pixel counts per level.
        backend: ``library`` (``skimage.filters.threshold_otsu`` on each histogram, cut to its
            non-empty range as scikit-image cuts an image's own), ``tensor`` or ``auto``
            (library on the CPU).

    Returns:
        int64 ``[B]`` levels: pixels ``> t`` are the upper class. An image of one level returns
        that level.
    """
    counts = hist.double()
    if use_library(backend, counts.device) and len(counts):
        from skimage.filters import threshold_otsu

        rows = counts.cpu().numpy()
        if (rows.sum(1) == 0).any():
            raise ValueError(f"otsu_thresholds: image {int(np.flatnonzero(rows.sum(1) == 0)[0])} has no pixels")
        # one level: scikit-image's image rule returns it (its histogram form has no threshold to score)
        out = [int(np.flatnonzero(row)[0]) if np.count_nonzero(row) == 1 else threshold_otsu(hist=_non_empty_range(row))
               for row in rows]
        return torch.tensor(out, dtype=torch.int64, device=counts.device)
    levels = torch.arange(counts.shape[1], dtype=torch.float64, device=counts.device)
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    s1 = (counts * levels).cumsum(1)
    s2 = (counts * levels).flip(1).cumsum(1).flip(1)
    m1 = s1 / w1.clamp(min=1e-300)
    m2 = s2 / w2.clamp(min=1e-300)
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    var = torch.where((w1[:, :-1] > 0) & (w2[:, 1:] > 0), var, -1.0)
    t = var.argmax(1)
    single = (counts > 0).sum(1) <= 1
    return torch.where(single, (counts > 0).long().argmax(1), t)


def multi_otsu_thresholds(hist: torch.Tensor, classes: int = 3, chunk_elements: int = 1 << 24,
                          backend: Backend = "auto") -> torch.Tensor:
    """Multi-level Otsu thresholds of each histogram.

    Args:
        hist: float ``[B, L]`` pixel counts per level.
        classes: number of classes (2 to 4; ``classes - 1`` thresholds).
        chunk_elements: scores computed at once by the tensor path (bounds memory).
        backend: ``library`` (``skimage.filters.threshold_multiotsu`` on each histogram, cut to
            the image's ``[min, max]`` as scikit-image cuts an image's own), ``tensor``
            (exhaustive search over level tuples, batched) or ``auto`` (library on the CPU).

    Returns:
        int64 ``[B, classes - 1]`` increasing levels ``t_1 < t_2 < ...``: class ``c`` holds the
        levels in ``(t_c, t_{c+1}]``.

    Raises:
        ValueError: naming the image that has fewer distinct levels than ``classes``.
    """
    if not 2 <= classes <= 4:
        raise ValueError(f"multi_otsu_thresholds: classes must be 2, 3 or 4, got {classes}")
    counts = hist.double()
    b, n = counts.shape
    present = counts > 0
    few = present.sum(1) < classes
    if bool(few.any()):
        i = int(few.nonzero()[0])
        raise ValueError(f"multi_otsu_thresholds: image {i} has {int(present[i].sum())} distinct levels, "
                         f"fewer than classes={classes}")
    if use_library(backend, counts.device):
        from skimage.filters import threshold_multiotsu

        rows = counts.cpu().numpy()
        out = np.stack([threshold_multiotsu(hist=_non_empty_range(row), classes=classes) for row in rows]) \
            if b else np.zeros((0, classes - 1))
        return torch.from_numpy(out.astype(np.int64)).to(counts.device)
    prob = counts / counts.sum(1, keepdim=True)
    levels = torch.arange(n, dtype=torch.float64, device=counts.device)
    mass = torch.cat([prob.new_zeros(b, 1), prob.cumsum(1)], 1)  # mass[:, j] = P(levels < j)
    moment = torch.cat([prob.new_zeros(b, 1), (prob * levels).cumsum(1)], 1)
    # every (t_1 < ... < t_m) over levels 0..n-2; class c spans levels (t_{c-1}, t_c]
    combos = torch.combinations(torch.arange(n - 1, device=counts.device), r=classes - 1)  # [C, m]
    best = prob.new_full((b,), -2.0)
    best_idx = torch.zeros(b, dtype=torch.long, device=counts.device)
    # chunks of tuples bound the [B, chunk] scores (4 classes of 256 levels: 2.7 M tuples)
    step = max(1, chunk_elements // max(b, 1))
    for start in range(0, combos.shape[0], step):
        part = combos[start : start + step]
        bounds = torch.cat([part.new_full((part.shape[0], 1), -1), part,
                            part.new_full((part.shape[0], 1), n - 1)], 1) + 1  # exclusive class ends
        score = prob.new_zeros(b, part.shape[0])
        nonempty = torch.ones_like(score, dtype=torch.bool)
        for c in range(classes):
            lo, hi = bounds[:, c], bounds[:, c + 1]
            p = mass[:, hi] - mass[:, lo]
            s = moment[:, hi] - moment[:, lo]
            score += torch.where(p > 0, s * s / p.clamp(min=1e-300), 0.0)
            # a threshold inside a gap of empty levels only renames a class: keep every class non-empty
            nonempty &= p > 0
        score = torch.where(nonempty, score, -1.0)
        value, idx = score.max(1)
        better = value > best  # strictly: the first maximum over all tuples, as scikit-image
        best = torch.where(better, value, best)
        best_idx = torch.where(better, idx + start, best_idx)
    return combos[best_idx]


def threshold_classes(levels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Class of every pixel: the number of thresholds below its level.

    Args:
        levels: integer ``[B, H, W]``; thresholds: int64 ``[B]`` or ``[B, m]`` (increasing).

    Returns:
        int64 ``[B, H, W]`` in ``[0, m]``.
    """
    t = thresholds.view(thresholds.shape[0], -1, 1, 1)
    return (levels[:, None] > t).sum(1)
