"""MaX-DeepLab's losses (deeplab2's ``MaXDeepLabLoss``), batched over the images of a batch.

Ground truth is taken at the mask logits' resolution by strided sampling (deeplab2's
``strided_downsample``: the top-left pixel of every output cell); a segment left with no pixel
there is void, as in deeplab2. Crowd regions are void everywhere (deeplab2's COCO data treats
crowd as ignore): they are no mask target, count as void pixels and are ignored by the semantic
loss.

Per image, with slots' mask probabilities ``p`` (softmax over the ``N`` slots at each pixel) and
class probabilities ``c``:

* matching: Hungarian on ``-(dice(p, gt) x c(gt class))``, dice ``= |p.g| / ((|g| + |p|) / 2 +
  1e-5)`` with ``p`` restricted to labelled pixels, void rows excluded;
* ``loss_pq_class`` (weight 3): per slot, cross-entropy to its matched segment's class (weight
  0.75 x the stop-gradient matched dice) or to void for an unmatched slot (weight 0.25 x the
  stop-gradient share of its mask that lies on void pixels), floors of 1e-5, summed over slots
  and divided by ``N``;
* ``loss_pq_dice`` (weight 3): per matched segment, dice loss ``1 - (2|p.g| + 1) / (|p| + |g| +
  1)`` on the pixels of real segments, weighted by the stop-gradient matched class probability
  (floor 1e-5), summed and multiplied by ``0.75 / N``, so the two PQ terms share deeplab2's
  normalisation;
* ``loss_mask_id`` (weight 0.3): cross-entropy over slots at each pixel of a matched segment,
  to that segment's slot, averaged over those pixels;
* ``loss_instance`` (weight 1), instance discrimination, in one of deeplab2's two forms:
  with ``sample_k > 0`` the pixel-contrastive form (from CMT-DeepLab): ``sample_k`` pixels of real
  segments drawn without replacement with logits ``sample_temperature x log(P / area of the
  pixel's segment)`` (small segments first), each sample's unit feature against every sample's
  (itself included) at temperature 0.3, cross-entropy to the uniform distribution over the
  samples of its own segment, averaged over the samples; with ``sample_k = 0`` the original
  MaX-DeepLab form: each thing pixel's feature against every segment's L2-normalised mean
  feature at temperature 0.3, cross-entropy to its own segment, averaged over thing pixels;
* ``loss_semantic`` (weight 1): cross-entropy of the auxiliary semantic head, void ignored,
  averaged over labelled pixels.

Every term is averaged over the images of the batch; the losses run in float32 (autocast off).
Deep supervision (deeplab2's ``auxiliary_outputs``): the earlier stages get the PQ-style,
mask-ID and instance terms on the final layer's matching and weights, and on the same sampled
pixels; their keys end in ``_<i>``.

Differences from deeplab2: a segment left unmatched because there are more segments than slots
is not supervised (deeplab2 points its pixels' mask-ID target at a padding slot of logit -99999,
a loss of about 1e5, and writes its class onto slot 0); the averages divide by the number of
slots, matched pixels and samples rather than counting non-zero losses (the same up to losses
that are exactly zero); the segments are the dataset's (deeplab2 makes one stuff segment per
class from the semantic map: the same for COCO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.matching import hungarian_match
from ..structures import IGNORE_INDEX
from .set_targets import pad_targets
from .term_weights import TermWeights

__all__ = ["MaXDeepLabCriterion", "MaXDeepLabTargets", "instance_discrimination_loss", "mask_average_instance_loss",
           "sample_pixels_by_inverse_area", "strided_downsample"]


def strided_downsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps ``[..., H, W]`` (any dtype) at ``size = (h, w)`` by taking rows ``floor(i H / h)`` and
    columns ``floor(j W / w)``: the top-left pixel of each output cell (``[..., h, w]``)."""
    hh, ww = maps.shape[-2:]
    rows = torch.div(torch.arange(size[0], device=maps.device) * hh, size[0], rounding_mode="floor")
    cols = torch.div(torch.arange(size[1], device=maps.device) * ww, size[1], rounding_mode="floor")
    return maps.index_select(-2, rows).index_select(-1, cols)


