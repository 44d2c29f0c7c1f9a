"""``SegTask``: the step template every task family shares.

A family subclasses :class:`SegTask` and writes

* :meth:`SegTask.configure_models` (build ``self.model``) and, if it has one, :meth:`SegTask.configure_losses`;
* :meth:`SegTask.compute_losses`: the batch's named loss terms, already weighted;
* :meth:`SegTask.predict`: ``{kind: [per-image prediction]}`` with kind in ``panoptic``,
  ``instance``, ``semantic`` (the contracts of :mod:`lightning_seg.structures`);
* :meth:`SegTask.available_kinds`: the kinds its ``predict`` can return;
* optionally :meth:`SegTask.configure_metrics` (default: :class:`~lightning_seg.metrics.TaskMetrics`).

The base runs the rest: training step (sum, NaN/Inf guard, ``train/<term>`` logs), validation
and test steps (the metrics of each scored kind, :class:`~lightning_seg.metrics.TaskMetrics`),
epoch-end logging, ``predict_step``, the optimiser and schedule
(:mod:`lightning_seg.tasks.optimization`), ``init_from`` fine-tuning, and the I/O callbacks
(:class:`~lightning_seg.callbacks.ValidationOverlays`, :class:`~lightning_seg.callbacks.PredictionWriter`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning import Callback, LightningModule
from torch import Tensor, nn

from lightning_seg.metrics.task_metrics import ExtraMetric, Kind, TaskMetrics
from lightning_seg.structures import Batch
from lightning_seg.tasks import optimization
from lightning_seg.tasks.weight_init import load_matching_weights


class SegTask(LightningModule):
    """Base of every task.

    Args:
        num_classes: number of classes ``K`` (linked from ``data.num_classes`` by the CLI).
        thing_classes: contiguous ids of thing classes (linked from ``data.thing_classes``).
        ignore_index: void value in semantic targets.
        eval_kinds: prediction kinds scored in validation/test and written by ``predict``
            (``panoptic``: PQ/SQ/RQ all/things/stuff; ``instance``: mask AP, and box AP where
            the family predicts boxes; ``semantic``: mIoU, pixel accuracy, mAcc, fwIoU); default:
            every kind :meth:`available_kinds` lists.
        extra_metrics: further metrics of the scored kinds, logged under their names:
            ``boundary_iou``, ``trimap_accuracy``, ``surface_distance`` (semantic),
            ``parsing_covering`` (panoptic), ``unsupervised`` (the classic baselines' protocol
            on this model's predictions, see :class:`~lightning_seg.metrics.TaskMetrics`).
        metric_average: semantic means over the classes ``present`` in prediction or ground
            truth, or over ``all`` classes (ADE20K's kit).
        optimizer: ``adamw`` (Mask2Former) or ``sgd`` (DeepLab/FCN).
        lr: base learning rate.
        weight_decay: weight decay of weights (norms, biases, embeddings get none).
        momentum: SGD momentum.
        backbone_lr_multiplier: learning-rate factor of ``model.backbone`` parameters.
        lr_schedule, poly_power, lr_milestones, lr_gamma, warmup_steps, warmup_factor: the
            schedule, see :func:`lightning_seg.tasks.optimization.lr_factor`.
        max_steps: schedule length ``T`` (default: the trainer's estimated stepping batches).
        init_from: checkpoint to start from, ``[ours|hf|detectron2|torchvision:]PATH`` (ours by default; HF
            Mask2Former / MaskFormer / DETR, detectron2 Mask2Former or torchvision FCN / DeepLabV3 weights converted;
            loaded with ``weights_only=True``; tensors of another shape, e.g. the class head, are
            re-initialised and logged, see :func:`~lightning_seg.tasks.weight_init.load_matching_weights`).
        freeze_backbone: keep ``model.backbone`` fixed (no gradients, eval-mode norms).
        predict_dir: ``predict`` writes its files here (adds a
            :class:`~lightning_seg.callbacks.PredictionWriter`); None: predictions are returned.
        num_overlays: overlays of this many images of the first validation batch per epoch
            (adds a :class:`~lightning_seg.callbacks.ValidationOverlays`); 0 disables them.
    """

    hparams_ignore: tuple[str, ...] = ()
    """Constructor arguments not saved as hyper-parameters (e.g. nn.Module arguments)."""
    predicts_boxes: bool = False
    """The family's instance predictions carry ``boxes`` (scored as box AP too)."""

    def __init__(
        self,
        num_classes: int,
        thing_classes: list[int] | None = None,
        ignore_index: int = 255,
        eval_kinds: list[Kind] | None = None,
        extra_metrics: list[ExtraMetric] | None = None,
        metric_average: Literal["present", "all"] = "present",
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        backbone_lr_multiplier: float = 0.1,
        lr_schedule: optimization.Schedule = "poly",
        poly_power: float = 0.9,
        lr_milestones: list[float] | None = None,
        lr_gamma: float = 0.1,
        warmup_steps: int = 0,
        warmup_factor: float = 1e-3,
        max_steps: int | None = None,
        init_from: str | None = None,
        freeze_backbone: bool = False,
        predict_dir: str | None = None,
        num_overlays: int = 4,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        thing_classes = list(thing_classes) if thing_classes is not None else list(range(num_classes))
        bad = [c for c in thing_classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"model.thing_classes {bad} are outside [0, {num_classes})")
        # collects the arguments of every __init__ in the subclass chain
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        self.hparams.thing_classes = thing_classes
        self.num_classes = num_classes
        self.thing_classes = thing_classes
        self.ignore_index = ignore_index
        self.configure_models()
        self.configure_losses()
        available = self.available_kinds()
        self.eval_kinds: tuple[Kind, ...] = tuple(eval_kinds) if eval_kinds is not None else available
        wrong = [k for k in self.eval_kinds if k not in available]
        if wrong:
            raise ValueError(f"model.eval_kinds: {type(self).__name__} with these arguments predicts "
                             f"{list(available)}, not {wrong}")
        for stage in ("val", "test"):
            setattr(self, f"{stage}_metrics", self.configure_metrics())
        self._frozen: list[str] = []
        self.eval_stage = "val"
        if init_from:
            self.init_report = load_matching_weights(self, init_from)
        if freeze_backbone:
            self.freeze_module("backbone")

    # --- what a family writes ---------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.model`` (an ``nn.Module`` with a ``backbone`` attribute where it has one)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build the loss modules (the model's own loss needs nothing here)."""

    def available_kinds(self) -> tuple[Kind, ...]:
        """The prediction kinds :meth:`predict` can return with these arguments."""
        raise NotImplementedError

    def configure_metrics(self) -> nn.Module:
        """A fresh validation / test metrics module (``update(preds, targets)``, ``compute()``
        -> ``{name: scalar}``, ``reset()``): by default the :class:`TaskMetrics` of
        :attr:`eval_kinds` and ``extra_metrics``."""
        hp = self.hparams
        return TaskMetrics(self.eval_kinds, self.num_classes, self.thing_classes, self.ignore_index,
                           hp.extra_metrics or (), box_ap=self.predicts_boxes, semantic_average=hp.metric_average)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named float32 scalar loss terms of a training batch, already weighted (they are summed)."""
        raise NotImplementedError

    def predict(self, batch: Batch, at_original_size: bool) -> dict[str, list[Any]]:
        """Predictions of :attr:`eval_kinds` for every image of ``batch``.

        Args:
            batch: a collated batch.
            at_original_size: predictions at each target's ``orig_size`` (``predict``) or at its
                ``target_size`` (validation/test: the original size too, unless the targets were
                resized with the image).

        Returns:
            ``{kind: [one prediction per image]}`` for kind in :attr:`eval_kinds`.
        """
        raise NotImplementedError

    @staticmethod
    def image_sizes(batch: Batch) -> Tensor:
        """int64 ``[B, 2]`` ``(H, W)`` of every image of ``batch`` inside the padded input."""
        return torch.tensor([tuple(t["image_size"]) for t in batch["targets"]], dtype=torch.int64,
                            device=batch["images"].device)

    @staticmethod
    def output_sizes(batch: Batch, at_original_size: bool) -> list[tuple[int, int]]:
        """``(H0, W0)`` each image's predictions are reported at: its ``orig_size`` or ``target_size``."""
        key = "orig_size" if at_original_size else "target_size"
        return [(int(t[key][0]), int(t[key][1])) for t in batch["targets"]]

    @classmethod
    def mask_inference_sizes(cls, batch: Batch, at_original_size: bool) -> dict[str, Any]:
        """``padded_size``, ``image_sizes`` and ``orig_sizes`` keywords of the mask-inference ops."""
        return dict(padded_size=tuple(batch["images"].shape[-2:]),
                    image_sizes=[tuple(t["image_size"]) for t in batch["targets"]],
                    orig_sizes=cls.output_sizes(batch, at_original_size))

    # --- the step template ------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms = self.compute_losses(batch)
        loss = sum(terms.values())
        self.check_finite(loss, terms)  # type: ignore[arg-type]
        bs = len(batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
        return loss  # type: ignore[return-value]

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Any]]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Any]]:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: Batch, stage: str) -> dict[str, list[Any]]:
        self.eval_stage = stage  # predict() may log under it (e.g. a per-pixel validation loss)
        preds = self.predict(batch, at_original_size=False)
        getattr(self, f"{stage}_metrics").update(preds, batch["targets"])
        return preds

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        # torchmetrics already reduced the states across ranks
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=False)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Any]]:
        """Predictions at each image's original size (written by a ``PredictionWriter``)."""
        return self.predict(batch, at_original_size=True)

    def check_finite(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        """Raise ``FloatingPointError`` naming the step and the non-finite terms if ``loss`` is NaN/Inf."""
        if not bool(torch.isfinite(loss)):
            bad = {k: float(v) for k, v in terms.items() if not bool(torch.isfinite(v))}
            raise FloatingPointError(
                f"non-finite training loss {float(loss)} at global step {self.global_step} (epoch "
                f"{self.current_epoch}); non-finite terms: {bad or 'none (the sum overflowed)'}; all terms: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            )

    # --- optimisation, freezing, callbacks ----------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        named = getattr(self.model, "no_weight_decay_parameter_names", None)
        no_decay = {f"model.{n}" for n in named()} if callable(named) else set()
        groups = optimization.parameter_groups(self, hp.lr, hp.weight_decay, hp.backbone_lr_multiplier,
                                               no_decay_names=no_decay)
        opt = optimization.build_optimizer(groups, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        total = hp.max_steps or int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.lr_factor(s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the base lr at ``step`` of ``total`` (see :func:`optimization.lr_factor`)."""
        hp = self.hparams
        return optimization.lr_factor(step, total, hp.lr_schedule, hp.warmup_steps, hp.warmup_factor,
                                      hp.poly_power, hp.lr_milestones, hp.lr_gamma)

    def freeze_module(self, name: str) -> None:
        """Stop gradients into ``model.<name>`` and keep its norm layers in eval mode."""
        module = getattr(self.model, name, None)
        if module is None:
            raise ValueError(f"{type(self.model).__name__} has no '{name}' to freeze")
        module.requires_grad_(False)
        self._frozen.append(name)

    def on_train_epoch_start(self) -> None:
        for name in self._frozen:
            getattr(self.model, name).eval()

    def configure_callbacks(self) -> list[Callback]:
        """The I/O callbacks the task arguments ask for, unless the trainer already has one."""
        from lightning_seg.callbacks import PredictionWriter, ValidationOverlays

        have = {type(cb) for cb in (self.trainer.callbacks if self._trainer is not None else [])}
        out: list[Callback] = []
        if self.hparams.num_overlays > 0 and ValidationOverlays not in have:
            out.append(ValidationOverlays(self.hparams.num_overlays))
        if self.hparams.predict_dir and PredictionWriter not in have:
            out.append(PredictionWriter(self.hparams.predict_dir))
        return out
