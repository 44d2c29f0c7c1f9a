"""``RCNNModule``: two-stage instance segmentation (Mask R-CNN) on the shared task base.

Trains on the thing instances of the batch (crowd regions are neither positive nor negative for
the RPN and the RoI sampling; images without annotations are kept and give a zero mask loss),
predicts instances with boxes, scored as mask AP and box AP.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.models.layers import Norm
from lightning_seg.models.rcnn.settings import (
    RoIHeadsSettings,
    RPNSettings,
    settings_dict,
)
from lightning_seg.models.rcnn.targets import box_targets_from_batch
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.optimization import Schedule


class RCNNModule(SegTask):
    """Mask R-CNN (``model: mask_rcnn``) for instance segmentation.

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
        lr_milestones = lr_milestones if lr_milestones is not None else [2 / 3, 8 / 9]
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_lr_multiplier, lr_schedule=lr_schedule,
                         lr_milestones=lr_milestones, warmup_steps=warmup_steps, **kwargs)

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry
        from lightning_seg.models.rcnn.torchvision_weights import (
            load_torchvision_weights,
        )

        hp = self.hparams
        name = model_entry(hp.model, "rcnn", key="model.model").name
        self.model = create_model(
            name, "rcnn", num_classes=self.num_classes, backbone=hp.backbone, backbone_source=hp.backbone_source,
            pretrained=hp.pretrained, frozen_stages=hp.frozen_stages, freeze_bn=hp.freeze_bn,
            backbone_kwargs=hp.backbone_kwargs, fpn_channels=hp.fpn_channels, fpn_norm=hp.fpn_norm,
            rpn=hp.rpn, roi_heads=hp.roi_heads,
        )
        if hp.torchvision_weights:
            load_torchvision_weights(self.model, hp.torchvision_weights, hp.torchvision_class_ids)

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("instance",)

    @staticmethod
    def image_sizes(batch: Batch) -> Tensor:
        """int64 ``[B, 2]`` ``(H, W)`` of every image before padding."""
        return torch.tensor([tuple(t["image_size"]) for t in batch["targets"]], dtype=torch.int64,
                            device=batch["images"].device)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        targets = box_targets_from_batch(batch["targets"], with_masks=self.model.roi_heads.mask_head is not None)
        return self.model(batch["images"], self.image_sizes(batch), targets)

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        key = "orig_size" if at_original_size else "target_size"
        sizes = self.image_sizes(batch)
        detections = self.model(batch["images"], sizes)
        outputs = [tuple(int(v) for v in t[key]) for t in batch["targets"]]
        return {"instance": self.model.postprocess(detections, sizes, outputs)}
