"""Hungarian matching of predictions to padded targets, for the whole batch at once.

:func:`hungarian_match` is the generic entry point (any ``[B, P, T]`` cost: mask costs,
DETR-style box costs, ...; the pairwise terms are in :mod:`lightning_seg.ops.matching_costs`).
:func:`mask_matching_costs` builds Mask2Former's matching cost — ``-p(class)``, sigmoid BCE and
dice on points shared by all queries and targets of an image — for every image in one pass
over padded ``[B, T, ...]`` targets, in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .linear_assignment import solve_assignment
from .matching_costs import class_cost, pairwise_dice, pairwise_sigmoid_bce
from .point_sampling import (
    point_sample_binary,
    point_sample_channels_last,
    rand_points_row_major,
    sort_points_row_major,
)

__all__ = ["Matching", "hungarian_match", "mask_matching_costs", "match_masks", "point_mask_costs"]


class Matching(NamedTuple):
    """Result of matching ``P`` predictions to ``T`` padded targets per image.

    Attributes:
        target_for_pred: int64 ``[B, P]`` matched target index of each prediction, ``-1`` if none.
        pred_for_target: int64 ``[B, T]`` matched prediction of each target, ``-1`` if none
            (padding, or more targets than predictions).
    """

    target_for_pred: torch.Tensor
    pred_for_target: torch.Tensor

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched pairs ordered by image then prediction index.

        Returns:
            ``(batch_idx, pred_idx, target_idx)``, each int64 ``[M]``.
        """
        batch_idx, pred_idx = torch.nonzero(self.target_for_pred >= 0, as_tuple=True)
        return batch_idx, pred_idx, self.target_for_pred[batch_idx, pred_idx]


def hungarian_match(
    cost: torch.Tensor,
    target_valid: torch.Tensor | None = None,
    pred_valid: torch.Tensor | None = None,
    solver: str = "auto",
) -> Matching:
    """Exact minimum-cost one-to-one matching of predictions to targets in every image.

    Each image matches ``min(#valid predictions, #valid targets)`` pairs. Non-finite costs are
    replaced by a large finite cost so those pairs are used only when unavoidable.

    Args:
        cost: float ``[B, P, T]`` cost of giving target ``t`` to prediction ``p``.
        target_valid: bool ``[B, T]`` real (non-padding) targets; ``None`` = all.
        pred_valid: bool ``[B, P]``; ``None`` = all.
        solver: see :func:`lightning_seg.ops.linear_assignment.solve_assignment`.

    Returns:
        A :class:`Matching`.
    """
    if cost.ndim != 3:
        raise ValueError(f"hungarian_match expects cost [B,P,T], got {tuple(cost.shape)}")
    b, p, t = cost.shape
    target_for_pred = solve_assignment(cost, pred_valid, target_valid, solver=solver)
    pred_for_target = torch.full((b, t + 1), -1, dtype=torch.long, device=cost.device)
    hit = target_for_pred >= 0
    preds = torch.arange(p, device=cost.device).expand(b, p)
    pred_for_target.scatter_(1, torch.where(hit, target_for_pred, t), torch.where(hit, preds, -1))
    return Matching(target_for_pred, pred_for_target[:, :t])


def mask_matching_costs(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor | None,
    points: torch.Tensor,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
    **point_options: Any,
) -> torch.Tensor:
    """Mask2Former's matching cost for a padded batch, in float32.

    ``cost = cost_class * (-softmax(logits)[label]) + cost_mask * BCE + cost_dice * dice`` where
    BCE is the mean pointwise sigmoid cross-entropy and dice is ``1 - (2 s.t + 1) / (s + t + 1)``
    over ``points`` (the same points for every query and target of an image). Entries of
    padding targets are computed but meaningless; mask them with the validity mask.

    Args:
        pred_logits: float ``[B, Q, K+1]`` class logits (last = no-object).
        pred_masks, target_masks, points, cost_mask, cost_dice: see :func:`point_mask_costs`.
        **point_options: ``target_samples``, ``chunk_elements``, ``row_ordered`` of
            :func:`point_mask_costs`.
        target_labels: int64 ``[B, T]`` (any value in ``[0, K]`` for padding).
        cost_class: weight of the class term.

    Returns:
        float32 ``[B, Q, T]``.
    """
    b, q, _ = pred_logits.shape
    t = target_labels.shape[1]
    if pred_masks.shape[:2] != (b, q) or (
        target_masks is not None and target_masks.shape[:2] != (b, t)
    ):
        raise ValueError(
            f"mask_matching_costs: pred_logits {tuple(pred_logits.shape)}, pred_masks "
            f"{tuple(pred_masks.shape)}, target_labels {tuple(target_labels.shape)} and "
            f"target_masks {tuple(getattr(target_masks, 'shape', ()))} disagree on "
            "batch/query/target sizes"
        )
    cls = cost_class * class_cost(pred_logits, target_labels)
    if t == 0:
        return cls
    return cls + point_mask_costs(pred_masks, target_masks, points, cost_mask, cost_dice, **point_options)


