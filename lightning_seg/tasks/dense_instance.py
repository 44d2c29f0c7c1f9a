"""``DenseInstanceModule``: single-stage instance segmentation on the shared task base: SOLO,
decoupled SOLO, SOLOv2 (grid cells) and YOLACT (prototypes).

Trains on the thing instances of the batch (crowd regions are ignored by YOLACT's prior
matching and are not SOLO targets; images without annotations are kept: they train the
background); predicts instances, scored as mask AP (and box AP for YOLACT, which predicts boxes).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.models.dense_instance.settings import SOLOSettings, YOLACTSettings
from lightning_seg.models.rcnn.settings import settings_dict
from lightning_seg.models.rcnn.targets import box_targets_from_batch
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.optimization import Schedule


class DenseInstanceModule(SegTask):
    """SOLO (``model: solo``, decoupled with ``solo.decoupled``), SOLOv2 (``solov2``) and YOLACT
    (``yolact``) for instance segmentation.

    Defaults are the SOLO papers' R50 1x recipe (mmdetection): torchvision ResNet-50 with frozen
    BN and frozen stem + res2, SGD 0.01 with momentum 0.9 and weight decay 1e-4, 500 linear
    warm-up steps, steps at 8/12 and 11/12 of training. YOLACT's recipe (lr 1e-3, its own
    steps) is in ``experiments/coco_instance/yolact_r50.yaml``.

    Args:
        model: a ``dense_instance`` model name (``solo``, ``solov2``, ``yolact``).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet; ``pretrained`` may be a local weights file.
        fpn_channels: the FPN width.
        solo: :class:`~lightning_seg.models.dense_instance.SOLOSettings` fields (SOLO / SOLOv2),
            e.g. ``--model.solo.grid_numbers [20,18,12,8,6]``.
        yolact: :class:`~lightning_seg.models.dense_instance.YOLACTSettings` fields (YOLACT),
            e.g. ``--model.yolact.num_prototypes 16``.
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        model: str = "solov2",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "torchvision",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        solo: SOLOSettings | None = None,
        yolact: YOLACTSettings | None = None,
        optimizer: Literal["adamw", "sgd"] = "sgd",
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        backbone_lr_multiplier: float = 1.0,
        lr_schedule: Schedule = "step",
        lr_milestones: list[float] | None = None,
        warmup_steps: int = 500,
        **kwargs: Any,
    ) -> None:
        # plain dicts in the hyper-parameters, so checkpoints load with weights_only=True
        solo = settings_dict(solo, SOLOSettings, "model.solo")  # type: ignore[assignment]
        yolact = settings_dict(yolact, YOLACTSettings, "model.yolact")  # type: ignore[assignment]
        lr_milestones = lr_milestones if lr_milestones is not None else [8 / 12, 11 / 12]
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_lr_multiplier, lr_schedule=lr_schedule,
                         lr_milestones=lr_milestones, warmup_steps=warmup_steps, **kwargs)

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry
        from lightning_seg.models.dense_instance import YOLACT

        hp = self.hparams
        entry = model_entry(hp.model, "dense_instance", key="model.model")
        self.is_yolact = issubclass(entry.cls, YOLACT)
        settings = dict(yolact=hp.yolact) if self.is_yolact else dict(solo=hp.solo)
        self.model = create_model(
            entry.name, "dense_instance", num_classes=self.num_classes, backbone=hp.backbone,
            backbone_source=hp.backbone_source, pretrained=hp.pretrained, frozen_stages=hp.frozen_stages,
            freeze_bn=hp.freeze_bn, backbone_kwargs=hp.backbone_kwargs, fpn_channels=hp.fpn_channels, **settings,
        )
        self.predicts_boxes = self.model.predicts_boxes

    def configure_losses(self) -> None:
        from lightning_seg.losses import SOLOCriterion, YOLACTCriterion

        s = self.model.settings
        if self.is_yolact:
            self.criterion = YOLACTCriterion(
                self.num_classes, positive_iou=s.positive_iou, negative_iou=s.negative_iou, crowd_iou=s.crowd_iou,
                negpos_ratio=s.negpos_ratio, min_negatives=s.min_negatives, class_loss_weight=s.class_loss_weight,
                box_loss_weight=s.box_loss_weight, mask_loss_weight=s.mask_loss_weight,
                semantic_loss_weight=s.semantic_loss_weight, masks_per_image=s.masks_per_image)
        else:
            self.criterion = SOLOCriterion(
                self.num_classes, s.grid_numbers, s.scale_ranges, pos_scale=s.pos_scale, focal_alpha=s.focal_alpha,
                focal_gamma=s.focal_gamma, category_loss_weight=s.category_loss_weight,
                mask_loss_weight=s.mask_loss_weight, dice_eps=s.dice_eps)

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("instance",)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        t = box_targets_from_batch(batch["targets"], with_masks=True)
        outputs = self.model(batch["images"])
        if self.is_yolact:
            return self.criterion(outputs, t.boxes, t.labels, t.valid, t.masks, t.mask_index, t.crowd_boxes,
                                  t.crowd_valid)
        return self.criterion(outputs, t.boxes, t.labels, t.valid, t.masks, t.mask_index)

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        preds = self.model.postprocess(self.model(batch["images"]), self.image_sizes(batch),
                                       self.output_sizes(batch, at_original_size))
        return {"instance": preds}
