"""Boxes of masks computed pixel by pixel, the reference for the vectorised implementation."""

from __future__ import annotations

import numpy as np


def reference_boxes(masks) -> np.ndarray:
    """``(x1, y1, x2, y2)`` per mask with exclusive ``x2``/``y2``; ``[0, 0, 0, 0]`` when empty.

    Args:
        masks: bool ``[N, H, W]`` (numpy array or tensor).

    Returns:
        float32 ``[N, 4]``.
    """
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            out[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return out
