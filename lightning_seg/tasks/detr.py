"""``DETRModule``: DETR's panoptic model on the shared task base.

Trains on every segment of the batch (things and stuff, as DETR's panoptic training) with the
set criterion: matching on class (1), L1 box (5) and GIoU (2) costs, cross-entropy with a
no-object weight of 0.1, L1 + GIoU box losses and, at the last layer, sigmoid focal + dice mask
losses, all normalised by the number of targets averaged over ranks; the decoder's other layers
are supervised by their class and box losses. Predicts panoptic results by DETR's rules
(:func:`~lightning_seg.ops.detr_panoptic_inference`), instances and semantic maps from the same
outputs.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.losses import SetCriterion
from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.ops import instance_inference, semantic_inference
from lightning_seg.ops.detr_panoptic import detr_panoptic_inference
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.optimization import Schedule

_DETECTOR = ("backbone", "input_proj", "encoder", "decoder", "decoder_norm", "query_embed", "class_embed", "bbox_embed")
_MASK_PARTS = ("attention_map", "mask_head")


class DETRModule(SegTask):
    """DETR (``model: detr``) for panoptic segmentation, DETR's recipe by default: AdamW 1e-4 with
    the backbone at 1e-5 and weight decay 1e-4, lr x0.1 at 2/3 of training (clip gradients at 0.1
    in the trainer).

    DETR trains boxes first, then the mask head on the frozen detector: ``train_masks: false``
    (masks neither trained nor supervised) then ``freeze_detector: true`` with
    ``init_from`` the first run's checkpoint; or everything at once (the defaults).

    Args:
        model: a ``detr`` model name (``detr``).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the ResNet.
        hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout, num_queries: the transformer.
        class_weight, bbox_weight, giou_weight, mask_weight, dice_weight, eos_coef: the criterion.
        deep_supervision: class and box losses at every decoder layer.
        train_masks: train (and supervise) the mask head.
        freeze_detector: train only the mask head (DETR's second stage).
        score_threshold: class score of a kept query in panoptic inference (0.85).
        min_segment_area: panoptic segments of at most this many pixels are dropped (4).
        test_topk: (query, class) pairs kept per image by instance inference.
        hf_weights: a local HF ``DetrForSegmentation`` state dict to start from (same sizes).
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        model: str = "detr",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        hidden_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_queries: int = 100,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        mask_weight: float = 1.0,
        dice_weight: float = 1.0,
        eos_coef: float = 0.1,
        deep_supervision: bool = True,
        train_masks: bool = True,
        freeze_detector: bool = False,
        score_threshold: float = 0.85,
        min_segment_area: int = 4,
        test_topk: int = 100,
        hf_weights: str | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        backbone_lr_multiplier: float = 0.1,
        lr_schedule: Schedule = "step",
        lr_milestones: list[float] | None = None,
        warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if freeze_detector and not train_masks:
            raise ValueError("model.freeze_detector: with model.train_masks false nothing would be trained")
        lr_milestones = lr_milestones if lr_milestones is not None else [2 / 3]
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_lr_multiplier, lr_schedule=lr_schedule,
                         lr_milestones=lr_milestones, warmup_steps=warmup_steps, **kwargs)
        for name in (_DETECTOR if freeze_detector else ()) + (() if train_masks else _MASK_PARTS):
            if name not in self._frozen:
                self.freeze_module(name)

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry
        from lightning_seg.models.detr import load_hf_detr_weights

        hp = self.hparams
        entry = model_entry(hp.model, "detr", key="model.model")
        self.model = create_model(
            entry.name, "detr", num_classes=self.num_classes, backbone=hp.backbone, backbone_source=hp.backbone_source,
            pretrained=hp.pretrained, frozen_stages=hp.frozen_stages, freeze_bn=hp.freeze_bn,
            backbone_kwargs=hp.backbone_kwargs, hidden_dim=hp.hidden_dim, nheads=hp.nheads, enc_layers=hp.enc_layers,
            dec_layers=hp.dec_layers, dim_feedforward=hp.dim_feedforward, dropout=hp.dropout,
            num_queries=hp.num_queries, with_masks=True,
        )
        if hp.hf_weights:
            load_hf_detr_weights(self.model, hp.hf_weights)

    def configure_losses(self) -> None:
        hp = self.hparams
        losses = ("labels", "boxes", "dense_masks") if hp.train_masks else ("labels", "boxes")
        self.criterion = SetCriterion(
            self.num_classes, class_weight=hp.class_weight, mask_weight=hp.mask_weight, dice_weight=hp.dice_weight,
            eos_coef=hp.eos_coef, losses=losses, bbox_weight=hp.bbox_weight, giou_weight=hp.giou_weight,
            match_losses=("labels", "boxes"), aux_losses=("labels", "boxes"),
        )

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("panoptic", "instance", "semantic")

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        outputs = self.model(batch["images"], batch["pixel_mask"])
        if not self.hparams.deep_supervision:
            outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        return self.criterion.weighted(self.criterion(outputs, list(batch["targets"])))

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        hp = self.hparams
        outputs = self.model(batch["images"], batch["pixel_mask"])
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        sizes = self.mask_inference_sizes(batch, at_original_size)
        result: dict[str, list[Any]] = {}
        if "panoptic" in self.eval_kinds:
            result["panoptic"] = detr_panoptic_inference(logits, masks, self.thing_classes, **sizes,
                                                         threshold=hp.score_threshold, min_area=hp.min_segment_area)
        if "instance" in self.eval_kinds:
            result["instance"] = instance_inference(logits, masks, topk=hp.test_topk, thing_classes=self.thing_classes,
                                                    **sizes)
        if "semantic" in self.eval_kinds:
            result["semantic"] = semantic_inference(logits, masks, **sizes)
        return result
