"""Where a classic method runs: the libraries' compiled code on the CPU, tensor code elsewhere.

``backend="auto"`` picks ``"library"`` for CPU tensors (scikit-image / scikit-learn / numpy
kernels, called on the whole batch, the images spread over a thread pool where the kernels
release the GIL) and ``"tensor"`` for tensors on an accelerator (batched torch code). Both give
the same results; the CPU default is never slower than the libraries called image by image
(``scripts/benchmarks/classic.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import torch

__all__ = ["Backend", "map_images", "use_library"]

Backend = Literal["auto", "library", "tensor"]

T = TypeVar("T")
R = TypeVar("R")


def use_library(backend: Backend, device: torch.device, key: str = "backend") -> bool:
    """True when ``backend`` (``auto`` resolved by ``device``) is the library path."""
    if backend not in ("auto", "library", "tensor"):
        raise ValueError(f"{key} must be 'auto', 'library' or 'tensor', got {backend!r}")
    return backend == "library" or (backend == "auto" and device.type == "cpu")


def map_images(fn: Callable[[T], R], items: Sequence[T], threads: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` over ``threads`` workers (default: torch's intra-op thread
    count), in order; one item or one thread runs inline."""
    workers = min(len(items), threads or torch.get_num_threads())
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
