"""``SemanticSegmentationModule``: per-pixel classification models (FCN, U-Net, DeepLab, Semantic FPN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.metrics.semantic import SemanticSegmentationMetrics
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.dense_inference import crop_and_resize, dense_probabilities


class SemanticSegmentationModule(SegTask):
    """Semantic segmentation with a per-pixel model chosen by name.

    The model is built by :func:`lightning_seg.models.create_model` from ``model`` and the
    backbone arguments; it maps images ``[B,3,H,W]`` in ``[0,1]`` to logits ``[B,K,H,W]`` (or a
    dict with ``out`` and ``aux`` logits when ``aux_weight > 0``).

    Validation and test score the class map at the target's resolution with
    :class:`~lightning_seg.metrics.semantic.SemanticSegmentationMetrics`; ``predict`` writes
    PNG class maps (encoded like the dataset's ground truth, the format
    ``lightning-seg evaluate --task semantic`` reads) and colour overlays to ``predict_dir``.

    Args:
        model: architecture name (``fcn``, ``unet``, ``deeplabv3``, ``deeplabv3plus``,
            ``semantic_fpn``).
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
        metric_average: ``present`` (classes absent from prediction and ground truth are left
            out of means) or ``all``.
        class_weighting: weight the loss's classes by the training set's pixel frequencies
            (``inverse``, ``median_frequency`` or ``enet``), counted once before training; the
            loss must take ``class_weights`` (the default cross-entropy, focal, OHEM do).
        class_weights_cache: JSON file of the pixel counts (default:
            ``<default_root_dir>/class_pixel_counts.json``); reused when it exists.
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (optimiser, schedule, ...);
            the defaults are AdamW 1e-4, the DeepLab-style configs set SGD 0.01 poly explicitly.
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
        metric_average: Literal["present", "all"] = "present",
        class_weighting: Literal["none", "inverse", "median_frequency", "enet"] = "none",
        class_weights_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        if loss is not None:
            self.criterion = loss

    def configure_models(self) -> None:
        from lightning_seg.models import create_model

        hp = self.hparams
        kwargs = dict(hp.model_kwargs or {})
        if hp.output_stride is not None:
            kwargs["output_stride"] = hp.output_stride
        if hp.aux_weight > 0:
            kwargs["aux_head"] = True
        self.model = create_model(
            hp.model, num_classes=self.num_classes, backbone=hp.backbone,
            backbone_source=hp.backbone_source, pretrained=hp.pretrained, **kwargs,
        )

    def configure_losses(self) -> None:
        from lightning_seg.losses import CrossEntropyLoss

        # the default; a ``loss`` given to the constructor replaces it
        self.criterion = CrossEntropyLoss(ignore_index=self.ignore_index)

    def configure_metrics(self) -> None:
        avg = self.hparams.metric_average
        self.val_metrics = SemanticSegmentationMetrics(self.num_classes, self.ignore_index, average=avg)
        self.test_metrics = SemanticSegmentationMetrics(self.num_classes, self.ignore_index, average=avg)

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

    # --- training -------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B,K,H,W]`` of the main head."""
        out = self.model(images)
        return out["out"] if isinstance(out, dict) else out

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        target = torch.stack([t["semantic"] for t in batch["targets"]])
        out = self.model(batch["images"])
        terms: dict[str, Tensor] = {}
        if isinstance(out, dict):
            terms["loss_main"] = self.criterion(out["out"], target)
            if "aux" in out and self.hparams.aux_weight > 0:
                terms["loss_aux"] = self.hparams.aux_weight * self.criterion(out["aux"], target)
        else:
            terms["loss_main"] = self.criterion(out, target)
        loss = sum(terms.values())
        self.check_finite(loss, terms)
        bs = len(batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if len(terms) > 1:
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        return loss

    # --- inference ------------------------------------------------------------------------
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities ``[B,K,Hp,Wp]`` with the configured inference mode and TTA."""
        hp = self.hparams
        return dense_probabilities(
            self.forward, images, mode=hp.inference, window=hp.window_size, stride=hp.window_stride,
            scales=hp.tta_scales or (1.0,), flip=hp.tta_flip,
        )

    def _eval_step(self, batch: Batch, metrics: SemanticSegmentationMetrics, prefix: str, batch_idx: int = -1) -> None:
        hp = self.hparams
        targets = batch["targets"]
        same_size = all(tuple(t["target_size"]) == tuple(t["image_size"]) for t in targets)
        if hp.inference == "whole" and not hp.tta_flip and list(hp.tta_scales or [1.0]) == [1.0]:
            # plain inference: one forward gives the prediction (and the loss when sizes agree)
            logits = self.forward(batch["images"])
            if same_size:
                target = torch.stack([t["semantic"] for t in targets])
                self.log(f"{prefix}/loss", self.criterion(logits, target), batch_size=len(targets))
        else:
            logits = self.probabilities(batch["images"])
        preds = []
        for p, t in zip(logits, targets):
            h, w = t["target_size"]
            pred = crop_and_resize(p, t["image_size"], (h, w)).argmax(0)
            metrics.update(pred[None], t["semantic"][None, :h, :w])
            preds.append(pred)
        self.log_overlays(batch_idx, batch, {"semantic": preds})

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val", batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_metric_dict("val", self.val_metrics.compute(), prog_bar=False)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_metric_dict("test", self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Tensor]]:
        """Class maps at each image's original size: ``{"semantic": [int64 [H0,W0], ...]}``."""
        prob = self.probabilities(batch["images"])
        preds = {
            "semantic": [
                crop_and_resize(p, t["image_size"], t["orig_size"]).argmax(0)
                for p, t in zip(prob, batch["targets"])
            ]
        }
        self.write_predictions(batch, preds)
        return preds
