"""``SemanticSegmentationModule``: per-pixel classification models (FCN, U-Net, DeepLab, Semantic FPN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.metrics.task_metrics import Kind
from lightning_seg.ops.dense_inference import crop_and_resize, dense_probabilities
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask


class SemanticSegmentationModule(SegTask):
    """Semantic segmentation with a per-pixel model chosen by name.

    The model is built by :func:`lightning_seg.models.create_model` from ``model`` (a
    ``per_pixel`` name) and the backbone arguments; it maps images ``[B,3,H,W]`` in ``[0,1]``
    to logits ``[B,K,H,W]`` (or a dict with ``out`` and ``aux`` logits when ``aux_weight > 0``).
    Validation scores the class map at the targets' resolution and logs the loss of the same
    forward pass as ``val/loss`` when targets and image agree in size; ``predict`` writes PNG
    class maps encoded like the dataset's ground truth.

    Args:
        model: ``fcn``, ``unet``, ``deeplabv3``, ``deeplabv3plus`` or ``semantic_fpn``.
        backbone: timm or torchvision backbone name.
        backbone_source: ``timm`` or ``torchvision``.
        pretrained: False, True (hub, needs network) or a local weights file.
        output_stride: backbone output stride for dilated models (None: the model's default).
        aux_weight: weight of the auxiliary head's loss (0 disables the auxiliary head).
        model_kwargs: further keyword arguments of the architecture.
        loss: loss module on (logits, target); default cross-entropy with ``ignore_index``.
        inference: ``whole`` image or ``slide`` (sliding window).
        window_size, window_stride: sliding-window geometry.
        tta_scales: test-time scales (``[1.0]`` = none).
        tta_flip: add horizontal flips at test time.
        class_weighting: weight the loss's classes by the training set's pixel frequencies
            (``inverse``, ``median_frequency`` or ``enet``), counted once before training; the
            loss must take ``class_weights`` (the default cross-entropy, focal, OHEM do).
        class_weights_cache: JSON file of the pixel counts (default:
            ``<default_root_dir>/class_pixel_counts.json``); reused when it exists.
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (optimiser, schedule,
            ``metric_average``, ``extra_metrics``, ...).
    """

    hparams_ignore = ("loss",)

    def __init__(
        self,
        num_classes: int,
        model: str = "deeplabv3plus",
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        output_stride: int | None = None,
        aux_weight: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        loss: nn.Module | None = None,
        inference: Literal["whole", "slide"] = "whole",
        window_size: tuple[int, int] = (512, 512),
        window_stride: tuple[int, int] = (341, 341),
        tta_scales: list[float] | None = None,
        tta_flip: bool = False,
        class_weighting: Literal["none", "inverse", "median_frequency", "enet"] = "none",
        class_weights_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        if loss is not None:
            self.criterion = loss

    def configure_models(self) -> None:
        from lightning_seg.models import create_model, model_entry

        hp = self.hparams
        kwargs = dict(hp.model_kwargs or {})
        if hp.output_stride is not None:
            kwargs["output_stride"] = hp.output_stride
        if hp.aux_weight > 0:
            kwargs["aux_head"] = True
        name = model_entry(hp.model, "per_pixel", key="model.model").name
        self.model = create_model(name, "per_pixel", num_classes=self.num_classes, backbone=hp.backbone,
                                  backbone_source=hp.backbone_source, pretrained=hp.pretrained, **kwargs)

    def configure_losses(self) -> None:
        from lightning_seg.losses import CrossEntropyLoss

        # the default; a ``loss`` given to the constructor replaces it
        self.criterion = CrossEntropyLoss(ignore_index=self.ignore_index)

    def available_kinds(self) -> tuple[Kind, ...]:
        return ("semantic",)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.class_weighting != "none":
            self.criterion.class_weights = self._dataset_class_weights().to(self.device)

    def _dataset_class_weights(self) -> Tensor:
        """Class weights from the training set's class maps (rank 0 counts, the others read)."""
        from lightning_seg.losses import compute_class_weights

        if not hasattr(self.criterion, "class_weights"):
            raise ValueError(
                f"model.class_weighting needs a loss with class_weights; {type(self.criterion).__name__} has none"
            )
        cache = Path(self.hparams.class_weights_cache or Path(self.trainer.default_root_dir) / "class_pixel_counts.json")
        dataset = self.trainer.datamodule.datasets["train"]
        # un-augmented maps: the frequencies of the data, not of one random crop of it
        maps = (torch.from_numpy(dataset.load_record(i)["semantic"]) for i in range(len(dataset)))
        method = self.hparams.class_weighting
        if self.trainer.is_global_zero:
            weights = compute_class_weights(maps, self.num_classes, method, self.ignore_index, cache)
        self.trainer.strategy.barrier()
        if not self.trainer.is_global_zero:
            weights = compute_class_weights(iter(()), self.num_classes, method, self.ignore_index, cache)
        return weights

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B,K,H,W]`` of the main head."""
        out = self.model(images)
        return out["out"] if isinstance(out, dict) else out

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        target = torch.stack([t["semantic"] for t in batch["targets"]])
        out = self.model(batch["images"])
        if not isinstance(out, dict):
            return {"loss_main": self.criterion(out, target)}
        terms = {"loss_main": self.criterion(out["out"], target)}
        if "aux" in out and self.hparams.aux_weight > 0:
            terms["loss_aux"] = self.hparams.aux_weight * self.criterion(out["aux"], target)
        return terms

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        """Class maps int64 ``[H, W]`` per image (argmax of the logits, or of the averaged
        probabilities with sliding windows or TTA)."""
        hp = self.hparams
        targets = batch["targets"]
        if hp.inference == "whole" and not hp.tta_flip and list(hp.tta_scales or [1.0]) == [1.0]:
            scores = self.forward(batch["images"])
            if not at_original_size and all(tuple(t["target_size"]) == tuple(t["image_size"]) for t in targets):
                target = torch.stack([t["semantic"] for t in targets])
                self.log(f"{self.eval_stage}/loss", self.criterion(scores, target), batch_size=len(targets))
        else:
            scores = dense_probabilities(self.forward, batch["images"], mode=hp.inference, window=hp.window_size,
                                         stride=hp.window_stride, scales=hp.tta_scales or (1.0,), flip=hp.tta_flip)
        key = "orig_size" if at_original_size else "target_size"
        return {"semantic": [crop_and_resize(s, t["image_size"], t[key]).argmax(0) for s, t in zip(scores, targets)]}
