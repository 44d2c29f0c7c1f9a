"""Stack a batch's per-image targets into padded tensors for the set criterion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

__all__ = ["PaddedTargets", "pad_targets"]


class PaddedTargets(NamedTuple):
    """Targets of a batch padded to the largest number of segments ``T``.

    Attributes:
        labels: int64 ``[B, T]`` (0 in the padding).
        masks: bool ``[B, T, H, W]`` (False in the padding).
        valid: bool ``[B, T]`` True for real segments.
        boxes: float32 ``[B, T, 4]`` xyxy pixel boxes (0 in the padding), when asked for.
        image_sizes: int64 ``[B, 2]`` each image's ``(H, W)`` (its ``image_size``, else its
            masks' size), with ``boxes``.
    """

    labels: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    boxes: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None


def pad_targets(
    targets: Sequence[Mapping[str, object]],
    num_classes: int,
    device: torch.device | None = None,
    with_boxes: bool = False,
) -> PaddedTargets:
    """Pad per-image ``masks`` bool ``[N, H, W]`` and ``labels`` int64 ``[N]`` to ``[B, T, ...]``.

    Masks of different spatial sizes are padded bottom/right with False to the largest size.

    Args:
        targets: ``B`` dicts with ``masks`` and ``labels`` (``N`` may be 0).
        num_classes: ``K``; labels must be in ``[0, K)``.
        device: where the padded tensors go (default: the first image's masks).
        with_boxes: also pad each target's ``boxes`` float ``[N, 4]`` (required then).

    Raises:
        ValueError: naming the image (index and ``image_id`` when present) on a bad shape,
            dtype or label.
    """
    if len(targets) == 0:
        raise ValueError("pad_targets got an empty list of targets")
    shapes = []
    for i, tgt in enumerate(targets):
        where = f"target {i}" + (f" (image_id={tgt['image_id']!r})" if "image_id" in tgt else "")
        if "masks" not in tgt or "labels" not in tgt:
            raise ValueError(f"{where}: needs 'masks' and 'labels', has {sorted(tgt)}")
        masks, labels = tgt["masks"], tgt["labels"]
        if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
            got = getattr(masks, "shape", type(masks))
            raise ValueError(f"{where}: masks must be a [N,H,W] tensor, got {got}")
        n = masks.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
            got = getattr(labels, "shape", type(labels))
            raise ValueError(f"{where}: labels must be [N={n}], got {got}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{where}: labels must be integer class ids, got {labels.dtype}")
        if with_boxes:
            boxes = tgt.get("boxes")
            if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (n, 4):
                got = getattr(boxes, "shape", type(boxes))
                raise ValueError(f"{where}: boxes must be a [N={n}, 4] tensor, got {got}")
        shapes.append(tuple(masks.shape))
    dev = device if device is not None else targets[0]["masks"].device  # type: ignore[union-attr]
    b = len(targets)
    t = max(s[0] for s in shapes)
    h = max(s[1] for s in shapes)
    w = max(s[2] for s in shapes)
    labels = torch.zeros(b, t, dtype=torch.long, device=dev)
    masks = torch.zeros(b, t, h, w, dtype=torch.bool, device=dev)
    valid = torch.zeros(b, t, dtype=torch.bool, device=dev)
    boxes = torch.zeros(b, t, 4, dtype=torch.float32, device=dev) if with_boxes else None
    sizes = None
    if with_boxes:
        sizes = torch.tensor([tuple(tgt.get("image_size", s[1:])) for tgt, s in zip(targets, shapes)],
                             dtype=torch.int64, device=dev)
    for i, (tgt, (n, mh, mw)) in enumerate(zip(targets, shapes)):
        if n == 0:
            continue
        if boxes is not None:
            boxes[i, :n] = tgt["boxes"].to(dev, torch.float32)  # type: ignore[union-attr]
        labels[i, :n] = tgt["labels"].to(dev)  # type: ignore[union-attr]
        m = tgt["masks"]
        m = m if m.dtype == torch.bool else m > 0.5  # type: ignore[union-attr]
        masks[i, :n, :mh, :mw] = m.to(dev)
        valid[i, :n] = True
    # One check for the whole batch; only on failure do we look up which image it was.
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0])
        tgt = targets[i]
        where = f"target {i}" + (f" (image_id={tgt['image_id']!r})" if "image_id" in tgt else "")
        bad_labels = tgt["labels"].tolist()  # type: ignore[union-attr]
        raise ValueError(f"{where}: labels {bad_labels} outside [0, {num_classes})")
    return PaddedTargets(labels, masks, valid, boxes, sizes)
