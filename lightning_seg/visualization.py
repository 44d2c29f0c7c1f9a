"""Colour overlays of predictions on images, for logging and for ``predict`` outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_seg.structures import IGNORE_INDEX


def _to_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr


def overlay_semantic(
    image: Tensor | np.ndarray,
    semantic: Tensor | np.ndarray,
    colors: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Blend a class map's colours over an image.

    Args:
        image: uint8 ``[3,H,W]`` / ``[H,W,3]`` or float in ``[0,1]``.
        semantic: integer ``[H,W]`` class map; ``ignore_index`` stays uncoloured.
        colors: ``K`` RGB colours.
        alpha: weight of the colour.

    Returns:
        uint8 ``[H,W,3]``.
    """
    img = _to_hwc(image).astype(np.float32)
    sem = semantic.cpu().numpy() if isinstance(semantic, Tensor) else np.asarray(semantic)
    palette = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    valid = (sem != ignore_index) & (sem >= 0) & (sem < len(palette))
    out = img.copy()
    out[valid] = (1 - alpha) * img[valid] + alpha * palette[sem[valid]]
    return out.astype(np.uint8)


def overlay_panoptic(
    image: Tensor | np.ndarray,
    panoptic_seg: Tensor | np.ndarray,
    segment_labels: dict[int, int],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a panoptic map over an image: class colour, varied per instance, with dark borders.

    Args:
        image: uint8 ``[3,H,W]`` / ``[H,W,3]`` or float in ``[0,1]``.
        panoptic_seg: integer ``[H,W]`` segment ids (0 = void).
        segment_labels: segment id → contiguous class id.
        colors: ``K`` RGB colours.

    Returns:
        uint8 ``[H,W,3]``.
    """
    img = _to_hwc(image).astype(np.float32)
    seg = panoptic_seg.cpu().numpy() if isinstance(panoptic_seg, Tensor) else np.asarray(panoptic_seg)
    out = img.copy()
    palette = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    for k, (sid, label) in enumerate(sorted(segment_labels.items())):
        m = seg == sid
        # the same class gets slightly different shades so neighbouring instances separate
        shade = 0.75 + 0.25 * ((k * 7) % 5) / 4
        out[m] = (1 - alpha) * img[m] + alpha * np.clip(palette[label] * shade, 0, 255)
    edge = np.zeros(seg.shape, dtype=bool)
    edge[1:] |= seg[1:] != seg[:-1]
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    out[edge] *= 0.3
    return out.astype(np.uint8)


def instance_id_map(prediction: dict[str, Tensor], score_threshold: float = 0.5) -> tuple[Tensor, dict[int, int]]:
    """Paint instance masks (lowest score first, so the best stays on top) into an id map.

    Args:
        prediction: ``masks`` bool ``[M,H,W]``, ``labels`` int64 ``[M]``, ``scores`` float ``[M]``.
        score_threshold: instances scoring below it are not drawn.

    Returns:
        int64 ``[H,W]`` ids (0 = none, ``m+1`` = instance ``m``) and id → class label.
    """
    masks, labels, scores = prediction["masks"], prediction["labels"], prediction["scores"]
    ids = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    keep = torch.nonzero(scores >= score_threshold).flatten()
    order = keep[scores[keep].argsort()]
    for m in order.tolist():
        ids[masks[m]] = m + 1
    return ids, {m + 1: int(labels[m]) for m in order.tolist()}


def valid_image(image: Tensor, image_size: Sequence[int], out_size: Sequence[int] | None = None) -> np.ndarray:
    """A padded batch image cropped to its valid region, resized to ``out_size``, as uint8 ``[H,W,3]``.

    Args:
        image: float ``[3,Hp,Wp]`` in ``[0,1]`` (one image of a batch).
        image_size: ``(h, w)`` valid region.
        out_size: size of the predictions to overlay (default: ``image_size``).
    """
    h, w = image_size
    img = image[:, :h, :w]
    if out_size is not None and tuple(out_size) != (h, w):
        img = torch.nn.functional.interpolate(img[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return to_numpy_uint8(img)


def prediction_overlay(
    image: Tensor, image_size: Sequence[int], prediction: dict[str, Any], colors: Sequence[Sequence[int]]
) -> np.ndarray:
    """Colour overlay of one image's prediction, drawn at the prediction's size.

    Args:
        image: float ``[3,Hp,Wp]`` in ``[0,1]`` (one image of a padded batch).
        image_size: ``(h, w)`` valid region of ``image``.
        prediction: one or more of ``panoptic`` (:class:`~lightning_seg.structures.PanopticPrediction`),
            ``semantic`` (int ``[H,W]``) and ``instance``
            (:class:`~lightning_seg.structures.InstancePrediction`) or ``segments`` (int64
            ``[H,W]`` unlabelled ids, ``-1`` none); the first present in that order is drawn
            (instances scoring at least 0.5).
        colors: ``K`` RGB colours.

    Returns:
        uint8 ``[H,W,3]``.
    """
    if "panoptic" in prediction:
        p = prediction["panoptic"]
        seg = p["panoptic_seg"]
        labels = {int(s["id"]): int(s["category_id"]) for s in p["segments_info"]}
        return overlay_panoptic(valid_image(image, image_size, seg.shape), seg, labels, colors)
    if "semantic" in prediction:
        sem = prediction["semantic"]
        return overlay_semantic(valid_image(image, image_size, sem.shape), sem, colors)
    if "instance" in prediction:
        ids, labels = instance_id_map(prediction["instance"], score_threshold=0.5)
        return overlay_panoptic(valid_image(image, image_size, ids.shape), ids, labels, colors)
    if "segments" in prediction:
        seg = prediction["segments"].long() + 1  # unlabelled segments: one colour per id, cycling
        ids = {int(i): (int(i) - 1) % len(colors) for i in torch.unique(seg).tolist() if i > 0}
        return overlay_panoptic(valid_image(image, image_size, seg.shape), seg, ids, colors)
    raise ValueError(f"no panoptic, semantic, instance or segments prediction to draw among {sorted(prediction)}")


def to_numpy_uint8(x: Tensor) -> np.ndarray:
    """A CPU uint8 numpy copy of an image tensor in ``[0,1]`` float or uint8, ``[3,H,W]`` → ``[H,W,3]``."""
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()
