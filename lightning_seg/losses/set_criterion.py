"""Set criterion of the query-based models (Mask2Former, MaskFormer, DETR): matching + loss terms.

For every decoder layer (the final outputs and each entry of ``aux_outputs``) the predictions
are matched to the targets by Hungarian matching on the sum of the chosen terms' costs
(:func:`lightning_seg.ops.hungarian_match`, one assignment solve per batch), then each term
gives its losses of the matched pairs (:mod:`lightning_seg.losses.set_terms`):

* ``labels`` – ``loss_ce``, cross-entropy over ``K+1`` classes, the no-object class weighted by
  ``eos_coef``;
* ``masks`` – ``loss_mask`` (sigmoid BCE) and ``loss_dice`` on ``num_points`` importance-sampled
  points per matched mask (Mask2Former, PointRend sampling);
* ``dense_masks`` – ``loss_mask`` (sigmoid focal) and ``loss_dice`` on every target pixel
  (MaskFormer, DETR's mask head);
* ``boxes`` – ``loss_bbox`` (L1) and ``loss_giou`` on normalised ``cx, cy, w, h`` boxes (DETR).

Mask and box terms are summed over matched pairs and divided by ``num_masks``, the number of
target segments in the batch averaged over ranks when ``torch.distributed`` is initialised,
and at least 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from ..ops.matching import Matching, hungarian_match
from .set_targets import PaddedTargets, pad_targets
from .set_terms import (
    BoxesTerm,
    DenseMasksTerm,
    LabelsTerm,
    Pairs,
    PointMasksTerm,
    SharedDraws,
)
from .term_weights import TermWeights

__all__ = ["SetCriterion", "SharedDraws", "average_num_masks"]

Term = Literal["labels", "masks", "dense_masks", "boxes"]


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


class SetCriterion(TermWeights, nn.Module):
    """Hungarian-matched loss of query-based models with deep supervision, by loss term.

    Args:
        num_classes: ``K`` (the logits have ``K+1`` entries, last = no-object).
        class_weight: weight of ``loss_ce`` (and of the class matching cost).
        mask_weight: weight of ``loss_mask`` (and of the mask matching cost).
        dice_weight: weight of ``loss_dice`` (and of the dice matching cost).
        eos_coef: cross-entropy weight of the no-object class.
        num_points: points per mask of the ``masks`` term (matching uses the same number of
            uniform points per image).
        oversample_ratio: PointRend oversampling before choosing uncertain points.
        importance_sample_ratio: share of points chosen by uncertainty.
        losses: the terms (see the module docstring): ``["labels", "masks"]`` is Mask2Former,
            ``["labels", "dense_masks"]`` MaskFormer, ``["labels", "boxes"]`` DETR's detector.
        focal_alpha, focal_gamma: focal-loss parameters of ``dense_masks``.
        bbox_weight, giou_weight: weights of ``loss_bbox`` and ``loss_giou`` (and their costs).
        solver: assignment solver, see :func:`lightning_seg.ops.hungarian_match`.
        shared_points: ``masks`` term: draw the points once per call and share them across
            layers and the masks of an image (same expected loss, faster, see
            ``docs/benchmarks.md``), or draw them per layer and mask as Mask2Former does; see
            :class:`~lightning_seg.losses.set_terms.PointMasksTerm`.
        match_losses: the terms whose costs enter the matching (default: all of ``losses``);
            DETR's panoptic model matches on ``["labels", "boxes"]`` and trains its masks on
            that matching.
        aux_losses: the terms computed on ``aux_outputs`` (default: all of ``losses``; they must
            hold ``match_losses``); DETR's aux layers have no masks: ``["labels", "boxes"]``.

    ``forward(outputs, targets)`` takes the model's ``pred_logits [B,Q,K+1]``, the outputs the
    terms need (``pred_masks [B,Q,h,w]``, ``pred_boxes [B,Q,4]``) and optional ``aux_outputs``
    (list of the same), and the batch's per-image ``targets`` (``masks`` bool ``[N,Hp,Wp]``,
    ``labels`` int64 ``[N]``, and for ``boxes`` the ``boxes`` float ``[N,4]`` xyxy pixels and
    ``image_size``). It returns unweighted float32 scalars ``loss_ce``, ``loss_mask``, ... and,
    for aux layer ``i``, ``loss_ce_i`` etc.; :meth:`weighted` applies the weights and
    :meth:`total` gives their sum.
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
        losses: Sequence[Term] = ("labels", "masks"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        solver: str = "auto",
        shared_points: bool = True,
        match_losses: Sequence[Term] | None = None,
        aux_losses: Sequence[Term] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        builders = {
            "labels": lambda: LabelsTerm(num_classes, eos_coef, class_weight),
            "masks": lambda: PointMasksTerm(num_points, oversample_ratio, importance_sample_ratio, shared_points,
                                            mask_weight, dice_weight),
            "dense_masks": lambda: DenseMasksTerm(focal_alpha, focal_gamma, mask_weight, dice_weight),
            "boxes": lambda: BoxesTerm(bbox_weight, giou_weight),
        }
        unknown = [t for t in losses if t not in builders]
        if unknown or not losses or len(set(losses)) != len(losses):
            raise ValueError(f"SetCriterion losses {list(losses)}: choose distinct terms from {list(builders)}")
        if "masks" in losses and "dense_masks" in losses:
            raise ValueError("SetCriterion: 'masks' and 'dense_masks' both give loss_mask/loss_dice; choose one")
        match_losses = list(losses) if match_losses is None else list(match_losses)
        if not match_losses or any(t not in losses for t in match_losses):
            raise ValueError(f"SetCriterion match_losses {match_losses} must be a non-empty subset of "
                             f"losses {list(losses)}")
        aux_losses = list(losses) if aux_losses is None else list(aux_losses)
        if any(t not in losses for t in aux_losses) or any(t not in aux_losses for t in match_losses):
            raise ValueError(f"SetCriterion aux_losses {aux_losses} must be a subset of losses {list(losses)} "
                             f"holding match_losses {match_losses}")
        self.num_classes = num_classes
        self.solver = solver
        self.match_losses = match_losses
        self.aux_losses = aux_losses
        self.terms = nn.ModuleDict({name: builders[name]() for name in losses})
        all_weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight,
                       "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.weights = {n: all_weights[n] for term in self.terms.values() for n in term.loss_names}
        if not any(self.weights.values()):
            raise ValueError(f"SetCriterion: the weights of {sorted(self.weights)} cannot all be 0")

    def forward(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Loss terms for the final layer and every aux layer (see the class docstring)."""
        layer = self._layer(outputs, "outputs")
        b = layer["pred_logits"].shape[0]
        if len(targets) != b:
            raise ValueError(f"SetCriterion: {b} images in outputs but {len(targets)} targets")
        padded = pad_targets(targets, self.num_classes, device=layer["pred_logits"].device,
                             with_boxes="boxes" in self.terms)
        num_masks = average_num_masks(padded.valid.sum())
        contexts = {name: term.prepare(padded) for name, term in self.terms.items()}
        losses = self._layer_losses(layer, padded, num_masks, contexts, list(self.terms))
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            layer_losses = self._layer_losses(self._layer(aux, f"aux_outputs[{i}]", self.aux_losses), padded,
                                              num_masks, contexts, self.aux_losses)
            losses.update({f"{k}_{i}": v for k, v in layer_losses.items()})
        return losses

    def _layer(self, out: Mapping[str, Any], where: str, terms: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        names = list(self.terms) if terms is None else terms
        needed = sorted({k for name in names for k in self.terms[name].required_outputs})
        for key in needed:
            if key not in out:
                raise KeyError(f"SetCriterion: {where} has no {key!r} (keys: {sorted(out)})")
        logits = out["pred_logits"]
        if logits.ndim != 3 or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: {where}['pred_logits'] must be [B,Q,{self.num_classes + 1}], got {tuple(logits.shape)}"
            )
        shapes = {"pred_masks": (4, "[B,Q,h,w]"), "pred_boxes": (3, "[B,Q,4]")}
        for key in needed:
            if key in shapes:
                v, (ndim, text) = out[key], shapes[key]
                if v.ndim != ndim or v.shape[:2] != logits.shape[:2] or (key == "pred_boxes" and v.shape[-1] != 4):
                    raise ValueError(f"SetCriterion: {where}[{key!r}] must be {text} matching pred_logits "
                                     f"{tuple(logits.shape)}, got {tuple(v.shape)}")
        return {k: out[k] for k in needed}

    @torch.no_grad()
    def match(self, layer: Mapping[str, torch.Tensor], padded: PaddedTargets, contexts: Mapping[str, Any]) -> Matching:
        """Match one layer's predictions to the padded targets on the sum of the terms' costs."""
        cost = None
        for name in self.match_losses:
            c = self.terms[name].cost(layer, padded, contexts[name])
            if c is not None:
                cost = c if cost is None else cost + c
        if cost is None:  # no term scores pairs (no targets): nothing to match
            b, q = layer["pred_logits"].shape[:2]
            cost = layer["pred_logits"].new_zeros(b, q, padded.labels.shape[1], dtype=torch.float32)
        return hungarian_match(cost, target_valid=padded.valid, solver=self.solver)

    def _layer_losses(self, layer: Mapping[str, torch.Tensor], padded: PaddedTargets, num_masks: torch.Tensor,
                      contexts: Mapping[str, Any], terms: Sequence[str]) -> dict[str, torch.Tensor]:
        matching = self.match(layer, padded, contexts)
        pairs = Pairs(*matching.pairs())
        losses: dict[str, torch.Tensor] = {}
        for name in terms:
            losses.update(self.terms[name].loss(layer, padded, matching, pairs, num_masks, contexts[name]))
        return losses
