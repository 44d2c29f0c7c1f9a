"""Class weights from a training set's pixel frequencies (inverse / median-frequency / ENet), cached."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

WeightMethod = Literal["inverse", "median_frequency", "enet"]
_CACHE_VERSION = 1


def count_class_pixels(semantic_maps: Iterable[Tensor], num_classes: int,
                       ignore_index: int = 255) -> tuple[Tensor, Tensor, int]:
    """Count labelled pixels per class over a dataset's semantic maps.

    Args:
        semantic_maps: int64 ``[H, W]`` class maps (sizes may differ), ``ignore_index`` = void.
        num_classes: number of classes ``K``.
        ignore_index: void value, not counted.

    Returns:
        ``(pixel_counts, present_totals, num_images)``: int64 ``[K]`` pixels of each class;
        int64 ``[K]`` total labelled pixels of the images in which each class appears (the
        denominator of median-frequency balancing); the number of maps read.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    present_totals = torch.zeros(num_classes, dtype=torch.int64)
    n = 0
    for i, sem in enumerate(semantic_maps):
        if not isinstance(sem, Tensor) or sem.ndim != 2 or sem.dtype != torch.int64:
            raise ValueError(f"semantic map {i}: expected an int64 [H,W] tensor, got "
                             f"{getattr(sem, 'dtype', type(sem))} {tuple(getattr(sem, 'shape', ()))}")
        values = sem[sem != ignore_index]
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            bad = sorted(set(values[(values < 0) | (values >= num_classes)].unique().tolist()))
            raise ValueError(f"semantic map {i}: values {bad} outside [0,{num_classes}) and not "
                             f"ignore_index={ignore_index}")
        per_class = torch.bincount(values.cpu(), minlength=num_classes)
        counts += per_class
        present_totals += (per_class > 0).to(torch.int64) * values.numel()
        n += 1
    return counts, present_totals, n


def class_weights_from_counts(pixel_counts: Tensor, present_totals: Tensor,
                              method: WeightMethod = "median_frequency", enet_c: float = 1.02) -> Tensor:
    """Class weights float32 ``[K]`` from per-class pixel counts; classes never seen get weight 0.

    * ``"inverse"``: ``N / (K_seen * n_c)`` with ``N`` the labelled pixels and ``K_seen`` the
      classes seen, so a uniform distribution gives weight 1 everywhere.
    * ``"median_frequency"`` (Eigen & Fergus, 2015): ``median(f) / f_c`` with
      ``f_c = n_c / (labelled pixels of the images containing c)``, median over seen classes.
    * ``"enet"`` (Paszke et al., 2016): ``1 / ln(enet_c + p_c)`` with ``p_c = n_c / N``.

    Args:
        pixel_counts: int64 ``[K]``.
        present_totals: int64 ``[K]`` (see :func:`count_class_pixels`).
        method: one of the above.
        enet_c: ENet's constant (bounds the largest weight at ``1 / ln(c)``).
    """
    counts = pixel_counts.to(torch.float64)
    seen = counts > 0
    if not seen.any():
        raise ValueError("no labelled pixels: cannot compute class weights")
    weights = torch.zeros_like(counts)
    if method == "inverse":
        weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    elif method == "median_frequency":
        freq = counts[seen] / present_totals.to(torch.float64)[seen]
        weights[seen] = torch.quantile(freq, 0.5) / freq
    elif method == "enet":
        weights[seen] = 1.0 / torch.log(enet_c + counts[seen] / counts.sum())
    else:
        raise ValueError(f"class weight method must be 'inverse', 'median_frequency' or 'enet', got {method!r}")
    return weights.to(torch.float32)


def _read_cache(path: Path, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    try:
        data = json.loads(path.read_text())
        counts = torch.tensor(data["pixel_counts"], dtype=torch.int64)
        totals = torch.tensor(data["present_totals"], dtype=torch.int64)
        cached_k, cached_ignore = int(data["num_classes"]), int(data["ignore_index"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"class-weight cache {path} is unreadable or not a class-count file: {err}") from err
    if cached_k != num_classes or cached_ignore != ignore_index or counts.numel() != num_classes:
        raise ValueError(f"class-weight cache {path} was computed for num_classes={cached_k}, "
                         f"ignore_index={cached_ignore}, not {num_classes}/{ignore_index}; delete it to recount")
    return counts, totals


def compute_class_weights(semantic_maps: Iterable[Tensor], num_classes: int,
                          method: WeightMethod = "median_frequency", ignore_index: int = 255,
                          cache_file: str | Path | None = None) -> Tensor:
    """Class weights float32 ``[K]`` from a dataset's pixel frequencies, counted once and cached.

    The pixel counts (not the weights) are cached as JSON in ``cache_file``: a later call with
    the same file reads them instead of iterating the dataset, whatever ``method`` it asks for.
    A cache written for another ``num_classes`` / ``ignore_index`` raises naming the file.

    Args:
        semantic_maps: iterable of int64 ``[H, W]`` class maps (only read when not cached).
        num_classes: number of classes ``K``.
        method: see :func:`class_weights_from_counts`.
        ignore_index: void value.
        cache_file: JSON file for the counts; ``None`` = no caching.
    """
    path = Path(cache_file) if cache_file is not None else None
    if path is not None and path.is_file():
        counts, totals = _read_cache(path, num_classes, ignore_index)
    else:
        counts, totals, n = count_class_pixels(semantic_maps, num_classes, ignore_index)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = dict(version=_CACHE_VERSION, num_classes=num_classes, ignore_index=ignore_index,
                           num_images=n, pixel_counts=counts.tolist(), present_totals=totals.tolist())
            # A per-process temporary name and an atomic rename: ranks counting at the same time
            # never read a half-written file nor move each other's temporary.
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload))
            tmp.replace(path)
    return class_weights_from_counts(counts, totals, method)


def load_class_weights(cache_file: str | Path, method: WeightMethod = "median_frequency") -> Tensor:
    """Class weights float32 ``[K]`` from a count cache written by :func:`compute_class_weights`."""
    path = Path(cache_file)
    if not path.is_file():
        raise FileNotFoundError(f"class-weight cache not found: {path} (write it with compute_class_weights)")
    try:
        data = json.loads(path.read_text())
        k, ignore = int(data["num_classes"]), int(data["ignore_index"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"class-weight cache {path} is unreadable or not a class-count file: {err}") from err
    counts, totals = _read_cache(path, k, ignore)
    return class_weights_from_counts(counts, totals, method)


def resolve_class_weights(class_weights: Sequence[float] | str | Path | None,
                          method: WeightMethod = "median_frequency") -> Tensor | None:
    """A loss's ``class_weights`` argument as float32 ``[K]``: given values, a count-cache path, or ``None``."""
    if class_weights is None:
        return None
    if isinstance(class_weights, (str, Path)):
        return load_class_weights(class_weights, method)
    weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
    if weights.ndim != 1 or weights.numel() == 0 or (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError(f"class_weights must be a non-empty list of finite non-negative numbers, got {class_weights}")
    return weights
