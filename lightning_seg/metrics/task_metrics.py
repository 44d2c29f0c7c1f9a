"""The metrics a task logs, keyed by prediction kind, with the names that reach the logs.

:class:`TaskMetrics` takes a batch of predictions ``{kind: [per-image prediction]}`` (the
contracts of :mod:`lightning_seg.structures`) and the batch's targets, and feeds every metric of
the kinds it was built for:

=========  =================================================================================
kind       logged names
=========  =================================================================================
panoptic   ``PQ SQ RQ`` (all classes), ``PQ_th SQ_th RQ_th`` (things), ``PQ_st SQ_st RQ_st``
semantic   ``mIoU pixel_acc mAcc fwIoU``
instance   ``AP AP50 AP75 APs APm APl`` (masks); with boxes also ``bbox_AP`` ... ``bbox_APl``
=========  =================================================================================

and the optional ``extra`` metrics of those kinds: ``boundary_iou``, ``trimap_accuracy``,
``surface_distance`` (semantic) and ``parsing_covering``, ``parsing_covering_th``,
``parsing_covering_st`` (panoptic), and ``unsupervised``: the protocol of the classic baselines
(:class:`~lightning_seg.metrics.segment_metrics.SegmentMetrics`: ``matched_mIoU``,
``matched_pixel_acc``, ``agnostic_AP``, ``covering``, ``agnostic_PC`` ...) on the model's class
maps (as clusters) and panoptic segments (as unlabelled segments), so that a trained model and
a classic method are scored alike. Every state is a torchmetrics state, so DDP reduces it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.metrics.boundary import (
    AverageSurfaceDistance,
    BoundaryIoU,
    TrimapAccuracy,
)
from lightning_seg.metrics.mask_ap import MaskAP
from lightning_seg.metrics.panoptic_quality import PanopticQuality
from lightning_seg.metrics.parsing_covering import ParsingCovering
from lightning_seg.metrics.segment_metrics import SegmentMetrics
from lightning_seg.metrics.semantic import SemanticSegmentationMetrics

Kind = Literal["panoptic", "instance", "semantic"]
KINDS: tuple[Kind, ...] = ("panoptic", "instance", "semantic")

ExtraMetric = Literal["boundary_iou", "trimap_accuracy", "surface_distance", "parsing_covering", "unsupervised"]
EXTRA_METRIC_KIND: dict[str, Kind] = {
    "boundary_iou": "semantic",
    "trimap_accuracy": "semantic",
    "surface_distance": "semantic",
    "parsing_covering": "panoptic",
    "unsupervised": "semantic",  # or panoptic: either gives it class maps, panoptic its segments
}
"""The prediction kind each extra metric scores."""

_PQ_NAMES = {"pq": "PQ", "sq": "SQ", "rq": "RQ"}
_AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class TaskMetrics(nn.Module):
    """Validation / test metrics of one task.

    Args:
        kinds: the prediction kinds scored (each must be produced by the task's ``predict``).
        num_classes: ``K``.
        thing_classes: contiguous ids of the thing classes (PQ things/stuff split; instance
            ground truth is the thing segments).
        ignore_index: void value of the semantic targets.
        extra: extra metrics (see the module docstring); each needs its kind in ``kinds``.
        box_ap: also score instance boxes (``bbox_*``): the predictions' ``boxes`` when they
            carry them.
        semantic_average: ``present`` or ``all`` (see :class:`SemanticSegmentationMetrics`).
        key: config key of ``kinds``/``extra`` named in errors.
    """

    def __init__(
        self,
        kinds: Sequence[Kind],
        num_classes: int,
        thing_classes: Sequence[int],
        ignore_index: int = 255,
        extra: Sequence[ExtraMetric] = (),
        box_ap: bool = False,
        semantic_average: Literal["present", "all"] = "present",
        key: str = "model",
    ) -> None:
        super().__init__()
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"{key}.eval_kinds: {list(kinds)} must be a non-empty subset of {list(KINDS)}")
        is_thing = [c in set(thing_classes) for c in range(num_classes)]
        self.kinds = tuple(kinds)
        self.thing_classes = list(thing_classes)
        m = nn.ModuleDict()
        if "panoptic" in kinds:
            m["panoptic"] = PanopticQuality(is_thing)
        if "semantic" in kinds:
            m["semantic"] = SemanticSegmentationMetrics(num_classes, ignore_index, average=semantic_average)
        if "instance" in kinds:
            m["instance"] = MaskAP(num_classes, iou_types=("segm", "bbox") if box_ap else ("segm",))
        for name in extra:
            kind = EXTRA_METRIC_KIND.get(name)
            if kind is None:
                raise ValueError(f"{key}.extra_metrics: unknown metric {name!r}; "
                                 f"choose from {sorted(EXTRA_METRIC_KIND)}")
            if kind not in kinds and not (name == "unsupervised" and "panoptic" in kinds):
                raise ValueError(f"{key}.extra_metrics: {name!r} scores {kind} predictions, which "
                                 f"{key}.eval_kinds={list(kinds)} does not include")
            m[name] = {
                "boundary_iou": lambda: BoundaryIoU(num_classes, ignore_index=ignore_index),
                "trimap_accuracy": lambda: TrimapAccuracy(ignore_index=ignore_index),
                "surface_distance": lambda: AverageSurfaceDistance(num_classes, ignore_index=ignore_index),
                "parsing_covering": lambda: ParsingCovering(is_thing),
                "unsupervised": lambda: SegmentMetrics(num_classes, thing_classes, num_classes, ignore_index,
                                                       ("matched", "agnostic_ap", "covering"),
                                                       average=semantic_average, key=key),
            }[name]()
        self.metrics = m

    def update(self, preds: Mapping[str, Sequence[Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            preds: per kind one prediction per image, at the targets' ``target_size``:
                ``semantic`` int64 ``[H, W]``, ``instance`` dicts (``masks`` bool ``[M, H, W]``,
                ``labels``, ``scores``, optional ``boxes``), ``panoptic`` dicts
                (``panoptic_seg`` int32 ``[H, W]``, ``segments_info``).
            targets: the batch's targets (``masks`` bool ``[N, Ht, Wt]`` padded, ``labels``,
                ``iscrowd``, ``is_thing``, ``semantic`` int64 ``[Ht, Wt]``, ``target_size``).
        """
        missing = [k for k in self.kinds if k not in preds]
        if missing:
            raise KeyError(f"the task's predict() returned {sorted(preds)}, but the metrics need {missing}")
        if "semantic" in self.kinds:
            self._update_semantic(preds["semantic"], targets)
        if "panoptic" in self.kinds:
            self.metrics["panoptic"].update(preds["panoptic"], targets)
            if "parsing_covering" in self.metrics:
                self.metrics["parsing_covering"].update(preds["panoptic"], targets)
        if "instance" in self.kinds:
            self.metrics["instance"].update(preds["instance"], _thing_targets(targets))
        if "unsupervised" in self.metrics:
            self.metrics["unsupervised"].update(_as_unlabelled(preds), targets)

    def _update_semantic(self, preds: Sequence[Tensor], targets: Sequence[Mapping[str, Any]]) -> None:
        gts = [t["semantic"][: t["target_size"][0], : t["target_size"][1]] for t in targets]
        # one update per batch when the sizes agree (the usual case), else one per image
        if len({tuple(g.shape) for g in gts}) == 1 and all(p.shape == g.shape for p, g in zip(preds, gts)):
            groups = [(torch.stack(list(preds)), torch.stack(gts))]
        else:
            groups = [(p[None], g[None]) for p, g in zip(preds, gts)]
        for name in ("semantic", "boundary_iou", "trimap_accuracy", "surface_distance"):
            if name in self.metrics:
                for p, g in groups:
                    self.metrics[name].update(p, g)

    def compute(self) -> dict[str, Tensor]:
        """Scalar values by logged name (see the module docstring)."""
        out: dict[str, Tensor] = {}
        for name, metric in self.metrics.items():
            r = metric.compute()
            if name == "panoptic":
                for suffix, tag in (("", ""), ("_things", "_th"), ("_stuff", "_st")):
                    out.update({f"{v}{tag}": r[f"{k}{suffix}"] for k, v in _PQ_NAMES.items()})
            elif name == "semantic":
                out.update({k: r[k] for k in ("mIoU", "pixel_acc", "mAcc", "fwIoU")})
            elif name == "instance":
                for prefix in ("", "bbox_") if "bbox" in metric.iou_types else ("",):
                    out.update({prefix + k: r[prefix + k] for k in _AP_NAMES})
            elif name == "boundary_iou":
                out[name] = r["biou"]
            elif name == "trimap_accuracy":
                out[name] = r
            elif name == "surface_distance":
                out[name] = r["assd"]
            elif name == "unsupervised":
                out.update(r)
            elif name == "parsing_covering":
                out.update({name: r["pc"], f"{name}_th": r["pc_things"], f"{name}_st": r["pc_stuff"]})
        return out

    def reset(self) -> None:
        """Reset every metric (at the end of an epoch)."""
        for metric in self.metrics.values():
            metric.reset()


def _thing_targets(targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Instance ground truth: the thing segments, cropped to the unpadded size, crowd kept."""
    out = []
    for t in targets:
        h, w = t["target_size"]
        keep = t["is_thing"]
        out.append({"masks": t["masks"][keep][:, :h, :w], "labels": t["labels"][keep], "iscrowd": t["iscrowd"][keep]})
    return out


def _as_unlabelled(preds: Mapping[str, Sequence[Any]]) -> dict[str, list[Tensor]]:
    """A supervised model's predictions as unlabelled maps (ids ``-1`` where void): the class
    maps as clusters, the panoptic segments (or, without them, the class maps) as segments."""
    if "panoptic" in preds:
        segments, categories = [], []
        for p in preds["panoptic"]:
            seg = p["panoptic_seg"].long()
            ids = torch.tensor([int(s["id"]) for s in p["segments_info"]], dtype=torch.long, device=seg.device)
            cats = torch.tensor([int(s["category_id"]) for s in p["segments_info"]], dtype=torch.long, device=seg.device)
            if not len(ids):  # nothing predicted
                segments.append(torch.full_like(seg, -1))
                categories.append(torch.full_like(seg, -1))
                continue
            order = ids.argsort()
            pos = torch.searchsorted(ids[order], seg).clamp(max=len(ids) - 1)
            found = ids[order][pos] == seg
            index = order[pos]
            segments.append(torch.where(found, index, -1))
            categories.append(torch.where(found, cats[index], -1))
    clusters = list(preds["semantic"]) if "semantic" in preds else categories
    return {"segments": segments if "panoptic" in preds else clusters, "clusters": clusters}