def point_mask_costs(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor | None,
    points: torch.Tensor,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
    target_samples: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    row_ordered: bool = False,
) -> torch.Tensor:
    """``cost_mask * BCE + cost_dice * dice`` of every (query, target) pair at shared points.

    Args:
        pred_masks: float ``[B, Q, h, w]`` mask logits.
        target_masks: bool ``[B, T, H, W]`` (``None`` when ``target_samples`` is given).
        points: float ``[B, P, 2]`` normalised ``(x, y)`` points per image.
        cost_mask, cost_dice: weights of the two terms.
        target_samples: float32 ``[B, T, P]`` = ``point_sample_binary(target_masks, points)``
            when already computed (the set criterion matches every decoder layer at the same
            points and samples the targets once); ``target_masks`` is then not read.
        chunk_elements: bound on the ``[images, Q, P]`` point logits evaluated at once.
            ``None``: the whole batch in one pass on accelerators; on CPU ``2**22`` (16 MiB),
            because there temporaries that stay in cache and under the allocator's mmap
            threshold make the cost faster than one pass over a batch of 8
            (``scripts/benchmarks/ops.py --only matcher --chunks``).
        row_ordered: the points are already in increasing ``y`` per image (as
            :func:`~lightning_seg.ops.point_sampling.rand_points_row_major` draws them);
            otherwise they are sorted first, which only changes the order of the sums.

    Returns:
        float32 ``[B, Q, T]``.
    """
    b, q = pred_masks.shape[:2]
    if target_masks is None and target_samples is None:
        raise ValueError("point_mask_costs needs target_masks or target_samples")
    t = target_samples.shape[1] if target_samples is not None else target_masks.shape[1]
    if target_samples is not None and target_samples.shape != (b, t, points.shape[1]):
        raise ValueError(
            f"point_mask_costs: target_samples must be [B={b}, T={t}, P={points.shape[1]}], "
            f"got {tuple(target_samples.shape)}"
        )
    if chunk_elements is None:
        chunk_elements = 1 << 22 if pred_masks.device.type == "cpu" else b * q * points.shape[1]
    step = max(1, chunk_elements // max(q * points.shape[1], 1))
    if target_samples is None and not row_ordered:
        # The costs sum over points, so their order is free: row-major order makes the
        # reads of the full-resolution targets nearly sequential.
        points = sort_points_row_major(points, *target_masks.shape[-2:])
    chunks = []
    for s in range(0, b, step):
        pts = points[s : s + step]
        if target_samples is None:
            # Sampled chunk by chunk, so the targets' samples are still in cache for the costs.
            tgt = point_sample_binary(target_masks[s : s + step], pts)  # [b, T, P]
        else:
            tgt = target_samples[s : s + step].float()
        logits = point_sample_channels_last(pred_masks[s : s + step].float(), pts.float())  # [b, P, Q]
        bce = pairwise_sigmoid_bce(logits, tgt)
        # In place when no gradient is being recorded: saves a [b, P, Q] allocation.
        probs = logits.sigmoid() if logits.requires_grad else logits.sigmoid_()
        chunks.append(cost_mask * bce + cost_dice * pairwise_dice(probs, tgt))
    return torch.cat(chunks)


@torch.no_grad()
def match_masks(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
    num_points: int = 12544,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
    solver: str = "auto",
    points: torch.Tensor | None = None,
) -> Matching:
    """Match mask-classification queries to padded targets for a whole batch.

    Args:
        pred_logits: float ``[B, Q, K+1]``.
        pred_masks: float ``[B, Q, h, w]`` logits.
        target_labels: int64 ``[B, T]``.
        target_masks: bool ``[B, T, H, W]``.
        target_valid: bool ``[B, T]``.
        num_points: uniform points per image, drawn with
            :func:`~lightning_seg.ops.point_sampling.rand_points_row_major` when ``points``
            is not given.
        cost_class, cost_mask, cost_dice: cost weights.
        solver: assignment solver (``"auto"``, ``"scipy"``, ``"torch"``).
        points: float ``[B, P, 2]`` to use instead of random points.

    Returns:
        A :class:`Matching`.
    """
    b = pred_logits.shape[0]
    drawn = points is None
    if drawn:
        points = rand_points_row_major(b, num_points, device=pred_masks.device)
    cost = mask_matching_costs(
        pred_logits, pred_masks, target_labels, target_masks, points,
        cost_class, cost_mask, cost_dice, row_ordered=drawn,
    )
    return hungarian_match(cost, target_valid=target_valid, solver=solver)
