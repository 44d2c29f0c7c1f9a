"""Bilinear point sampling of mask logits and PointRend-style importance sampling.

Point coordinates are normalised to ``[0, 1] x [0, 1]`` as ``(x, y)`` pairs, the convention of
PointRend and Mask2Former: ``(0, 0)`` is the top-left corner of the top-left pixel and
``(1, 1)`` the bottom-right corner of the bottom-right pixel (``align_corners=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "point_sample",
    "point_sample_binary",
    "uncertainty_from_logits",
    "sample_points_by_uncertainty",
]


def point_sample(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``values`` at normalised ``points`` (zeros outside the map).

    Args:
        values: float ``[N, C, H, W]`` or ``[N, H, W]`` (one channel per map).
        points: float ``[N, P, 2]`` normalised ``(x, y)`` in ``[0, 1]``.

    Returns:
        ``[N, C, P]`` (or ``[N, P]`` for ``[N, H, W]`` input) in the dtype of ``values``.
    """
    squeeze = values.ndim == 3
    if squeeze:
        values = values.unsqueeze(1)
    if values.ndim != 4 or points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects values [N,C,H,W] and points [N,P,2], got "
            f"{tuple(values.shape)} and {tuple(points.shape)}"
        )
    if values.shape[0] != points.shape[0]:
        raise ValueError(f"point_sample: {values.shape[0]} maps but {points.shape[0]} point sets")
    grid = (2.0 * points.to(values.dtype) - 1.0).unsqueeze(2)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.squeeze(3)
    return out.squeeze(1) if squeeze else out


def point_sample_binary(
    masks: torch.Tensor,
    points: torch.Tensor,
    rows: torch.Tensor | None = None,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """Bilinearly sample binary masks at normalised points without a float copy of the stack.

    Equals :func:`point_sample` on ``masks.float()`` (zeros outside the map). The grouped
    layout reads the four neighbours straight from the bool masks; the indexed layout converts
    ``chunk_elements`` mask pixels to float at a time, so a ``[B, T, Hp, Wp]`` stack of
    full-resolution target masks is never converted whole.

    Two layouts:

    * ``masks`` bool ``[G, R, H, W]`` and ``rows=None``: point set ``g`` is read from all ``R``
      masks of group ``g`` (the matcher: one set of points per image for all its targets);
    * ``masks`` bool ``[N, H, W]`` and ``rows`` int64 ``[G, R]``: point set ``g`` is read from
      the masks listed in ``rows[g]`` (the loss: one set of points per matched mask).

    Args:
        masks: bool ``[G, R, H, W]`` or ``[N, H, W]``.
        points: float ``[G, P, 2]`` normalised ``(x, y)``.
        rows: int64 ``[G, R]`` indices into ``masks`` for the second layout.
        chunk_elements: mask pixels converted to float at once.

    Returns:
        float32 ``[G, R, P]`` sampled values in ``[0, 1]``.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"point_sample_binary expects points [G,P,2], got {tuple(points.shape)}")
    if rows is None:
        if masks.ndim != 4 or masks.shape[0] != points.shape[0]:
            raise ValueError(
                f"point_sample_binary expects masks [G,R,H,W] with G={points.shape[0]} when rows "
                f"is None, got {tuple(masks.shape)}"
            )
        g, r, h, w = masks.shape
    else:
        if masks.ndim != 3 or rows.ndim != 2 or rows.shape[0] != points.shape[0]:
            raise ValueError(
                f"point_sample_binary expects masks [N,H,W] and rows [G={points.shape[0]},R], got "
                f"{tuple(masks.shape)} and {tuple(rows.shape)}"
            )
        _, h, w = masks.shape
        g, r = rows.shape
    if rows is None:
        return _sample_groups_by_gather(masks, points.float())
    out = torch.empty((g, r, points.shape[1]), dtype=torch.float32, device=points.device)
    if out.numel() == 0:
        return out
    step = max(1, chunk_elements // max(r * h * w, 1))
    pts = points.float()
    for s in range(0, g, step):
        e = min(s + step, g)
        # The R masks of a group share its points, so they ride along as channels.
        block = masks[rows[s:e].reshape(-1)].view(e - s, r, h, w)
        out[s:e] = point_sample(block.float(), pts[s:e])
    return out


def _sample_groups_by_gather(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Grouped layout of :func:`point_sample_binary`: ``[G, R, H, W]`` bool at ``[G, P, 2]``.

    All masks of a group share the points, so the four neighbour indices are computed once per
    group (``[G, P]``) and read from the uint8 view of every mask with an expanded index: no
    mask is ever converted to float.
    """
    g, r, h, w = masks.shape
    data = masks.reshape(g, r, h * w).view(torch.uint8)
    x = points[..., 0] * w - 0.5  # align_corners=False: pixel centres at (i + 0.5) / size
    y = points[..., 1] * h - 0.5
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.long()
    y0 = y0.long()
    out = torch.zeros((g, r, points.shape[1]), dtype=torch.float32, device=points.device)
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)  # zeros padding
            lin = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
            hit = torch.gather(data, 2, lin.unsqueeze(1).expand(g, r, -1))
            out.addcmul_(hit, (wy * wx * inside).unsqueeze(1))
    return out


def uncertainty_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's point uncertainty: ``-|logit|`` (highest where the logit is near 0).

    Args:
        logits: float, any shape.

    Returns:
        Same shape and dtype.
    """
    return -logits.abs()


def sample_points_by_uncertainty(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> torch.Tensor:
    """PointRend importance sampling of ``num_points`` points per mask.

    Draws ``int(num_points * oversample_ratio)`` uniform points, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones (by
    :func:`uncertainty_from_logits` of the bilinearly sampled logit), and fills the rest with
    fresh uniform points, as Mask2Former's criterion does. Random draws use ``torch.rand``
    with shapes ``[N, num_points * oversample_ratio, 2]`` then ``[N, rest, 2]``.

    Args:
        logits: float ``[N, H, W]`` mask logits (no gradient flows through the choice).
        num_points: points per mask.
        oversample_ratio: ``>= 1``.
        importance_sample_ratio: in ``[0, 1]``.

    Returns:
        float32 ``[N, num_points, 2]`` normalised ``(x, y)`` points.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        candidates = torch.rand(n, num_sampled, 2, device=logits.device)
        point_logits = point_sample(logits.detach().float(), candidates)
        # The chosen set, not its order, matters: the losses average over points.
        uncertainty = uncertainty_from_logits(point_logits)
        idx = torch.topk(uncertainty, k=num_uncertain, dim=1, sorted=False)[1]
        chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
        if num_random > 0:
            chosen = torch.cat([chosen, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
    return chosen