class MaXDeepLabTargets(NamedTuple):
    """A batch's ground truth at the output resolution (``P = h w`` pixels, ``T`` segments).

    Attributes:
        one_hot: float32 ``[B, T, P]``, 1 where the pixel belongs to the segment.
        labels: int64 ``[B, T]``.
        valid: bool ``[B, T]`` real segments with at least one pixel at this resolution.
        thing: bool ``[B, T]`` thing segments (all False without ``is_thing`` in the targets).
        labelled: float32 ``[B, P]``, 1 on non-void pixels (crowd regions are void).
        semantic: int64 ``[B, hs, ws]`` class map at the semantic head's size (or ``None``).
    """

    one_hot: Tensor
    labels: Tensor
    valid: Tensor
    thing: Tensor
    labelled: Tensor
    semantic: Tensor | None


def sample_pixels_by_inverse_area(one_hot: Tensor, valid: Tensor, k: int, temperature: float = 0.6,
                                  generator: torch.Generator | None = None) -> Tensor:
    """Draw ``k`` pixels per image without replacement (Gumbel top-k), small segments first.

    Args:
        one_hot: float ``[B, T, P]`` segment membership.
        valid: bool ``[B, T]`` real segments.
        k: samples per image (at most ``P``).
        temperature: the logits are ``temperature x log(P / area of the pixel's segment)``.
        generator: for the Gumbel noise (on any device; the noise moves to ``one_hot``'s).

    Returns:
        int64 ``[B, k]`` pixel indices; pixels of no segment are drawn only when an image has
        fewer than ``k`` segment pixels.
    """
    b, _, p = one_hot.shape
    member = one_hot * valid[..., None]
    area = (member.sum(-1, keepdim=True) * member).sum(1)  # [B, P]: area of each pixel's segment
    logits = torch.where(area > 0, temperature * torch.log(p / area.clamp(min=1.0)),
                         torch.full_like(area, -99999.0))
    u = torch.rand(logits.shape, generator=generator, device=logits.device if generator is None else generator.device)
    gumbel = -torch.log(-torch.log(u.to(logits.device).clamp(1e-20, 1.0 - 1e-7)))
    return (logits + gumbel).topk(min(k, p), dim=-1).indices


def instance_discrimination_loss(features: Tensor, one_hot: Tensor, valid: Tensor, samples: Tensor,
                                 temperature: float = 0.3) -> Tensor:
    """Pixel-contrastive instance discrimination (deeplab2), per image.

    Args:
        features: unit-norm float ``[B, D, P]`` pixel features.
        one_hot: float ``[B, T, P]`` segment membership; valid: bool ``[B, T]``.
        samples: int64 ``[B, S]`` pixel indices (:func:`sample_pixels_by_inverse_area`).
        temperature: similarity temperature.

    Returns:
        float32 ``[B]``: cross-entropy of each sample's similarities to the uniform distribution
        over the samples of its segment, averaged over the samples that have a segment (0 if none).
    """
    member = (one_hot * valid[..., None]).gather(2, samples[:, None].expand(-1, one_hot.shape[1], -1))  # [B, T, S]
    same = torch.einsum("bts,btr->bsr", member, member)
    target = same / same.sum(-1, keepdim=True).clamp(min=1.0)
    f = features.float().gather(2, samples[:, None].expand(-1, features.shape[1], -1))  # [B, D, S]
    sim = torch.einsum("bds,bdr->bsr", f, f) / temperature
    per_sample = -(target * sim.log_softmax(-1)).sum(-1)  # [B, S]
    counted = (same.sum(-1) > 0).float()
    return (per_sample * counted).sum(-1) / counted.sum(-1).clamp(min=1.0)


