"""``MaskClassificationModule``: MaskFormer / Mask2Former for semantic, instance and panoptic segmentation.

Training: model → :class:`~lightning_seg.losses.SetCriterion` (Hungarian matching per decoder
layer, deep supervision). Prediction: the batched inference ops of :mod:`lightning_seg.ops`
turn ``pred_logits``/``pred_masks`` into the prediction contracts; a panoptic model also
predicts (and by default scores) the instance and semantic kinds from the same outputs, as
Mask2Former reports.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.losses.set_criterion import SetCriterion
from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.ops import instance_inference, panoptic_inference, semantic_inference
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask


class MaskClassificationModule(SegTask):
    """Mask classification (MaskFormer, Mask2Former) for one of the three tasks.

    Model arguments are the task's own, so an ablation is ``--model.num_queries 200``.

    Args:
        num_classes: ``K`` (linked from the data).
        task: what the model learns: ``panoptic`` (every segment; predicts all three kinds),
            ``instance`` (thing segments without crowd; predicts instances) or ``semantic``
            (one segment per class; predicts class maps).
        model: a ``mask_classification`` name of :func:`lightning_seg.models.create_model`:
            ``mask2former`` (masked-attention decoder) or ``maskformer`` (standard DETR
            decoder, FPN pixel decoder, focal + dice loss).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs:
            the backbone (a timm name, or a torchvision ResNet); ``pretrained`` may be a
            local weights file.
        pixel_decoder: ``msdeform`` or ``fpn`` (default: ``msdeform`` for Mask2Former,
            ``fpn`` for MaskFormer).
        conv_dim, mask_dim, enc_layers: pixel decoder width, mask embedding width and
            deformable encoder depth.
        num_queries, hidden_dim, nheads, dim_feedforward, num_decoder_layers, pre_norm:
            transformer decoder.
        class_weight, mask_weight, dice_weight, eos_coef: loss weights (Mask2Former: 2, 5,
            5, 0.1; MaskFormer: 1, 20, 1, 0.1).
        num_points, oversample_ratio, importance_sample_ratio: point sampling of the loss.
        shared_points: draw the loss's random points once per batch and share them across
            decoder layers and the masks of an image (faster, same expected loss), or draw
            them per layer and mask as Mask2Former does (``False``); see
            :class:`lightning_seg.losses.SetCriterion`.
        deep_supervision: supervise every decoder layer's ``aux_outputs``.
        object_mask_threshold, overlap_threshold: panoptic inference thresholds.
        test_topk: instance inference top-k over (query, class) pairs.
        freeze_pixel_decoder: keep the pixel decoder fixed (fine-tuning).
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (``eval_kinds``,
            AdamW 1e-4, weight decay 0.05, backbone ×0.1 by default; poly schedule;
            ``init_from``).
    """

    def __init__(
        self,
        num_classes: int,
        task: Literal["panoptic", "instance", "semantic"] = "panoptic",
        model: str = "mask2former",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        freeze_bn: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        pixel_decoder: Literal["msdeform", "fpn"] | None = None,
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        num_queries: int = 100,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_decoder_layers: int | None = None,
        pre_norm: bool = False,
        class_weight: float | None = None,
        mask_weight: float | None = None,
        dice_weight: float | None = None,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        shared_points: bool = True,
        deep_supervision: bool = True,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk: int = 100,
        freeze_pixel_decoder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        if freeze_pixel_decoder:
            self.freeze_module("pixel_decoder")

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry

        hp = self.hparams
        name = self.architecture = model_entry(hp.model, "mask_classification", key="model.model").name
        common = dict(
            num_classes=self.num_classes, backbone=hp.backbone, backbone_source=hp.backbone_source,
            pretrained=hp.pretrained, frozen_stages=hp.frozen_stages, freeze_bn=hp.freeze_bn,
            backbone_kwargs=hp.backbone_kwargs, conv_dim=hp.conv_dim, mask_dim=hp.mask_dim,
            num_queries=hp.num_queries, hidden_dim=hp.hidden_dim, nheads=hp.nheads,
            dim_feedforward=hp.dim_feedforward, pre_norm=hp.pre_norm,
        )
        if name == "mask2former":
            common.update(pixel_decoder=hp.pixel_decoder or "msdeform", enc_layers=hp.enc_layers,
                          num_decoder_layers=hp.num_decoder_layers or 9)
        else:
            if hp.pixel_decoder not in (None, "fpn"):
                raise ValueError("model.pixel_decoder: MaskFormer uses the FPN pixel decoder")
            common.update(num_decoder_layers=hp.num_decoder_layers or 6)
        self.model = create_model(name, "mask_classification", **common)

    def configure_losses(self) -> None:
        hp = self.hparams
        m2f = self.architecture == "mask2former"
        self.criterion = SetCriterion(
            self.num_classes,
            class_weight=hp.class_weight if hp.class_weight is not None else (2.0 if m2f else 1.0),
            mask_weight=hp.mask_weight if hp.mask_weight is not None else (5.0 if m2f else 20.0),
            dice_weight=hp.dice_weight if hp.dice_weight is not None else (5.0 if m2f else 1.0),
            eos_coef=hp.eos_coef,
            num_points=hp.num_points,
            oversample_ratio=hp.oversample_ratio,
            importance_sample_ratio=hp.importance_sample_ratio,
            losses=("labels", "masks") if m2f else ("labels", "dense_masks"),
            shared_points=hp.shared_points,
        )

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("panoptic", "instance", "semantic") if self.hparams.task == "panoptic" else (self.hparams.task,)

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Model outputs: ``pred_logits [B,Q,K+1]``, ``pred_masks [B,Q,H/4,W/4]``, ``aux_outputs``."""
        return self.model(images)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        outputs = self.model(batch["images"])
        if not self.hparams.deep_supervision:
            outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        targets: list[Any] = list(batch["targets"])
        if self.hparams.task == "instance":  # things only, without crowd regions
            keeps = [t["is_thing"] & ~t["iscrowd"] for t in targets]
            targets = [{"masks": t["masks"][k], "labels": t["labels"][k]} for t, k in zip(targets, keeps)]
        return self.criterion.weighted(self.criterion(outputs, targets))

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        hp = self.hparams
        outputs = self.model(batch["images"])
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        key = "orig_size" if at_original_size else "target_size"
        sizes = dict(padded_size=tuple(batch["images"].shape[-2:]),
                     image_sizes=[tuple(t["image_size"]) for t in batch["targets"]],
                     orig_sizes=[tuple(t[key]) for t in batch["targets"]])
        result: dict[str, list[Any]] = {}
        if "panoptic" in self.eval_kinds:
            result["panoptic"] = panoptic_inference(
                logits, masks, self.thing_classes, object_mask_threshold=hp.object_mask_threshold,
                overlap_threshold=hp.overlap_threshold, **sizes,
            )
        if "instance" in self.eval_kinds:
            result["instance"] = instance_inference(
                logits, masks, topk=hp.test_topk,
                thing_classes=self.thing_classes if hp.task == "panoptic" else None, **sizes,
            )
        if "semantic" in self.eval_kinds:
            result["semantic"] = semantic_inference(logits, masks, **sizes)
        return result
