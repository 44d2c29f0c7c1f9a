"""Input checks and helpers shared by the per-pixel losses."""

from __future__ import annotations

import torch
from torch import Tensor


def check_pixel_inputs(logits: Tensor, target: Tensor, ignore_index: int, loss_name: str) -> None:
    """Raise ``ValueError`` naming ``loss_name`` unless logits / target follow the contract.

    Args:
        logits: float ``[B, K, H, W]``.
        target: int64 ``[B, H, W]`` with class ids in ``[0, K)`` or ``ignore_index``.

    The value range is checked with an asynchronous device assertion: it fails immediately on
    CPU and at the next synchronisation on GPU, without a host round-trip per step.
    """
    if logits.ndim != 4 or not logits.is_floating_point():
        raise ValueError(f"{loss_name}: logits must be float [B,K,H,W], got {logits.dtype} {tuple(logits.shape)}")
    if target.dtype != torch.int64 or target.ndim != 3:
        raise ValueError(f"{loss_name}: target must be int64 [B,H,W], got {target.dtype} {tuple(target.shape)}")
    b, k, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(f"{loss_name}: target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {(b, h, w)}); resize logits to the target first")
    bad = (target != ignore_index) & ((target < 0) | (target >= k))
    torch._assert_async(~bad.any(), f"{loss_name}: target has class ids outside [0, {k}) that are not "
                                    f"ignore_index={ignore_index}")


def valid_and_safe_target(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``(valid, safe)``: bool ``[B, H, W]`` of non-ignored pixels and the target with ignored set to 0.

    ``safe`` can index class tables and ``gather`` logits; masked by ``valid`` afterwards.
    """
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(values) / sum(weights)``, and exactly 0 (with a zero gradient) when ``sum(weights) == 0``.

    ``values`` must already be zero where ``weights`` is zero, so an all-ignored batch gives a
    finite loss instead of ``0 / 0``.
    """
    denom = weights.sum()
    return values.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


def check_class_weights(weight: Tensor | None, num_classes: int, loss_name: str) -> None:
    """Raise ``ValueError`` naming ``loss_name`` when ``weight`` is not ``[num_classes]``."""
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(f"{loss_name}: {weight.numel()} class weights for {num_classes} classes")


def weighted_pixel_cross_entropy(
    logits: Tensor, target: Tensor, class_weights: Tensor | None, ignore_index: int, loss_name: str,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Checked per-pixel cross-entropy, the common core of the CE-family losses.

    Args:
        logits: float ``[B, K, H, W]``.
        target: int64 ``[B, H, W]`` with ``ignore_index`` for void.
        class_weights: float ``[K]`` or None.
        ignore_index: void value.
        loss_name: named in errors.
        label_smoothing: as in ``F.cross_entropy``.

    Returns:
        float32 logits ``[B, K, H, W]`` and the per-pixel loss float32 ``[B, H, W]`` (0 on void,
        each pixel multiplied by its class weight).
    """
    check_pixel_inputs(logits, target, ignore_index, loss_name)
    check_class_weights(class_weights, logits.shape[1], loss_name)
    logits = logits.float()
    per_pixel = torch.nn.functional.cross_entropy(
        logits, target, weight=class_weights, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing,
    )
    return logits, per_pixel