def mask_average_instance_loss(features: Tensor, one_hot: Tensor, valid: Tensor, thing: Tensor,
                               temperature: float = 0.3) -> Tensor:
    """The original MaX-DeepLab instance discrimination, per image.

    Args:
        features: unit-norm float ``[B, D, P]`` pixel features.
        one_hot: float ``[B, T, P]`` segment membership; valid: bool ``[B, T]``; thing: bool ``[B, T]``.
        temperature: similarity temperature.

    Returns:
        float32 ``[B]``: at each pixel of a thing segment, cross-entropy of its feature's
        similarities to every real segment's L2-normalised mean feature, to its own segment,
        averaged over those pixels (0 if none).
    """
    f = features.float()
    member = one_hot * valid[..., None]
    area = member.sum(-1, keepdim=True)
    centers = F.normalize(torch.einsum("bdp,btp->btd", f, member) / area.clamp(min=1.0), dim=-1)
    sim = torch.einsum("bdp,btd->btp", f, centers) / temperature
    sim = sim.masked_fill(~valid[..., None], -99999.0)
    own = -(member * sim.log_softmax(1)).sum(1)  # [B, P]; 0 off segments
    weight = (member * thing[..., None]).sum(1)  # 1 on thing pixels
    return (own * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


class MaXDeepLabCriterion(TermWeights, nn.Module):
    """MaX-DeepLab's losses (see the module docstring) for a batch.

    Args:
        num_classes: ``K`` (class logits ``K + 1``, last = void).
        pq_weight, mask_id_weight, instance_weight, semantic_weight: term weights (3, 0.3, 1, 1).
        focal_alpha: weight of matched slots' class term (unmatched: ``1 - focal_alpha``), 0.75.
        instance_temperature: similarity temperature of the instance loss (0.3).
        sample_k: pixels sampled per image by the pixel-contrastive instance loss (4096); 0 = the
            original mask-averaged form (on thing pixels, needs ``is_thing`` in the targets).
        sample_temperature: inverse-area sampling temperature (0.6, deeplab2's default).
        solver: assignment solver, see :func:`lightning_seg.ops.hungarian_match`.

    ``forward(outputs, targets)`` takes the model's ``pred_logits [B,N,K+1]``, ``pred_masks
    [B,N,h,w]``, ``pixel_features [B,D,h,w]``, optional ``semantic_logits [B,K,hs,ws]`` and
    ``aux_outputs``, and per image ``masks`` bool ``[T,Hp,Wp]``, ``labels`` int64 ``[T]``, optional
    ``iscrowd`` bool ``[T]``, ``is_thing`` bool ``[T]`` and ``semantic`` int64 ``[Hp,Wp]`` (void = 255;
    without it the pixels of no segment are void), and an optional ``generator`` for the pixel
    sampling. Every ``aux_outputs`` stage must have the final stage's mask size. Returns
    unweighted float32 scalars; :meth:`weighted` applies the weights.
    """

    def __init__(self, num_classes: int, pq_weight: float = 3.0, mask_id_weight: float = 0.3,
                 instance_weight: float = 1.0, semantic_weight: float = 1.0, focal_alpha: float = 0.75,
                 instance_temperature: float = 0.3, sample_k: int = 4096, sample_temperature: float = 0.6,
                 solver: str = "auto") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MaXDeepLabCriterion: num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"MaXDeepLabCriterion: focal_alpha must be in [0, 1], got {focal_alpha}")
        if sample_k < 0:
            raise ValueError(f"MaXDeepLabCriterion: sample_k must be >= 0, got {sample_k}")
        if instance_temperature <= 0 or sample_temperature <= 0:
            raise ValueError(f"MaXDeepLabCriterion: temperatures must be > 0, got instance_temperature="
                             f"{instance_temperature}, sample_temperature={sample_temperature}")
        self.num_classes = num_classes
        self.focal_alpha = focal_alpha
        self.instance_temperature = instance_temperature
        self.sample_k = sample_k
        self.sample_temperature = sample_temperature
        self.solver = solver
        self.weights = {"loss_pq_class": pq_weight, "loss_pq_dice": pq_weight, "loss_mask_id": mask_id_weight,
                        "loss_instance": instance_weight, "loss_semantic": semantic_weight}
        if not any(self.weights.values()):
            raise ValueError("MaXDeepLabCriterion: the loss weights cannot all be 0")

    def prepare_targets(self, targets: Sequence[Mapping[str, Any]], size: tuple[int, int],
                        semantic_size: tuple[int, int] | None, device: torch.device) -> MaXDeepLabTargets:
        """Ground truth of the batch at the output resolution ``size`` (see :class:`MaXDeepLabTargets`)."""
        kept, crowds, things = [], [], []
        for t in targets:
            crowd = t.get("iscrowd")
            crowd = crowd.bool() if isinstance(crowd, Tensor) and crowd.numel() else None
            keep = None if crowd is None else ~crowd
            kept.append({"masks": t["masks"] if keep is None else t["masks"][keep],
                         "labels": t["labels"] if keep is None else t["labels"][keep],
                         **({"image_id": t["image_id"]} if "image_id" in t else {})})
            crowds.append(None if crowd is None or not crowd.any() else t["masks"][crowd].any(0))
            is_thing = t.get("is_thing")
            things.append(torch.zeros(kept[-1]["labels"].shape[0], dtype=torch.bool) if is_thing is None
                          else (is_thing.bool() if keep is None else is_thing.bool()[keep]))
        padded = pad_targets(kept, self.num_classes, device=device)
        hp, wp = padded.masks.shape[-2:]
        small = strided_downsample(padded.masks, size)  # [B, T, h, w]
        one_hot = small.flatten(2).float()
        valid = padded.valid & (one_hot.sum(-1) > 0)
        one_hot = one_hot * valid[..., None]
        thing = torch.zeros_like(valid)
        for i, th in enumerate(things):
            thing[i, : th.shape[0]] = th.to(device)
        thing &= valid
        semantic = None
        if all("semantic" in t for t in targets):
            full = torch.full((len(targets), hp, wp), IGNORE_INDEX, dtype=torch.long, device=device)
            for i, t in enumerate(targets):
                sem = t["semantic"].to(device)
                h_i, w_i = min(hp, sem.shape[0]), min(wp, sem.shape[1])
                full[i, :h_i, :w_i] = sem[:h_i, :w_i]
                if crowds[i] is not None:
                    c = crowds[i].to(device)[:hp, :wp]
                    full[i, : c.shape[0], : c.shape[1]][c] = IGNORE_INDEX
            labelled = (strided_downsample(full, size) != IGNORE_INDEX).flatten(1).float()
            if semantic_size is not None:
                semantic = strided_downsample(full, semantic_size)
        else:
            labelled = one_hot.amax(1) if one_hot.shape[1] else one_hot.new_zeros(one_hot.shape[0], one_hot.shape[2])
            if semantic_size is not None:
                flat = padded.masks.flatten(2)  # [B, T, Hp*Wp]
                lab = torch.full(flat.shape[::2], IGNORE_INDEX, dtype=torch.long, device=device)
                if flat.shape[1]:
                    owner = padded.labels.gather(1, flat.long().argmax(1))
                    lab = torch.where(flat.any(1), owner, lab)
                semantic = strided_downsample(lab.view(-1, hp, wp), semantic_size)
        return MaXDeepLabTargets(one_hot, padded.labels, valid, thing, labelled, semantic)

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]],
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The losses of the final stage and, suffixed ``_<i>``, of each ``aux_outputs`` stage."""
        for key in ("pred_logits", "pred_masks", "pixel_features"):
            if key not in outputs:
                raise KeyError(f"MaXDeepLabCriterion: outputs have no {key!r} (keys: {sorted(outputs)})")
        with torch.autocast(outputs["pred_masks"].device.type, enabled=False):
            return self._forward(outputs, targets, generator)

    def _forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]],
                 generator: torch.Generator | None) -> dict[str, Tensor]:
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        b, n, h, w = masks.shape
        if logits.shape[:2] != (b, n) or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"MaXDeepLabCriterion: pred_logits must be [B,N,{self.num_classes + 1}] matching "
                             f"pred_masks {tuple(masks.shape)}, got {tuple(logits.shape)}")
        if len(targets) != b:
            raise ValueError(f"MaXDeepLabCriterion: {b} images in outputs but {len(targets)} targets")
        sem_logits = outputs.get("semantic_logits")
        gt = self.prepare_targets(targets, (h, w), None if sem_logits is None else tuple(sem_logits.shape[-2:]),
                                  masks.device)
        state = self._match(logits, masks, gt)
        samples = None
        if self.sample_k > 0:
            samples = sample_pixels_by_inverse_area(gt.one_hot, gt.valid, self.sample_k, self.sample_temperature,
                                                    generator)
        losses = self._stage_losses(outputs, gt, state, samples)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update({f"{k}_{i}": v for k, v in self._stage_losses(aux, gt, state, samples).items()})
        if sem_logits is not None and gt.semantic is not None:
            ce = F.cross_entropy(sem_logits.float(), gt.semantic, ignore_index=IGNORE_INDEX, reduction="none")
            labelled = (gt.semantic != IGNORE_INDEX).flatten(1).float()
            losses["loss_semantic"] = ((ce.flatten(1) * labelled).sum(1) / labelled.sum(1).clamp(min=1.0)).mean()
        return losses

    @torch.no_grad()
    def _match(self, logits: Tensor, masks: Tensor, gt: MaXDeepLabTargets) -> dict[str, Tensor]:
        probs = masks.float().flatten(2).softmax(1)  # [B, N, P]
        dice = self._dice_similarity(gt.one_hot, probs * gt.labelled[:, None])  # [B, T, N]
        cls = logits.float().softmax(-1)[..., :-1]  # [B, N, K]
        class_sim = cls.gather(2, gt.labels[:, None].expand(-1, cls.shape[1], -1)).transpose(1, 2)  # [B, T, N]
        matching = hungarian_match((-(dice * class_sim)).transpose(1, 2), target_valid=gt.valid, solver=self.solver)
        slot = matching.pred_for_target  # [B, T]
        matched = gt.valid & (slot >= 0)
        safe = slot.clamp(min=0)
        dice_t = dice.gather(2, safe[..., None]).squeeze(-1)
        class_t = class_sim.gather(2, safe[..., None]).squeeze(-1)
        # per slot: the matched segment's dice and class, or void with the slot's share on void pixels
        tgt = matching.target_for_pred  # [B, N]
        positive = tgt >= 0
        idx = torch.where(positive, tgt, dice_t.shape[1])  # unmatched slots read a padding column
        slot_dice = F.pad(dice_t, (0, 1)).gather(1, idx)
        void = 1.0 - gt.labelled
        void_ratio = (probs * void[:, None]).sum(-1) / (probs.sum(-1) + 1e-5)
        class_weight = torch.where(positive, self.focal_alpha * slot_dice.clamp(min=1e-5),
                                   (1 - self.focal_alpha) * void_ratio.clamp(min=1e-5))
        class_target = torch.where(positive, F.pad(gt.labels, (0, 1)).gather(1, idx), self.num_classes)
        # per pixel: the slot of its matched segment (-1: none)
        pixel_slot = torch.full(probs.shape[::2], -1, dtype=torch.long, device=probs.device)  # [B, P]
        if gt.one_hot.shape[1]:
            pixel_slot = torch.where(matched[..., None] & (gt.one_hot > 0), safe[..., None], -1).amax(1)
        return {"slot": safe, "matched": matched, "dice_weight": torch.where(matched, class_t.clamp(min=1e-5), 0.0),
                "class_weight": class_weight, "class_target": class_target, "pixel_slot": pixel_slot}

    @staticmethod
    def _dice_similarity(one_hot: Tensor, probs: Tensor) -> Tensor:
        inter = torch.einsum("btp,bnp->btn", one_hot, probs)
        return inter / ((one_hot.sum(-1)[..., None] + probs.sum(-1)[:, None]) / 2 + 1e-5)

    def _stage_losses(self, out: Mapping[str, Tensor], gt: MaXDeepLabTargets, state: Mapping[str, Tensor],
                      samples: Tensor | None) -> dict[str, Tensor]:
        logits, masks = out["pred_logits"].float(), out["pred_masks"].float()
        n = masks.shape[1]
        log_probs = masks.flatten(2).log_softmax(1)  # [B, N, P]
        # PQ-style class term
        ce = F.cross_entropy(logits.transpose(1, 2), state["class_target"], reduction="none")  # [B, N]
        loss_class = (ce * state["class_weight"]).sum(1) / n
        # PQ-style dice term, on the pixels of real segments
        seg_pixels = gt.one_hot.amax(1) if gt.one_hot.shape[1] else gt.labelled.new_zeros(gt.labelled.shape)
        slot_log_probs = log_probs.gather(1, state["slot"][..., None].expand(-1, -1, log_probs.shape[-1]))
        p = slot_log_probs.exp() * seg_pixels[:, None]  # [B, T, P]
        dice_loss = 1.0 - (2 * (p * gt.one_hot).sum(-1) + 1.0) / (p.sum(-1) + gt.one_hot.sum(-1) + 1.0)
        loss_dice = (dice_loss * state["dice_weight"]).sum(1) * (self.focal_alpha / n)
        # mask-ID cross-entropy over slots at the pixels of matched segments
        pix = state["pixel_slot"]
        has = pix >= 0
        nll = -log_probs.gather(1, pix.clamp(min=0)[:, None]).squeeze(1)
        loss_mask_id = (nll * has).sum(1) / has.sum(1).clamp(min=1)
        feats = out["pixel_features"].flatten(2)
        if samples is None:
            loss_instance = mask_average_instance_loss(feats, gt.one_hot, gt.valid, gt.thing, self.instance_temperature)
        else:
            loss_instance = instance_discrimination_loss(feats, gt.one_hot, gt.valid, samples,
                                                         self.instance_temperature)
        return {"loss_pq_class": loss_class.mean(), "loss_pq_dice": loss_dice.mean(),
                "loss_mask_id": loss_mask_id.mean(), "loss_instance": loss_instance.mean()}
