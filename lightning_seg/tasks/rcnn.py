"""``RCNNModule``: the R-CNN family on the shared task base: Mask R-CNN (instance), Panoptic FPN
and UPSNet (panoptic, with the instances and, for UPSNet, the semantic head's class map).

Trains on the thing instances of the batch (crowd regions are neither positive nor negative for
the RPN and the RoI sampling; images without annotations are kept and give a zero mask loss)
and, for the panoptic models, on the semantic map and the panoptic target; predicts instances
with boxes, scored as mask AP and box AP, and panoptic results scored as PQ.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.models.layers import Norm
from lightning_seg.models.rcnn.settings import (
    PanopticSettings,
    RoIHeadsSettings,
    RPNSettings,
    settings_dict,
)
from lightning_seg.models.rcnn.targets import box_targets_from_batch
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.optimization import Schedule


class RCNNModule(SegTask):
    """Mask R-CNN (``model: mask_rcnn``) for instance segmentation; Panoptic FPN
    (``panoptic_fpn``) and UPSNet (``upsnet``) for panoptic segmentation.

    Defaults are detectron2's R50-FPN recipe: torchvision ResNet-50 with frozen BN and frozen
    stem + res2, SGD 0.02 with momentum 0.9 and weight decay 1e-4, 1000 warm-up steps, steps at
    2/3 and 8/9 of training.

    Args:
        model: an ``rcnn`` model name (``mask_rcnn``).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet; ``pretrained`` may be a local weights file.
        fpn_channels, fpn_norm: the FPN.
        rpn: :class:`~lightning_seg.models.rcnn.settings.RPNSettings` fields, e.g.
            ``--model.rpn.post_nms_topk_train 300``.
        roi_heads: :class:`~lightning_seg.models.rcnn.settings.RoIHeadsSettings` fields, e.g.
            ``--model.roi_heads.batch_size_per_image 64``.
        torchvision_weights: a local torchvision ``maskrcnn_resnet50_fpn`` (or ``_v2``) state dict
            to start from; the architecture arguments must match it.
        torchvision_class_ids: torchvision label of each class (COCO: the category ids, since
            torchvision's COCO models have 91 labels); default labels ``1..K``.
        panoptic: :class:`~lightning_seg.models.rcnn.settings.PanopticSettings` fields of the
            panoptic models (semantic head, task loss weights or ``loss_weighting: uncertainty``,
            fusion and inference thresholds), e.g. ``--model.panoptic.stuff_area_threshold 64``.
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments.
    """

    predicts_boxes = True

    def __init__(
        self,
        num_classes: int,
        model: str = "mask_rcnn",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "torchvision",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        fpn_norm: Norm = "none",
        rpn: RPNSettings | None = None,
        roi_heads: RoIHeadsSettings | None = None,
        torchvision_weights: str | None = None,
        torchvision_class_ids: list[int] | None = None,
        panoptic: PanopticSettings | None = None,
        optimizer: Literal["adamw", "sgd"] = "sgd",
        lr: float = 0.02,
        weight_decay: float = 1e-4,
        backbone_lr_multiplier: float = 1.0,
        lr_schedule: Schedule = "step",
        lr_milestones: list[float] | None = None,
        warmup_steps: int = 1000,
        **kwargs: Any,
    ) -> None:
        # plain dicts in the hyper-parameters, so checkpoints load with weights_only=True
        rpn = settings_dict(rpn, RPNSettings, "model.rpn")  # type: ignore[assignment]
        roi_heads = settings_dict(roi_heads, RoIHeadsSettings, "model.roi_heads")  # type: ignore[assignment]
        panoptic = settings_dict(panoptic, PanopticSettings, "model.panoptic")  # type: ignore[assignment]
        lr_milestones = lr_milestones if lr_milestones is not None else [2 / 3, 8 / 9]
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_lr_multiplier, lr_schedule=lr_schedule,
                         lr_milestones=lr_milestones, warmup_steps=warmup_steps, **kwargs)

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry
        from lightning_seg.models.rcnn.panoptic_fpn import PanopticRCNN
        from lightning_seg.models.rcnn.torchvision_weights import (
            load_torchvision_weights,
        )

        hp = self.hparams
        entry = model_entry(hp.model, "rcnn", key="model.model")
        self.is_panoptic = issubclass(entry.cls, PanopticRCNN)
        extra: dict[str, Any] = {}
        if self.is_panoptic:
            extra = dict(thing_classes=self.thing_classes, panoptic=hp.panoptic)
        self.model = create_model(
            entry.name, "rcnn", num_classes=self.num_classes, backbone=hp.backbone, backbone_source=hp.backbone_source,
            pretrained=hp.pretrained, frozen_stages=hp.frozen_stages, freeze_bn=hp.freeze_bn,
            backbone_kwargs=hp.backbone_kwargs, fpn_channels=hp.fpn_channels, fpn_norm=hp.fpn_norm,
            rpn=hp.rpn, roi_heads=hp.roi_heads, **extra,
        )
        if hp.torchvision_weights:
            if self.is_panoptic:
                raise ValueError("model.torchvision_weights: torchvision's checkpoints are Mask R-CNN; load them "
                                 "into a mask_rcnn model, or start a panoptic model with model.init_from")
            load_torchvision_weights(self.model, hp.torchvision_weights, hp.torchvision_class_ids)

    def configure_losses(self) -> None:
        from lightning_seg.losses import TaskWeighting

        if self.is_panoptic:
            self.task_weighting = TaskWeighting(self.model.task_weights(), self.model.panoptic.loss_weighting)

    def available_kinds(self) -> tuple[Kind, ...]:
        if not self.is_panoptic:
            return ("instance",)
        return tuple(self.model.prediction_kinds)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        if self.is_panoptic:
            targets = self.model.targets_from_batch(batch["targets"])
            terms = self.model(batch["images"], self.image_sizes(batch), targets)
            return self.task_weighting(terms, self.model.loss_tasks(terms))
        targets = box_targets_from_batch(batch["targets"], with_masks=self.model.roi_heads.mask_head is not None)
        return self.model(batch["images"], self.image_sizes(batch), targets)

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        sizes = self.image_sizes(batch)
        outputs = self.output_sizes(batch, at_original_size)
        if self.is_panoptic:
            preds = self.model.postprocess(self.model(batch["images"], sizes), sizes, outputs)
            return {k: preds[k] for k in self.eval_kinds}
        detections = self.model(batch["images"], sizes)
        return {"instance": self.model.postprocess(detections, sizes, outputs)}
