"""``MaskClassificationModule``: MaskFormer / Mask2Former for semantic, instance and panoptic segmentation.

Loss: :class:`~lightning_seg.losses.SetCriterion` with deep supervision. Predictions: the batched
inference ops of :mod:`lightning_seg.ops`; a panoptic model also predicts (and by default
scores) the instance and semantic kinds from the same outputs, as Mask2Former reports.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.losses.set_criterion import SetCriterion
from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.ops import instance_inference, panoptic_inference, semantic_inference
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask

_MODEL_ARGS = ("backbone", "backbone_source", "pretrained", "frozen_stages", "freeze_bn", "backbone_kwargs", "conv_dim",
               "mask_dim", "num_queries", "hidden_dim", "nheads", "dim_feedforward", "pre_norm")
# the papers' settings where the arguments say None
_DEFAULTS: dict[str, dict[str, Any]] = {
    "mask2former": dict(num_decoder_layers=9, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                        losses=("labels", "masks")),
    "maskformer": dict(num_decoder_layers=6, class_weight=1.0, mask_weight=20.0, dice_weight=1.0,
                       losses=("labels", "dense_masks")),
}


class MaskClassificationModule(SegTask):
    """Mask classification (MaskFormer, Mask2Former) for one of the three tasks.

    Model arguments are the task's own, so an ablation is ``--model.num_queries 200``.

    Args:
        task: what the model learns: ``panoptic`` (every segment; predicts all three kinds),
            ``instance`` (things without crowd; predicts instances) or ``semantic`` (one segment
            per class; predicts class maps).
        model: a ``mask_classification`` model name: ``mask2former`` (masked-attention decoder,
            BCE + dice on points) or ``maskformer`` (DETR decoder, FPN pixel decoder, focal + dice).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: a timm
            name or a torchvision ResNet; ``pretrained`` may be a local weights file.
        pixel_decoder, conv_dim, mask_dim, enc_layers: ``msdeform`` (Mask2Former's default) or
            ``fpn``, its width, the mask embedding width, the deformable encoder depth.
        num_queries, hidden_dim, nheads, dim_feedforward, num_decoder_layers, pre_norm: decoder.
        class_weight, mask_weight, dice_weight, eos_coef: loss weights (None: Mask2Former's 2, 5,
            5 or MaskFormer's 1, 20, 1; no-object 0.1).
        num_points, oversample_ratio, importance_sample_ratio, shared_points: the loss's point
            sampling (see :class:`lightning_seg.losses.set_terms.PointMasksTerm`).
        deep_supervision: supervise every decoder layer's ``aux_outputs``.
        object_mask_threshold, overlap_threshold, test_topk: inference thresholds and top-k.
        freeze_pixel_decoder: keep the pixel decoder fixed (fine-tuning).
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (``num_classes``,
            ``eval_kinds``, AdamW 1e-4, weight decay 0.05, backbone x0.1; ``init_from``, ...).
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
        kwargs = {k: hp[k] for k in _MODEL_ARGS}
        if name == "mask2former":
            kwargs.update(pixel_decoder=hp.pixel_decoder or "msdeform", enc_layers=hp.enc_layers)
        elif hp.pixel_decoder not in (None, "fpn"):
            raise ValueError("model.pixel_decoder: MaskFormer uses the FPN pixel decoder")
        kwargs["num_decoder_layers"] = hp.num_decoder_layers or _DEFAULTS[name]["num_decoder_layers"]
        self.model = create_model(name, "mask_classification", num_classes=self.num_classes, **kwargs)

    def configure_losses(self) -> None:
        hp, defaults = self.hparams, _DEFAULTS[self.architecture]
        weights = {k: defaults[k] if hp[k] is None else hp[k] for k in ("class_weight", "mask_weight", "dice_weight")}
        self.criterion = SetCriterion(
            self.num_classes, **weights, eos_coef=hp.eos_coef, num_points=hp.num_points,
            oversample_ratio=hp.oversample_ratio, importance_sample_ratio=hp.importance_sample_ratio,
            losses=defaults["losses"], shared_points=hp.shared_points,
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
        sizes = self.mask_inference_sizes(batch, at_original_size)
        result: dict[str, list[Any]] = {}
        if "panoptic" in self.eval_kinds:
            result["panoptic"] = panoptic_inference(logits, masks, self.thing_classes, **sizes,
                                                    object_mask_threshold=hp.object_mask_threshold,
                                                    overlap_threshold=hp.overlap_threshold)
        if "instance" in self.eval_kinds:
            things = self.thing_classes if hp.task == "panoptic" else None
            result["instance"] = instance_inference(logits, masks, topk=hp.test_topk, thing_classes=things, **sizes)
        if "semantic" in self.eval_kinds:
            result["semantic"] = semantic_inference(logits, masks, **sizes)
        return result
