"""Panoptic FPN's heuristic fusion of instance masks and a semantic map.

Instances are pasted in decreasing score order, each only where nothing is pasted yet, and
skipped when more than ``overlap_threshold`` of its mask is already covered; pasting stops at
the first score below ``instance_score_threshold``. The remaining pixels take their stuff
class from the semantic map, one segment per class, dropped when smaller than
``stuff_area_threshold`` pixels. Pixels whose semantic class is a thing class (detectron2's
catch-all "things" label generalised) or void stay 0.

The pasting order is inherently sequential; it runs as tensor operations on the device with
no host synchronisation inside the loop, and ``segments_info`` is copied to the host once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..structures import InstancePrediction, PanopticPrediction, SegmentInfo
from .mask_inference import thing_mask

__all__ = ["panoptic_fpn_fusion"]


@torch.no_grad()
def panoptic_fpn_fusion(
    instances: Sequence[InstancePrediction],
    semantics: Sequence[torch.Tensor],
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool],
    num_classes: int,
    overlap_threshold: float = 0.5,
    stuff_area_threshold: int = 4096,
    instance_score_threshold: float = 0.5,
) -> list[PanopticPrediction]:
    """Fuse per-image instance predictions with semantic class maps into panoptic results.

    Args:
        instances: ``B`` :class:`InstancePrediction` (``masks`` bool ``[M, H, W]``, ``labels``
            int64 ``[M]``, ``scores`` float ``[M]``).
        semantics: ``B`` int64 ``[H, W]`` class maps (values outside ``[0, K)`` are void).
        thing_classes: contiguous thing ids or a bool ``[K]`` vector.
        num_classes: ``K``.
        overlap_threshold: maximum covered fraction of an instance mask to still paste it.
        stuff_area_threshold: minimum pixels of a stuff segment.
        instance_score_threshold: instances scoring below it are not pasted.

    Returns:
        ``B`` :class:`PanopticPrediction`; thing segments first (score order, ids from 1),
        then stuff segments in class order with ``score`` 1.0.
    """
    if len(instances) != len(semantics):
        raise ValueError(
            f"{len(instances)} instance predictions but {len(semantics)} semantic maps"
        )
    rows = []
    maps = []
    for i, (inst, sem) in enumerate(zip(instances, semantics)):
        dev = sem.device
        masks = inst["masks"].to(dev)
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(sem.shape):
            raise ValueError(
                f"image {i}: instance masks {tuple(masks.shape)} do not match semantic map "
                f"{tuple(sem.shape)}"
            )
        is_thing = thing_mask(thing_classes, num_classes, dev)
        scores = inst["scores"].to(dev).float()
        labels = inst["labels"].to(dev)
        order = torch.sort(scores, descending=True, stable=True)[1]
        masks, scores, labels = masks[order], scores[order], labels[order]
        pan = torch.zeros(sem.shape, dtype=torch.int32, device=dev)
        next_id = torch.ones((), dtype=torch.int32, device=dev)
        passed = torch.ones((), dtype=torch.bool, device=dev)
        seg_id = torch.zeros(order.shape[0], dtype=torch.int32, device=dev)
        for rank in range(order.shape[0]):
            m = masks[rank]
            area = m.sum()
            covered = (m & (pan > 0)).sum()
            passed = passed & (scores[rank] >= instance_score_threshold)
            accept = passed & (area > 0) & (covered <= overlap_threshold * area)
            pan = torch.where(m & (pan == 0) & accept, next_id, pan)
            seg_id[rank] = torch.where(accept, next_id, torch.zeros_like(next_id))
            next_id = next_id + accept.int()
        k = num_classes
        free = (pan == 0) & (sem >= 0) & (sem < k)
        cls = torch.where(free, sem, torch.full_like(sem, k))
        area = torch.bincount(cls.flatten(), minlength=k + 1)[:k]
        stuff_ok = (area >= stuff_area_threshold) & (area > 0) & ~is_thing
        stuff_id = torch.cumsum(stuff_ok.int(), 0).int() - 1 + next_id
        lookup = torch.where(stuff_ok, stuff_id, torch.zeros_like(stuff_id))
        lookup = torch.cat([lookup, stuff_id.new_zeros(1)])
        pan = torch.where(free, lookup[cls], pan)
        maps.append(pan)
        n = order.shape[0]
        f64 = {"dtype": torch.float64, "device": dev}
        thing_rows = torch.stack(
            [torch.full((n,), float(i), **f64), seg_id.double(), labels.double(),
             torch.ones(n, **f64), scores.double(), (seg_id > 0).double()], dim=1
        )
        ks = torch.arange(k, device=dev)
        stuff_rows = torch.stack(
            [torch.full((k,), float(i), **f64), stuff_id.double(), ks.double(),
             torch.zeros(k, **f64), torch.ones(k, **f64), stuff_ok.double()], dim=1
        )
        rows.append(torch.cat([thing_rows, stuff_rows]).to(semantics[0].device))
    infos: list[list[SegmentInfo]] = [[] for _ in instances]
    if rows:
        # Rows carry a keep flag so that filtering happens after the single copy to the host.
        for img, sid, cat, th, s, ok in torch.cat(rows).cpu().tolist():
            if not ok:
                continue
            infos[int(img)].append(
                SegmentInfo(id=int(sid), category_id=int(cat), isthing=bool(th), score=float(s))
            )
    return [PanopticPrediction(panoptic_seg=p, segments_info=inf) for p, inf in zip(maps, infos)]
