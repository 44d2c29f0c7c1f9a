"""Band-by-band resizing of low-resolution mask logits to an image's original size.

Mask-classification models predict masks at 1/4 of the padded input. detectron2 and
Mask2Former bring them to the original image in two bilinear steps: upsample to the padded
input size, crop the valid (unpadded) region, resize that to the original size. Both steps are
linear and separable, so along each axis their composition is one ``[out, in]`` matrix with a
few non-zeros per row. :func:`resize_taps` builds it by pushing an identity matrix through the
same ``F.interpolate`` calls (so the weights are exactly the reference's); the width pass is
one matrix product at mask height, and the height pass runs band by band of output rows on
only the input rows the band touches. Nothing of size ``[Q, H_orig, W_orig]`` has to exist.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ResizeTaps",
    "resize_taps",
    "resize_width",
    "resize_height",
    "resize_height_channels_last",
    "resize_rows",
    "row_bands",
]


class ResizeTaps(NamedTuple):
    """A 1-D resampling as a dense ``[out, in]`` matrix plus the span of inputs each output uses.

    Attributes:
        matrix: float32 ``[out, in]``, ``out = matrix @ in`` along the axis.
        first: per output index, the first input index with a non-zero weight (host list).
        last: per output index, the last input index with a non-zero weight (host list).
    """

    matrix: torch.Tensor
    first: list[int]
    last: list[int]


def resize_taps(
    in_size: int,
    out_size: int,
    padded_size: int | None = None,
    valid_size: int | None = None,
    device: torch.device | str | None = None,
) -> ResizeTaps:
    """Matrix of ``crop(resize(x, padded_size))[:valid_size] -> resize(out_size)`` along one axis.

    All resizes are linear with ``align_corners=False`` (PyTorch's bilinear rule per axis).

    Args:
        in_size: length of the input (mask) axis.
        out_size: length of the output axis.
        padded_size: length after the first resize (``None``: skip it, crop the input).
        valid_size: length kept after the first resize (``None``: everything).

    Returns:
        :class:`ResizeTaps` with the matrix on ``device``.
    """
    mid = in_size if padded_size is None else padded_size
    valid = mid if valid_size is None else valid_size
    if not (0 < valid <= mid) or in_size <= 0 or out_size <= 0:
        raise ValueError(
            f"resize_taps: need 0 < valid_size ({valid}) <= padded_size ({mid}) and positive "
            f"in_size ({in_size}) / out_size ({out_size})"
        )
    matrix, first, last = _host_taps(in_size, out_size, mid, valid)
    return ResizeTaps(matrix.to(device), first, last)


@lru_cache(maxsize=256)
def _host_taps(
    in_size: int, out_size: int, mid: int, valid: int
) -> tuple[torch.Tensor, list[int], list[int]]:
    """CPU matrix and spans, cached: a dataset has few distinct (padded, image, original) sizes."""
    eye = torch.eye(in_size, dtype=torch.float64).unsqueeze(1)  # [in, 1, in]
    x = eye if mid == in_size else F.interpolate(eye, size=mid, mode="linear", align_corners=False)
    x = x[..., :valid]
    if valid != out_size:
        x = F.interpolate(x, size=out_size, mode="linear", align_corners=False)
    m = x[:, 0, :].T.contiguous()  # [out, in]
    nz = m != 0
    cols = torch.arange(in_size).expand_as(m)
    first = torch.where(nz, cols, in_size).amin(1).tolist()
    last = torch.where(nz, cols, -1).amax(1).tolist()
    return m.float(), first, last


def resize_width(x: torch.Tensor, taps_x: ResizeTaps) -> torch.Tensor:
    """Resize the last axis: float ``[N, h, w]`` -> float32 ``[N, h, W]`` (one matrix product)."""
    n, h, w = x.shape
    return (x.float().reshape(n * h, w) @ taps_x.matrix.T).view(n, h, taps_x.matrix.shape[0])


def resize_height(xw: torch.Tensor, taps_y: ResizeTaps, rows: slice) -> torch.Tensor:
    """Output rows ``rows`` of the height resize of ``xw`` float ``[N, h, W]`` -> ``[N, r, W]``.

    Only the input rows the band touches enter the product, so a band costs ``O(r)`` rows.
    """
    start, stop, _ = rows.indices(taps_y.matrix.shape[0])
    lo = min(taps_y.first[start:stop])
    hi = max(taps_y.last[start:stop]) + 1
    return torch.matmul(taps_y.matrix[start:stop, lo:hi], xw[:, lo:hi])


def resize_height_channels_last(xw: torch.Tensor, taps_y: ResizeTaps, rows: slice) -> torch.Tensor:
    """Like :func:`resize_height` for channels-last input: float ``[h, W, N]`` -> ``[r, W, N]``.

    Keeping the mask index innermost makes per-pixel reductions over masks (argmax) run over
    contiguous memory.
    """
    start, stop, _ = rows.indices(taps_y.matrix.shape[0])
    lo = min(taps_y.first[start:stop])
    hi = max(taps_y.last[start:stop]) + 1
    h, w, n = xw.shape
    band = taps_y.matrix[start:stop, lo:hi] @ xw[lo:hi].reshape(hi - lo, w * n)
    return band.view(stop - start, w, n)


def resize_rows(
    x: torch.Tensor, taps_y: ResizeTaps, taps_x: ResizeTaps, rows: slice | None = None
) -> torch.Tensor:
    """Resize ``x`` float ``[N, h, w]`` with per-axis taps, producing only output rows ``rows``.

    For many bands of one input, call :func:`resize_width` once and :func:`resize_height`
    per band instead.

    Returns:
        float32 ``[N, len(rows), W]``.
    """
    return resize_height(resize_width(x, taps_x), taps_y, rows if rows is not None else slice(None))


def row_bands(num_rows: int, row_cost: int, budget: int = 1 << 24) -> list[slice]:
    """Split ``num_rows`` output rows into bands of at most ``budget // row_cost`` rows.

    Small bands also keep the height pass from multiplying large mostly-zero blocks; see
    :func:`lightning_seg.ops.mask_inference.band_budget_for` for the measured defaults.

    Args:
        num_rows: output height.
        row_cost: elements one output row needs (e.g. ``Q * W``).
        budget: element budget per band.
    """
    step = max(1, budget // max(row_cost, 1))
    return [slice(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]
