"""The metrics of unlabelled segments (the classic baselines), with the names that reach the logs.

Unsupervised segments have no classes, so they are scored as the unsupervised-segmentation
literature scores them:

=================  ===========================================================================
group              logged names
=================  ===========================================================================
``matched``        ``matched_mIoU matched_pixel_acc matched_mAcc``: clusters shared by all
                   images given classes one-to-one (Hungarian over the split,
                   :class:`~lightning_seg.metrics.cluster_matching.ClusterMatchedIoU`), then
                   the semantic metrics; for per-image segments (watershed basins) instead
                   ``majority_mIoU majority_pixel_acc majority_mAcc``: every segment takes its
                   majority class, an oracle upper bound that rewards over-segmentation
``things``         ``things_IoU things_stuff_mIoU``: a two-cluster output (Otsu foreground /
                   background) matched one-to-one to things vs stuff over the split; the IoU
                   of the side matched to things, and the mean of both sides
``agnostic_ap``    ``agnostic_AP agnostic_AP50 agnostic_AP75``: the connected segments as
                   class-agnostic instances against every ground-truth segment (things and
                   stuff; crowd as crowd), COCO mask AP; unranked segments are scored by their
                   share of the image, so larger ones come first
``covering``       ``covering agnostic_PC agnostic_PC_th agnostic_PC_st``: each ground-truth
                   segment's best IoU with any segment, area-weighted over all segments
                   with every image weighing the same (segmentation covering, Arbelaez et
                   al.) or per class then averaged
                   (DeepLab's parsing covering with class-agnostic matching), crowd void
=================  ===========================================================================

All states are torchmetrics states, so DDP reduces them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_seg.metrics.cluster_matching import ClusterMatchedIoU
from lightning_seg.metrics.mask_ap import MaskAP
from lightning_seg.metrics.parsing_covering import ParsingCovering

SegmentMetricGroup = Literal["matched", "things", "agnostic_ap", "covering"]
SEGMENT_METRIC_GROUPS: tuple[SegmentMetricGroup, ...] = ("matched", "things", "agnostic_ap", "covering")


def connected_segments(segments: Tensor, connectivity: int = 1) -> Tensor:
    """Every connected region of equal id its own segment: int64 ``[H, W]`` (``-1`` none) ->
    int64 ``[H, W]`` ids ``1..N`` in raster order of first pixel, 0 none."""
    from skimage.measure import label

    regions = label(segments.cpu().numpy() + 1, background=0, connectivity=connectivity)
    return torch.from_numpy(regions.astype(np.int64)).to(segments.device)


def segments_as_instances(regions: Tensor, max_segments: int = 100, min_area: int = 0) -> dict[str, Tensor]:
    """Class-agnostic instance prediction of a region map (:func:`connected_segments`).

    Args:
        regions: int64 ``[H, W]`` ids ``1..N``, 0 none.
        max_segments: keep the largest ones (COCO AP reads the top 100 per image).
        min_area: drop smaller regions (pixels).

    Returns:
        ``masks`` bool ``[M, H, W]``, ``labels`` int64 ``[M]`` (zeros), ``scores`` float32
        ``[M]`` (area / image area), largest first.
    """
    h, w = regions.shape
    area = torch.bincount(regions.flatten(), minlength=1)[1:]
    ids = torch.nonzero(area >= max(min_area, 1)).flatten() + 1
    order = area[ids - 1].argsort(descending=True, stable=True)[:max_segments]
    ids = ids[order]
    masks = regions[None] == ids[:, None, None]
    scores = (area[ids - 1].float() / float(h * w)).to(torch.float32)
    return {"masks": masks, "labels": torch.zeros(len(ids), dtype=torch.int64, device=regions.device),
            "scores": scores}


class SegmentMetrics(nn.Module):
    """Validation / test metrics of a task whose predictions are unlabelled segments.

    Args:
        num_classes: ``K``.
        thing_classes: contiguous ids of the thing classes.
        num_clusters: ids shared by all images (see :class:`ClusterMatchedIoU`), or None.
        ignore_index: void value of the semantic targets.
        groups: the metric groups (module docstring); default: all that apply (``things``
            needs ``num_clusters == 2`` and both things and stuff classes).
        min_segment_area: segments smaller than this are not instances in ``agnostic_ap``.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours): what makes a segment connected
            for ``agnostic_ap`` and ``covering`` (the method's own, so a region it grew in 8
            directions stays one).
        average: ``present`` or ``all`` class means.
        key: config key named in errors.
    """

    def __init__(
        self,
        num_classes: int,
        thing_classes: Sequence[int],
        num_clusters: int | None,
        ignore_index: int = 255,
        groups: Sequence[SegmentMetricGroup] | None = None,
        min_segment_area: int = 0,
        connectivity: int = 1,
        average: Literal["present", "all"] = "present",
        key: str = "model",
    ) -> None:
        super().__init__()
        things = set(thing_classes)
        binary = num_clusters == 2 and 0 < len(things) < num_classes
        if groups is None:
            groups = [g for g in SEGMENT_METRIC_GROUPS if g != "things" or binary]
        unknown = [g for g in groups if g not in SEGMENT_METRIC_GROUPS]
        if unknown or not groups:
            raise ValueError(f"{key}.segment_metrics: {list(groups)} must be a non-empty subset of "
                             f"{list(SEGMENT_METRIC_GROUPS)}")
        if "things" in groups and not binary:
            raise ValueError(f"{key}.segment_metrics: 'things' scores a two-cluster output (num_clusters="
                             f"{num_clusters}) against things and stuff (the dataset has {len(things)} thing "
                             f"classes of {num_classes})")
        self.groups = tuple(groups)
        self.ignore_index = ignore_index
        self.min_segment_area = min_segment_area
        self.connectivity = connectivity
        self.register_buffer("thing_of_class", torch.tensor([c in things for c in range(num_classes)]),
                             persistent=False)
        m = nn.ModuleDict()
        if "matched" in groups:
            m["matched"] = ClusterMatchedIoU(num_classes, num_clusters, ignore_index, average)
        if "things" in groups:
            m["things"] = ClusterMatchedIoU(2, 2, ignore_index, "all")
        if "agnostic_ap" in groups:
            m["agnostic_ap"] = MaskAP(1)
        if "covering" in groups:
            m["covering"] = ParsingCovering(self.thing_of_class.tolist(), class_agnostic=True)
        self.metrics = m

    def update(self, preds: Mapping[str, Sequence[Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            preds: ``{"segments": [int64 [H, W] per image]}`` at the targets' ``target_size``
                (``-1``: no segment), and optionally ``"clusters"`` (maps of the same form) for
                the ``matched`` / ``things`` groups instead of the segments (a supervised
                model's class maps beside its panoptic segments).
            targets: the batch's targets (:class:`~lightning_seg.structures.Target`).
        """
        if "segments" not in preds:
            raise KeyError(f"the task's predict() returned {sorted(preds)}, but the segment metrics need 'segments'")
        segs = list(preds["segments"])
        sizes = [tuple(int(v) for v in t["target_size"]) for t in targets]
        for i, (s, size) in enumerate(zip(segs, sizes)):
            if tuple(s.shape) != size:
                raise ValueError(f"image {targets[i]['image_id']}: segments are {tuple(s.shape)}, the target {size}")
        semantic = [t["semantic"][:h, :w] for t, (h, w) in zip(targets, sizes)]
        clusters = list(preds.get("clusters", segs))
        if "matched" in self.metrics:
            self.metrics["matched"].update(clusters, semantic)
        if "things" in self.metrics:
            flags = self.thing_of_class.to(semantic[0].device) if semantic else self.thing_of_class
            binary = [torch.where((g >= 0) & (g < len(flags)), flags[g.clamp(0, len(flags) - 1)].long(),
                                  self.ignore_index) for g in semantic]
            self.metrics["things"].update(clusters, binary)
        if "agnostic_ap" not in self.metrics and "covering" not in self.metrics:
            return
        regions = [connected_segments(s, self.connectivity) for s in segs]
        if "agnostic_ap" in self.metrics:
            inst = [segments_as_instances(r, self.metrics["agnostic_ap"].max_detections, self.min_segment_area)
                    for r in regions]
            gts = [{"masks": t["masks"][:, :h, :w], "labels": torch.zeros_like(t["labels"]), "iscrowd": t["iscrowd"]}
                   for t, (h, w) in zip(targets, sizes)]
            self.metrics["agnostic_ap"].update(inst, gts)
        if "covering" in self.metrics:
            pans = [{"panoptic_seg": r.to(torch.int32),
                     "segments_info": [{"id": j, "category_id": 0} for j in range(1, int(r.max()) + 1)]}
                    for r in regions]
            self.metrics["covering"].update(pans, list(targets))

    def compute(self) -> dict[str, Tensor]:
        """Scalar values by logged name (see the module docstring)."""
        out: dict[str, Tensor] = {}
        for name, metric in self.metrics.items():
            r = metric.compute()
            if name == "matched":
                prefix = "matched" if metric.num_clusters is not None else "majority"
                out.update({f"{prefix}_{k}": r[k] for k in ("mIoU", "pixel_acc", "mAcc")})
            elif name == "things":
                out["things_IoU"] = r["per_class_iou"][1].nan_to_num(0.0)
                out["things_stuff_mIoU"] = r["mIoU"]
            elif name == "agnostic_ap":
                out.update({f"agnostic_{k}": r[k] for k in ("AP", "AP50", "AP75")})
            elif name == "covering":
                out.update({"covering": r["covering"], "agnostic_PC": r["pc"], "agnostic_PC_th": r["pc_things"],
                            "agnostic_PC_st": r["pc_stuff"]})
        return out

    def reset(self) -> None:
        """Reset every metric (at the end of an epoch)."""
        for metric in self.metrics.values():
            metric.reset()
