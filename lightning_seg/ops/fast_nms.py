"""Fast NMS (YOLACT, Bolya et al., 2019), batched over images.

YOLACT's rule per image: candidates are the rows whose best class score exceeds
``score_threshold``; per class, the ``top_k`` highest-scored candidates are compared by box IoU,
and a candidate is kept when no higher-scored one of its class overlaps it by more than
``iou_threshold`` (an already suppressed box still suppresses: one upper-triangular IoU
matrix, one column max, no sequential loop); the kept (candidate, class) pairs of all classes
are ranked by score and the first ``max_detections`` returned.

Here every image and class is one row of a ``[B, C, top_k, top_k]`` IoU tensor (memory grows
with ``B * C * top_k**2``: about 100 MB per 8 images of 80 classes at top_k 200); images with
fewer candidates are padded with boxes that score ``-inf``, which sort last and are never
returned, so they change nothing for real boxes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .box_matching import batched_box_iou

__all__ = ["FastNMSResult", "fast_nms"]


class FastNMSResult(NamedTuple):
    """Survivors of :func:`fast_nms` per image, by decreasing score, padded to a common length.

    Attributes:
        indices: int64 ``[B, M]`` row of each survivor in the input (-1 in the padding).
        labels: int64 ``[B, M]`` its class (-1 in the padding).
        scores: float32 ``[B, M]`` its class score (0 in the padding).
        valid: bool ``[B, M]``.
    """

    indices: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def fast_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor | None = None,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
    score_threshold: float = 0.05,
) -> FastNMSResult:
    """YOLACT's Fast NMS for a batch of images.

    Args:
        boxes: float ``[B, N, 4]`` xyxy.
        scores: float ``[B, N, C]`` class scores (no background column).
        valid: bool ``[B, N]`` real rows (default: all).
        iou_threshold: a box overlapping a higher-scored box of its class by more than this is
            suppressed.
        top_k: candidates per class and image compared.
        max_detections: detections returned per image.
        score_threshold: a row is a candidate when its best class score is above this.

    Returns:
        :class:`FastNMSResult` with ``M = min(max_detections, C * min(top_k, N))``; the
        cross-class ranking breaks score ties arbitrarily, as YOLACT's sort does.
    """
    b, n, c = scores.shape
    dev = scores.device
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=dev)
    k = min(top_k, n)
    m = min(max_detections, c * k)
    if m == 0:
        empty = torch.zeros(b, 0, dtype=torch.int64, device=dev)
        return FastNMSResult(empty, empty, torch.zeros(b, 0, device=dev), empty.bool())
    candidate = valid & (scores.amax(-1) > score_threshold)
    per_class = scores.float().masked_fill(~candidate[..., None], float("-inf")).transpose(1, 2)  # [B, C, N]
    top, rows = per_class.topk(k, dim=-1, sorted=True)  # [B, C, K]
    picked = boxes.float().gather(1, rows.reshape(b, c * k, 1).expand(-1, -1, 4)).view(b, c, k, 4)
    # box j is suppressed by any higher-scored box i < j of its class, suppressed or not
    flat = picked.view(b * c, k, 4)
    # kept when the column max is <= the threshold, as YOLACT tests it (a NaN IoU suppresses)
    suppressed = ~(torch.triu(batched_box_iou(flat, flat).view(b, c, k, k), diagonal=1).amax(-2) <= iou_threshold)
    keep = ~suppressed & torch.isfinite(top)
    flat_scores = torch.where(keep, top, torch.full_like(top, float("-inf"))).view(b, c * k)
    best, order = flat_scores.topk(m, dim=-1, sorted=True)
    ok = torch.isfinite(best)
    labels = torch.div(order, k, rounding_mode="floor")
    indices = rows.view(b, c * k).gather(1, order)
    return FastNMSResult(
        indices=torch.where(ok, indices, -1),
        labels=torch.where(ok, labels, -1),
        scores=torch.where(ok, best, torch.zeros_like(best)),
        valid=ok,
    )
