"""Set criterion of mask-classification models (Mask2Former, MaskFormer).

For every decoder layer (the final outputs and each entry of ``aux_outputs``) the queries are
matched to the targets with :func:`lightning_seg.ops.match_masks` (batched, one assignment
solve per batch), then

* ``loss_ce`` – cross-entropy over ``K+1`` classes, the no-object class weighted by
  ``eos_coef``, mean weighted by class weight (as ``F.cross_entropy(weight=...)``);
* ``loss_mask`` – per matched mask, sigmoid BCE (Mask2Former) or sigmoid focal loss
  (MaskFormer), mean over points, summed and divided by ``num_masks``;
* ``loss_dice`` – per matched mask dice loss, summed and divided by ``num_masks``.

Mask2Former evaluates the mask terms on ``num_points`` importance-sampled points (PointRend);
MaskFormer on every pixel of the target grid (predictions upsampled bilinearly). ``num_masks``
is the number of target segments in the batch, averaged over ranks when
``torch.distributed`` is initialised, and at least 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..ops.matching import Matching, hungarian_match, mask_matching_costs
from ..ops.point_sampling import (
    gather_points,
    most_uncertain_candidates,
    point_sample,
    point_sample_binary,
    point_sample_grid,
    rand_points_row_major,
    sample_points_by_uncertainty,
)
from .set_mask_losses import (
    dice_per_mask,
    pairwise_sigmoid_focal,
    sigmoid_bce_per_mask,
    sigmoid_focal_per_mask,
)
from .set_targets import PaddedTargets, pad_targets

__all__ = ["SetCriterion", "SharedDraws", "average_num_masks"]

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


class SharedDraws(NamedTuple):
    """Random points drawn once per criterion call and reused by every decoder layer.

    Attributes:
        match_points: float32 ``[B, P, 2]`` uniform matching points per image (each set in
            increasing ``y``, see :func:`lightning_seg.ops.point_sampling.rand_points_row_major`).
        match_targets: float32 ``[B, T, P]`` the padded targets sampled there.
        points: float32 ``[B, C + R, 2]`` per image: ``C`` importance-sampling candidates
            followed by ``R`` fresh uniform points (each draw in increasing ``y``).
        grid: ``2 * points - 1``, the same points in ``grid_sample`` coordinates.
        targets: float32 ``[B, T, C + R]`` the padded targets sampled at ``points``.
        num_candidates: ``C``.
    """

    match_points: torch.Tensor
    match_targets: torch.Tensor
    points: torch.Tensor
    grid: torch.Tensor
    targets: torch.Tensor
    num_candidates: int


def average_num_masks(num_local: torch.Tensor) -> torch.Tensor:
    """Number of target masks per rank, all-reduced when ``torch.distributed`` is running.

    Args:
        num_local: float32 scalar, this rank's count.

    Returns:
        float32 scalar ``max(sum over ranks / world size, 1)``.
    """
    num = num_local.float().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num.clamp(min=1.0)


class SetCriterion(nn.Module):
    """Hungarian-matched loss of mask-classification models with deep supervision.

    Args:
        num_classes: ``K`` (the logits have ``K+1`` entries, last = no-object).
        class_weight: weight of ``loss_ce`` (and of the class matching cost).
        mask_weight: weight of ``loss_mask`` (and of the mask matching cost).
        dice_weight: weight of ``loss_dice`` (and of the dice matching cost).
        eos_coef: cross-entropy weight of the no-object class.
        num_points: points per mask for the Mask2Former variant (matching uses the same
            number of uniform points per image).
        oversample_ratio: PointRend oversampling before choosing uncertain points.
        importance_sample_ratio: share of points chosen by uncertainty.
        variant: ``"mask2former"`` (BCE + dice on sampled points) or ``"maskformer"``
            (focal + dice on every target pixel; its matcher upsamples every query's mask to
            the target size, ``[B, Q, H, W]`` float32, so keep targets modest).
        focal_alpha, focal_gamma: focal-loss parameters of the MaskFormer variant.
        solver: assignment solver, see :func:`lightning_seg.ops.hungarian_match`.
        shared_points: Mask2Former variant only. ``True``: every decoder layer is matched at
            the same uniform points of an image (drawn once per call, so the targets are
            sampled once instead of once per layer), and the matched masks of an image share
            one draw of importance-sampling candidates and of fresh uniform points.
            ``False``: fresh matching points per layer, candidates and fresh points per
            mask, as Mask2Former and HF transformers draw them. Each layer's and each mask's
            points have the same distribution either way, so the expected loss is the same;
            ``True`` is about 1.7x faster on CPU (``docs/benchmarks.md``).

    ``forward(outputs, targets)`` takes the model's ``pred_logits [B,Q,K+1]``,
    ``pred_masks [B,Q,h,w]`` and optional ``aux_outputs`` (list of the same), and the batch's
    per-image ``targets`` (``masks`` bool ``[N,Hp,Wp]``, ``labels`` int64 ``[N]``). It returns
    unweighted float32 scalars ``loss_ce``, ``loss_mask``, ``loss_dice`` and, for aux layer
    ``i``, ``loss_ce_i`` etc.; :meth:`total` gives the weighted sum.
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        variant: Literal["mask2former", "maskformer"] = "mask2former",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        solver: str = "auto",
        shared_points: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if variant not in ("mask2former", "maskformer"):
            raise ValueError(f"variant must be 'mask2former' or 'maskformer', got {variant!r}")
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError("class_weight, mask_weight and dice_weight cannot all be 0")
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.variant = variant
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.solver = solver
        self.shared_points = shared_points
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def weight_of(self, name: str) -> float:
        """Weight of a loss term by name (``loss_dice`` or ``loss_dice_3`` → dice weight)."""
        for base, w in self.weights.items():
            if name == base or (name.startswith(base + "_") and name[len(base) + 1 :].isdigit()):
                return w
        raise KeyError(f"unknown loss term {name!r}; terms are {LOSS_NAMES} with optional _<layer>")

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the terms returned by :meth:`forward` (float32 scalar)."""
        return sum(self.weight_of(k) * v for k, v in losses.items())  # type: ignore[return-value]

    def forward(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, object]]
    ) -> dict[str, torch.Tensor]:
        """Loss terms for the final layer and every aux layer (see the class docstring)."""
        pred_logits, pred_masks = self._layer(outputs, "outputs")
        b = pred_logits.shape[0]
        if len(targets) != b:
            raise ValueError(f"SetCriterion: {b} images in outputs but {len(targets)} targets")
        padded = pad_targets(targets, self.num_classes, device=pred_logits.device)
        num_masks = average_num_masks(padded.valid.sum())
        shared = None
        if self.variant == "mask2former" and self.shared_points and padded.labels.shape[1] > 0:
            shared = self.draw_shared_points(padded)
        losses = self._layer_losses(pred_logits, pred_masks, padded, num_masks, shared)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):  # type: ignore[union-attr]
            aux_logits, aux_masks = self._layer(aux, f"aux_outputs[{i}]")
            layer = self._layer_losses(aux_logits, aux_masks, padded, num_masks, shared)
            losses.update({f"{k}_{i}": v for k, v in layer.items()})
        return losses

    def _layer(self, out: Mapping[str, object], where: str) -> tuple[torch.Tensor, torch.Tensor]:
        for key in ("pred_logits", "pred_masks"):
            if key not in out:
                raise KeyError(f"SetCriterion: {where} has no {key!r} (keys: {sorted(out)})")
        logits, masks = out["pred_logits"], out["pred_masks"]
        if logits.ndim != 3 or logits.shape[-1] != self.num_classes + 1:  # type: ignore[union-attr]
            raise ValueError(
                f"SetCriterion: {where}['pred_logits'] must be [B,Q,{self.num_classes + 1}], "
                f"got {tuple(logits.shape)}"  # type: ignore[union-attr]
            )
        if masks.ndim != 4 or masks.shape[:2] != logits.shape[:2]:  # type: ignore[union-attr]
            raise ValueError(
                f"SetCriterion: {where}['pred_masks'] must be [B,Q,h,w] matching pred_logits "
                f"{tuple(logits.shape)}, got {tuple(masks.shape)}"  # type: ignore[union-attr]
            )
        return logits, masks  # type: ignore[return-value]

    @torch.no_grad()
    def draw_shared_points(self, padded: PaddedTargets) -> SharedDraws:
        """Draw this call's matching points, candidates and fresh points; sample the targets.

        The bool targets are read at every drawn point once (``point_sample_binary``), so
        no decoder layer converts a target mask to float.
        """
        b = padded.masks.shape[0]
        dev = padded.masks.device
        num_candidates = int(self.num_points * self.oversample_ratio)
        num_random = self.num_points - int(self.importance_sample_ratio * self.num_points)
        # Each draw is a set, so it is drawn in row-major order: every later read of the
        # targets and of the masks at these points is then nearly sequential.
        match_points = rand_points_row_major(b, self.num_points, device=dev)
        points = torch.cat(
            [
                rand_points_row_major(b, num_candidates, device=dev),
                rand_points_row_major(b, num_random, device=dev),
            ],
            dim=1,
        )
        return SharedDraws(
            match_points,
            point_sample_binary(padded.masks, match_points),
            points,
            points.mul(2.0).sub_(1.0),
            point_sample_binary(padded.masks, points),
            num_candidates,
        )

    @torch.no_grad()
    def match(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        padded: PaddedTargets,
        shared: SharedDraws | None = None,
    ) -> Matching:
        """Match one layer's queries to the padded targets (no gradient).

        Args:
            pred_logits: float ``[B, Q, K+1]``.
            pred_masks: float ``[B, Q, h, w]``.
            padded: from :func:`lightning_seg.losses.set_targets.pad_targets`.
            shared: Mask2Former variant: this call's :class:`SharedDraws` (matching points
                and the targets sampled there); ``None`` draws fresh points.
        """
        b = pred_logits.shape[0]
        wc, wm, wd = (self.weights[k] for k in LOSS_NAMES)
        if self.variant == "mask2former":
            if shared is None:
                points = torch.rand(b, self.num_points, 2, device=pred_masks.device)
                target_samples = None
            else:
                points, target_samples = shared.match_points, shared.match_targets
            cost = mask_matching_costs(
                pred_logits, pred_masks, padded.labels, padded.masks, points, wc, wm, wd,
                target_samples=target_samples,
            )
        else:
            cost = self._full_grid_costs(pred_logits, pred_masks, padded, wc, wm, wd)
        return hungarian_match(cost, target_valid=padded.valid, solver=self.solver)

    def _full_grid_costs(
        self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, padded: PaddedTargets,
        wc: float, wm: float, wd: float,
    ) -> torch.Tensor:
        b, q, _ = pred_logits.shape
        t = padded.labels.shape[1]
        prob = pred_logits.float().softmax(-1)
        cls = -torch.gather(prob, 2, padded.labels[:, None, :].expand(b, q, t))
        if t == 0:
            return cls
        h, w = padded.masks.shape[-2:]
        logits = F.interpolate(
            pred_masks.float(), size=(h, w), mode="bilinear", align_corners=False
        )
        logits = logits.flatten(2)
        tgt = padded.masks.flatten(2).float()
        focal = pairwise_sigmoid_focal(logits, tgt, self.focal_alpha, self.focal_gamma)
        s = logits.sigmoid()
        dice = 1.0 - (2.0 * torch.bmm(s, tgt.transpose(1, 2)) + 1.0) / (
            s.sum(-1)[:, :, None] + tgt.sum(-1)[:, None, :] + 1.0
        )
        return wc * cls + wm * focal + wd * dice

    @torch.no_grad()
    def _shared_loss_points(
        self,
        pred_masks: torch.Tensor,
        matching: Matching,
        batch_idx: torch.Tensor,
        target_idx: torch.Tensor,
        shared: SharedDraws,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-sampled points of the matched masks from the shared draws, in
        ``grid_sample`` coordinates, and their target values: float32 ``[M, P, 2]`` and
        ``[M, P]`` for the ``M`` pairs ``(batch_idx, target_idx)``."""
        b, q = pred_masks.shape[:2]
        num_targets = matching.pred_for_target.shape[1]
        m = batch_idx.shape[0]
        c = shared.num_candidates
        total = shared.points.shape[1]
        # Matched masks laid out by (image, target), so one bilinear pass per image scores
        # all of its masks at the image's candidates. Slots of unmatched targets get some
        # query's mask: they are scored but never selected below.
        slot_query = matching.pred_for_target.clamp(min=0)
        slot_query = slot_query + torch.arange(b, device=slot_query.device)[:, None] * q
        by_target = pred_masks.detach().flatten(0, 1).index_select(0, slot_query.view(-1))
        by_target = by_target.view(b, num_targets, *pred_masks.shape[2:])
        rows = torch.stack([batch_idx, target_idx], 1)
        k = int(self.importance_sample_ratio * self.num_points)
        idx = most_uncertain_candidates(by_target, shared.points[:, :c], k, rows)
        fresh = torch.arange(c, total, device=pred_masks.device)
        # [M, P] indices into the batch's flattened C + R points per image, written in place
        # (no concatenated copy): [M, P] int64 temporaries are large at training sizes.
        point_idx = torch.empty((m, k + total - c), dtype=torch.long, device=fresh.device)
        image_start = (batch_idx * total)[:, None]
        torch.add(idx, image_start, out=point_idx[:, :k])
        torch.add(fresh, image_start, out=point_idx[:, k:])
        grid = gather_points(shared.grid, point_idx)
        point_idx += (batch_idx * (num_targets - 1) * total + target_idx * total)[:, None]
        labels = shared.targets.view(-1).index_select(0, point_idx.view(-1))
        return grid, labels.view(m, -1)

    def _layer_losses(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        padded: PaddedTargets,
        num_masks: torch.Tensor,
        shared: SharedDraws | None = None,
    ) -> dict[str, torch.Tensor]:
        matching = self.match(pred_logits, pred_masks, padded, shared)
        b, q, _ = pred_logits.shape
        t = padded.labels.shape[1]
        hit = matching.target_for_pred >= 0
        tgt_idx = matching.target_for_pred.clamp(min=0)
        if t > 0:
            matched_labels = torch.gather(padded.labels, 1, tgt_idx)
        else:
            matched_labels = torch.zeros_like(tgt_idx)
        no_object = torch.full_like(tgt_idx, self.num_classes)
        target_classes = torch.where(hit, matched_labels, no_object)
        loss_ce = F.cross_entropy(
            pred_logits.float().transpose(1, 2), target_classes, weight=self.empty_weight.float()
        )
        batch_idx, pred_idx, target_idx = matching.pairs()
        if batch_idx.numel() == 0:
            # Keep the graph connected so every rank sees the same parameters used.
            zero = pred_masks.float().sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        # index_select, not advanced indexing: its backward is an index_add into the
        # [B, Q, h, w] gradient, several times faster than the accumulating index_put of
        # advanced indexing.
        src = pred_masks.flatten(0, 1).index_select(0, batch_idx * q + pred_idx)  # [M, h, w]
        rows = (batch_idx * t + target_idx)[:, None]
        tgt_masks = padded.masks.reshape(b * t, *padded.masks.shape[2:])
        if self.variant == "mask2former":
            if shared is not None:
                grid, labels = self._shared_loss_points(
                    pred_masks, matching, batch_idx, target_idx, shared
                )
                logits = point_sample_grid(src.float()[:, None], grid)[:, 0]
            else:
                points = sample_points_by_uncertainty(
                    src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                labels = point_sample_binary(tgt_masks, points, rows)[:, 0]
                logits = point_sample(src.float(), points)
            loss_mask = sigmoid_bce_per_mask(logits, labels).sum() / num_masks
        else:
            h, w = tgt_masks.shape[-2:]
            logits = F.interpolate(
                src.float()[:, None], size=(h, w), mode="bilinear", align_corners=False
            )
            logits = logits.flatten(1)
            labels = tgt_masks[rows[:, 0]].flatten(1).float()
            focal = sigmoid_focal_per_mask(logits, labels, self.focal_alpha, self.focal_gamma)
            loss_mask = focal.sum() / num_masks
        loss_dice = dice_per_mask(logits, labels).sum() / num_masks
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}
