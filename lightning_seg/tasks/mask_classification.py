"""``MaskClassificationModule``: MaskFormer / Mask2Former for semantic, instance and panoptic segmentation.

Training: model → :class:`~lightning_seg.losses.SetCriterion` (Hungarian matching per decoder
layer, deep supervision). Evaluation: the batched inference ops of :mod:`lightning_seg.ops`
turn ``pred_logits``/``pred_masks`` into the prediction contracts, scored by the metrics of
the configured task; in panoptic mode the same outputs are also scored for mIoU and mask AP,
as Mask2Former reports. ``predict`` writes the files ``lightning-seg evaluate`` reads.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_seg.losses.set_criterion import SetCriterion
from lightning_seg.metrics.semantic import SemanticSegmentationMetrics
from lightning_seg.ops import instance_inference, panoptic_inference, semantic_inference
from lightning_seg.structures import Batch
from lightning_seg.tasks.base import SegTask

Task = Literal["panoptic", "instance", "semantic"]


class MaskClassificationModule(SegTask):
    """Mask classification (MaskFormer, Mask2Former) for one of the three tasks.

    Model arguments are the task's own, so an ablation is ``--model.num_queries 200``.

    Args:
        num_classes: ``K`` (linked from the data).
        task: what to evaluate and predict: ``panoptic``, ``instance`` or ``semantic``.
        architecture: ``mask2former`` (masked-attention decoder) or ``maskformer``
            (standard DETR decoder, FPN pixel decoder, focal + dice loss).
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
        score_all_tasks: in panoptic mode also compute mIoU and mask AP from the same outputs.
        freeze_pixel_decoder: keep the pixel decoder fixed (fine-tuning).
        **kwargs: :class:`~lightning_seg.tasks.base.SegTask` arguments (AdamW 1e-4, weight
            decay 0.05, backbone ×0.1 by default; poly schedule; ``init_from``).
    """

    def __init__(
        self,
        num_classes: int,
        task: Task = "panoptic",
        architecture: Literal["mask2former", "maskformer"] = "mask2former",
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
        score_all_tasks: bool = True,
        freeze_pixel_decoder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        if freeze_pixel_decoder:
            self.freeze_module("pixel_decoder")

    # --- hooks ----------------------------------------------------------------------------
    def configure_models(self) -> None:
        from lightning_seg.models.mask_classification import Mask2Former, MaskFormer

        hp = self.hparams
        common = dict(
            num_classes=self.num_classes, backbone=hp.backbone, backbone_source=hp.backbone_source,
            pretrained=hp.pretrained, frozen_stages=hp.frozen_stages, freeze_bn=hp.freeze_bn,
            backbone_kwargs=hp.backbone_kwargs, conv_dim=hp.conv_dim, mask_dim=hp.mask_dim,
            num_queries=hp.num_queries, hidden_dim=hp.hidden_dim, nheads=hp.nheads,
            dim_feedforward=hp.dim_feedforward, pre_norm=hp.pre_norm,
        )
        if hp.architecture == "mask2former":
            self.model = Mask2Former(
                **common, pixel_decoder=hp.pixel_decoder or "msdeform", enc_layers=hp.enc_layers,
                num_decoder_layers=hp.num_decoder_layers or 9,
            )
        else:
            if hp.pixel_decoder not in (None, "fpn"):
                raise ValueError("model.pixel_decoder: MaskFormer uses the FPN pixel decoder")
            self.model = MaskFormer(**common, num_decoder_layers=hp.num_decoder_layers or 6)

    def configure_losses(self) -> None:
        hp = self.hparams
        m2f = hp.architecture == "mask2former"
        self.criterion = SetCriterion(
            self.num_classes,
            class_weight=hp.class_weight if hp.class_weight is not None else (2.0 if m2f else 1.0),
            mask_weight=hp.mask_weight if hp.mask_weight is not None else (5.0 if m2f else 20.0),
            dice_weight=hp.dice_weight if hp.dice_weight is not None else (5.0 if m2f else 1.0),
            eos_coef=hp.eos_coef,
            num_points=hp.num_points,
            oversample_ratio=hp.oversample_ratio,
            importance_sample_ratio=hp.importance_sample_ratio,
            variant="mask2former" if m2f else "maskformer",
            shared_points=hp.shared_points,
        )

    def configure_metrics(self) -> None:
        from lightning_seg.metrics import MaskAP, PanopticQuality

        hp = self.hparams
        for stage in ("val", "test"):
            metrics: dict[str, Any] = {}
            if hp.task == "panoptic":
                metrics["pq"] = PanopticQuality(self.is_thing.tolist())
            if hp.task == "semantic" or (hp.task == "panoptic" and hp.score_all_tasks):
                metrics["sem"] = SemanticSegmentationMetrics(self.num_classes, self.ignore_index)
            if hp.task == "instance" or (hp.task == "panoptic" and hp.score_all_tasks):
                metrics["ap"] = MaskAP(self.num_classes)
            setattr(self, f"{stage}_metrics", torch.nn.ModuleDict(metrics))

    # --- training -------------------------------------------------------------------------
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Model outputs: ``pred_logits [B,Q,K+1]``, ``pred_masks [B,Q,H/4,W/4]``, ``aux_outputs``."""
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        outputs = self.model(batch["images"])
        if not self.hparams.deep_supervision:
            outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        targets = self._training_targets(batch)
        terms = self.criterion(outputs, targets)
        loss = self.criterion.total(terms)
        self.check_finite(loss, {k: v for k, v in terms.items() if k in ("loss_ce", "loss_mask", "loss_dice")})
        bs = len(targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": terms[k] for k in ("loss_ce", "loss_mask", "loss_dice")}, batch_size=bs)
        return loss

    def _training_targets(self, batch: Batch) -> list[dict[str, Tensor]]:
        """Targets of the configured task: instance mode trains on things only, without crowd."""
        if self.hparams.task != "instance":
            return batch["targets"]  # type: ignore[return-value]
        out = []
        for t in batch["targets"]:
            keep = t["is_thing"] & ~t["iscrowd"]
            out.append({"masks": t["masks"][keep], "labels": t["labels"][keep]})
        return out

    # --- inference ------------------------------------------------------------------------
    def predict_outputs(self, outputs: dict[str, Any], batch: Batch, at_original_size: bool) -> dict[str, list]:
        """Run the inference ops of every needed task on one batch of model outputs.

        Args:
            outputs: the model's outputs.
            batch: the batch (sizes come from its targets).
            at_original_size: predictions at ``orig_size`` (predict) or at the targets' size
                ``target_size`` (validation: the original size too, unless the targets were
                resized with the image).

        Returns:
            dict with ``panoptic`` / ``instance`` / ``semantic`` lists of per-image predictions.
        """
        hp = self.hparams
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        padded = tuple(batch["images"].shape[-2:])
        image_sizes = [tuple(t["image_size"]) for t in batch["targets"]]
        key = "orig_size" if at_original_size else "target_size"
        out_sizes = [tuple(t[key]) for t in batch["targets"]]
        sizes = dict(padded_size=padded, image_sizes=image_sizes, orig_sizes=out_sizes)
        need = self._needed_outputs()
        result: dict[str, list] = {}
        if "panoptic" in need:
            result["panoptic"] = panoptic_inference(
                logits, masks, self.thing_classes, object_mask_threshold=hp.object_mask_threshold,
                overlap_threshold=hp.overlap_threshold, **sizes,
            )
        if "instance" in need:
            result["instance"] = instance_inference(
                logits, masks, topk=hp.test_topk,
                thing_classes=self.thing_classes if hp.task == "panoptic" else None, **sizes,
            )
        if "semantic" in need:
            result["semantic"] = semantic_inference(logits, masks, **sizes)
        return result

    def _needed_outputs(self) -> set[str]:
        hp = self.hparams
        if hp.task == "panoptic":
            return {"panoptic", "instance", "semantic"} if hp.score_all_tasks else {"panoptic"}
        return {hp.task}

    def _eval_step(self, batch: Batch, metrics: torch.nn.ModuleDict, batch_idx: int = -1) -> None:
        preds = self.predict_outputs(self.model(batch["images"]), batch, at_original_size=False)
        targets = batch["targets"]
        self.log_overlays(batch_idx, batch, preds)
        if "pq" in metrics:
            metrics["pq"].update(preds["panoptic"], targets)
        if "sem" in metrics:
            for p, t in zip(preds["semantic"], targets):
                h, w = t["target_size"]
                metrics["sem"].update(p[None], t["semantic"][None, :h, :w])
        if "ap" in metrics:
            metrics["ap"].update(preds["instance"], self._ap_targets(targets))

    @staticmethod
    def _ap_targets(targets: list) -> list[dict[str, Any]]:
        """Ground truth for mask AP: thing segments cropped to the unpadded size, crowd kept."""
        out = []
        for t in targets:
            h, w = t["target_size"]
            keep = t["is_thing"]
            out.append({"masks": t["masks"][keep][:, :h, :w], "labels": t["labels"][keep], "iscrowd": t["iscrowd"][keep]})
        return out

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def _log_epoch(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values: dict[str, Any] = {}
        if "pq" in metrics:
            r = metrics["pq"].compute()
            values.update({"PQ": r["pq"], "SQ": r["sq"], "RQ": r["rq"], "PQ_th": r["pq_things"], "PQ_st": r["pq_stuff"]})
        if "sem" in metrics:
            r = metrics["sem"].compute()
            values.update({"mIoU": r["mIoU"], "pixel_acc": r["pixel_acc"]})
        if "ap" in metrics:
            r = metrics["ap"].compute()
            values.update({"AP": r["AP"], "AP50": r["AP50"], "AP75": r["AP75"]})
        for m in metrics.values():
            m.reset()
        self.log_metric_dict(stage, values, prog_bar=stage == "val", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, list]:
        """Predictions at original size (written to ``predict_dir``): the configured task's, and in
        panoptic mode with ``score_all_tasks`` also the instance and semantic ones it scores."""
        preds = self.predict_outputs(self.model(batch["images"]), batch, at_original_size=True)
        self.write_predictions(batch, preds)
        return preds
