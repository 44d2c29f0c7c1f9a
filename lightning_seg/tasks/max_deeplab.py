"""``MaXDeepLabModule``: MaX-DeepLab's panoptic mask transformer on the shared task base.

Loss: :class:`~lightning_seg.losses.max_deeplab_loss.MaXDeepLabCriterion` (PQ-style loss,
mask-ID cross-entropy, instance discrimination, auxiliary semantic cross-entropy, with deep
supervision of the decoder stages). Predictions: panoptic by MaX-DeepLab's pixel-wise rules
(:func:`~lightning_seg.ops.max_deeplab_inference.max_deeplab_panoptic_inference`) and semantic
maps from the same outputs.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_seg.losses.max_deeplab_loss import MaXDeepLabCriterion
from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.ops.max_deeplab_inference import (
    max_deeplab_panoptic_inference,
    max_deeplab_semantic_inference,
)
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.optimization import Schedule

_MODEL_ARGS = ("backbone", "backbone_source", "pretrained", "frozen_stages", "freeze_bn", "backbone_kwargs",
               "output_stride", "num_slots", "memory_dim", "pixel_dims", "encoder_blocks", "decoder_blocks",
               "num_heads", "dim_feedforward", "embed_dim", "head_channels", "dropout")


class MaXDeepLabModule(SegTask):
    """MaX-DeepLab (``model: max_deeplab``) for panoptic segmentation; deeplab2's recipe by default:
    Adam(W) at 1e-3 without weight decay, backbone x0.1, poly schedule with warm-up.

    Args:
        model: a ``max_deeplab`` model name (``max_deeplab``).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs,
            output_stride: the backbone (features at strides 4, 8, 16 are used).
        num_slots, memory_dim, pixel_dims, encoder_blocks, decoder_blocks, num_heads,
            dim_feedforward, embed_dim, head_channels, dropout: the dual-path transformer and
            heads (see :class:`~lightning_seg.models.mask_classification.max_deeplab.MaXDeepLab`).
        pq_weight, mask_id_weight, instance_weight, semantic_weight: loss weights (3, 0.3, 1, 1).
        instance_temperature, sample_k, sample_temperature: the instance-discrimination loss
            (``sample_k`` pixels sampled by inverse segment area; 0 = the original mask-averaged form).
        deep_supervision: supervise the earlier decoder stages too.
        class_threshold, pixel_threshold, thing_area, stuff_area: inference (0.7, 0.4, 100, 1600).
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        model: str = "max_deeplab",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        freeze_bn: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        output_stride: int = 32,
        num_slots: int = 128,
        memory_dim: int = 256,
        pixel_dims: list[int] | None = None,
        encoder_blocks: int = 2,
        decoder_blocks: int = 1,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        embed_dim: int = 128,
        head_channels: int = 256,
        dropout: float = 0.0,
        pq_weight: float = 3.0,
        mask_id_weight: float = 0.3,
        instance_weight: float = 1.0,
        semantic_weight: float = 1.0,
        instance_temperature: float = 0.3,
        sample_k: int = 4096,
        sample_temperature: float = 0.6,
        deep_supervision: bool = True,
        class_threshold: float = 0.7,
        pixel_threshold: float = 0.4,
        thing_area: int = 100,
        stuff_area: int = 1600,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        backbone_lr_multiplier: float = 0.1,
        lr_schedule: Schedule = "poly",
        warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_lr_multiplier, lr_schedule=lr_schedule,
                         warmup_steps=warmup_steps, **kwargs)

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry

        hp = self.hparams
        entry = model_entry(hp.model, "max_deeplab", key="model.model")
        kwargs = {k: hp[k] for k in _MODEL_ARGS}
        kwargs["pixel_dims"] = tuple(hp.pixel_dims) if hp.pixel_dims is not None else (256, 128, 64)
        # without deep supervision the earlier stages get no heads: every parameter then has a
        # gradient (DDP without find_unused_parameters)
        kwargs["aux_heads"] = hp.deep_supervision
        self.model = create_model(entry.name, "max_deeplab", num_classes=self.num_classes, **kwargs)

    def configure_losses(self) -> None:
        hp = self.hparams
        self.criterion = MaXDeepLabCriterion(
            self.num_classes, pq_weight=hp.pq_weight, mask_id_weight=hp.mask_id_weight,
            instance_weight=hp.instance_weight, semantic_weight=hp.semantic_weight,
            instance_temperature=hp.instance_temperature, sample_k=hp.sample_k,
            sample_temperature=hp.sample_temperature,
        )

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("panoptic", "semantic")

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Model outputs (see :class:`~lightning_seg.models.mask_classification.max_deeplab.MaXDeepLab`)."""
        return self.model(images)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        outputs = self.model(batch["images"])
        return self.criterion.weighted(self.criterion(outputs, list(batch["targets"])))

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        hp = self.hparams
        outputs = self.model(batch["images"], with_aux=False)
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        sizes = self.mask_inference_sizes(batch, at_original_size)
        result: dict[str, list[Any]] = {}
        if "panoptic" in self.eval_kinds:
            result["panoptic"] = max_deeplab_panoptic_inference(
                logits, masks, self.thing_classes, **sizes, class_threshold=hp.class_threshold,
                pixel_threshold=hp.pixel_threshold, thing_area=hp.thing_area, stuff_area=hp.stuff_area)
        if "semantic" in self.eval_kinds:
            result["semantic"] = max_deeplab_semantic_inference(logits, masks, **sizes)
        return result
