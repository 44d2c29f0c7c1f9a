"""``ClassicSegmentationModule``: a classic (non-learned) method run like any model.

``lightning-seg validate`` / ``test`` / ``predict`` run a :mod:`lightning_seg.classic` predictor
on the same DataModules and score its unlabelled segments with
:class:`~lightning_seg.metrics.segment_metrics.SegmentMetrics` (Hungarian-matched mIoU and pixel
accuracy, things-vs-stuff IoU, class-agnostic mask AP, covering and parsing covering). The task
has no trainable parameters: ``fit`` stops at once and says so.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.classic.segmenters import ClassicSegmenter, OtsuThresholding
from lightning_seg.metrics.segment_metrics import SegmentMetricGroup, SegmentMetrics
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask


class ClassicSegmentationModule(SegTask):
    """A classic segmentation method as a task with no trainable parameters.

    ``predict`` returns ``{"segments": [int64 [H, W] per image]}`` (``-1``: no segment), at
    each image's target or original size; ``lightning-seg predict`` writes them as id PNGs
    (``segments/<image_id>.png``, id ``+ 1`` encoded as COCO panoptic ids, 0 = none) and
    overlays.

    Args:
        num_classes: ``K`` (linked from the DataModule).
        method: the predictor, e.g. ``lightning_seg.classic.OtsuThresholding`` (default) or
            ``KMeansSegmentation``, ``RegionGrowing``, ``MarkerWatershed`` with their arguments.
        segment_metrics: metric groups of :class:`SegmentMetrics` (default: all that apply).
        min_segment_area: smaller segments are not instances for the class-agnostic AP.
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (``thing_classes``,
            ``ignore_index``, ``metric_average``, ``predict_dir``, ``num_overlays``; the
            optimiser arguments are unused).
    """

    hparams_ignore = ("method",)

    def __init__(
        self,
        num_classes: int,
        method: ClassicSegmenter | None = None,
        segment_metrics: list[SegmentMetricGroup] | None = None,
        min_segment_area: int = 0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("extra_metrics"):
            raise ValueError("model.extra_metrics: a classic method's segments are scored by model.segment_metrics")
        if method is not None and not isinstance(method, ClassicSegmenter):
            raise TypeError(f"model.method must be a lightning_seg.classic predictor, got {type(method).__name__}")
        # a tuple, not the module itself: nn.Module refuses sub-modules before its __init__ ran,
        # and configure_models (called from it) needs the predictor
        self._method_arg = (method,)
        super().__init__(num_classes, **kwargs)

    def configure_models(self) -> None:
        self.model = self._method_arg[0] or OtsuThresholding()
        if any(True for _ in self.model.parameters()):
            raise ValueError(f"model.method {type(self.model).__name__} has parameters; a classic method has none")

    def configure_metrics(self) -> nn.Module:
        hp = self.hparams
        return SegmentMetrics(self.num_classes, self.thing_classes, self.model.num_clusters, self.ignore_index,
                              hp.segment_metrics, hp.min_segment_area, getattr(self.model, "connectivity", 1),
                              hp.metric_average)

    def available_kinds(self) -> tuple[Any, ...]:
        return ("segments",)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise RuntimeError(
                f"{type(self.model).__name__} is a classic method with no trainable parameters: there is nothing "
                "to fit. Run `lightning-seg validate` (or `test`, `predict`) with the same config."
            )

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        raise RuntimeError(f"{type(self.model).__name__} has no trainable parameters and no loss")

    def configure_optimizers(self) -> Any:
        raise RuntimeError(f"{type(self.model).__name__} has no trainable parameters to optimise")

    @torch.no_grad()
    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        """Segment maps int64 ``[H, W]`` per image at its ``target_size`` (or ``orig_size``)."""
        targets = batch["targets"]
        segs = self.model(batch["images"], [tuple(t["image_size"]) for t in targets])
        out = []
        for seg, size in zip(segs, self.output_sizes(batch, at_original_size)):
            if tuple(seg.shape) != size:
                seg = F.interpolate(seg[None, None].float(), size=size, mode="nearest")[0, 0].long()
            out.append(seg)
        return {"segments": out}
