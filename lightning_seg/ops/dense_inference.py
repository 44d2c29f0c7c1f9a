"""Per-pixel inference modes: whole image, sliding window, multi-scale + flip test-time augmentation.

All functions take a ``predict`` callable mapping images float ``[B,3,h,w]`` to logits
``[B,K,h,w]`` at the same size, and return class *probabilities* (softmax) so that windows and
augmentations average in probability space, as mmsegmentation does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

Predict = Callable[[Tensor], Tensor]


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts covering ``[0, size)``; the last window is aligned to the far edge."""
    if size <= window:
        return [0]
    n = -(-(size - window) // stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


def slide_inference(predict: Predict, images: Tensor, window: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Sliding-window probabilities (mmsegmentation's ``slide`` mode).

    Windows of ``window = (wh, ww)`` move by ``stride``; each pixel's probabilities are the mean
    over the windows covering it. An image smaller than the window is padded (with zeros) to
    the window size for the forward pass and cropped back.

    Args:
        predict: images ``[B,3,h,w]`` → logits ``[B,K,h,w]``.
        images: float ``[B,3,H,W]``.
        window: ``(wh, ww)``.
        stride: ``(sh, sw)``.

    Returns:
        float32 ``[B,K,H,W]`` probabilities.
    """
    b, _, h, w = images.shape
    wh, ww = window
    sh, sw = stride
    total: Tensor | None = None
    count = images.new_zeros(1, 1, h, w)
    for y in _starts(h, wh, sh):
        for x in _starts(w, ww, sw):
            crop = images[:, :, y : y + wh, x : x + ww]
            ch, cw = crop.shape[-2:]
            if (ch, cw) != (wh, ww):
                crop = F.pad(crop, (0, ww - cw, 0, wh - ch))
            prob = predict(crop).float().softmax(1)[:, :, :ch, :cw]
            if total is None:
                total = prob.new_zeros(b, prob.shape[1], h, w)
            total[:, :, y : y + ch, x : x + cw] += prob
            count[:, :, y : y + ch, x : x + cw] += 1
    assert total is not None
    return total / count


def dense_probabilities(
    predict: Predict,
    images: Tensor,
    mode: str = "whole",
    window: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class probabilities with the chosen inference mode and test-time augmentation.

    Each scale resizes the images (bilinear), runs ``whole`` or ``slide`` inference, and
    resizes the probabilities back; with ``flip`` the horizontally flipped image is added. The
    result is the mean over all of them.

    Args:
        predict: images ``[B,3,h,w]`` → logits ``[B,K,h,w]``.
        images: float ``[B,3,H,W]``.
        mode: ``whole`` or ``slide``.
        window, stride: sliding-window geometry (``slide`` mode).
        scales: resize factors (``(1.0,)`` = single scale).
        flip: add horizontal flips.

    Returns:
        float32 ``[B,K,H,W]`` probabilities.
    """
    h, w = images.shape[-2:]
    acc: Tensor | None = None
    n = 0
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            if mode == "slide":
                prob = slide_inference(predict, xi, window, stride)
            elif mode == "whole":
                prob = predict(xi).float().softmax(1)
            else:
                raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
            if flipped:
                prob = prob.flip(-1)
            if prob.shape[-2:] != (h, w):
                prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
            acc = prob if acc is None else acc + prob
            n += 1
    assert acc is not None
    return acc / n


def crop_and_resize(prob: Tensor, image_size: Sequence[int], out_size: Sequence[int]) -> Tensor:
    """Crop padded per-pixel scores to the valid region and resize them to ``out_size``.

    Args:
        prob: float ``[K,Hp,Wp]`` for one image.
        image_size: ``(h, w)`` valid region (before padding).
        out_size: ``(H, W)`` target size.

    Returns:
        float ``[K,H,W]``.
    """
    h, w = image_size
    prob = prob[:, :h, :w]
    if tuple(out_size) != (h, w):
        prob = F.interpolate(prob[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return prob
