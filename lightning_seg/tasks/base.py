"""``SegTask``: the small base every task LightningModule shares.

A task subclass fills three hooks, as torchgeo's trainers do: :meth:`SegTask.configure_models`
(build ``self.model``), :meth:`SegTask.configure_losses` and :meth:`SegTask.configure_metrics`.
The base owns what is the same everywhere: the optimiser with a backbone learning-rate
multiplier and no weight decay on norms/biases/embeddings, the poly (or cosine) schedule with
linear warm-up, a NaN/Inf loss guard that names the step, and ``init_from`` for fine-tuning
(loading a checkpoint with ``weights_only=True`` and re-initialising layers whose shapes differ,
e.g. the class head when the number of classes changes).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule
from PIL import Image
from torch import Tensor, nn

from lightning_seg.structures import DatasetMetadata, distinct_colors
from lightning_seg.tasks.prediction_writer import PredictionWriter
from lightning_seg.visualization import prediction_overlay

log = logging.getLogger(__name__)

NO_DECAY_KEYWORDS = ("query_feat", "query_embed", "level_embed", "pos_embed", "cls_token", "relative_position")


class SegTask(LightningModule):
    """Base of every task.

    Args:
        num_classes: number of classes ``K`` (linked from ``data.num_classes`` by the CLI).
        thing_classes: contiguous ids of thing classes (linked from ``data.thing_classes``).
        ignore_index: void value in semantic targets.
        optimizer: ``adamw`` (Mask2Former) or ``sgd`` (DeepLab/FCN).
        lr: base learning rate.
        weight_decay: weight decay of weights (norms, biases, embeddings get none).
        momentum: SGD momentum.
        backbone_lr_multiplier: learning-rate factor of ``model.backbone`` parameters.
        lr_schedule: ``poly`` (``(1 - t/T)^power``), ``cosine``, ``step`` (×``lr_gamma`` at
            each milestone) or ``constant``, after warm-up.
        poly_power: exponent of the poly schedule.
        lr_milestones: fractions of ``T`` where the ``step`` schedule decays (default
            ``[0.9, 0.95]``, Mask2Former's COCO schedule).
        lr_gamma: decay factor of the ``step`` schedule.
        warmup_steps: linear warm-up from ``warmup_factor · lr`` over this many steps.
        warmup_factor: starting fraction of the warm-up.
        max_steps: schedule length ``T`` (default: the trainer's estimated stepping batches).
        init_from: checkpoint to start from (ours; loaded with ``weights_only=True``).
        freeze_backbone: keep ``model.backbone`` fixed (no gradients, eval-mode norms).
        predict_dir: where ``predict`` writes its files (COCO panoptic JSON + PNGs, COCO
            results JSON, PNG class maps, overlays); None: predictions are only returned.
        num_overlays: at each validation, colour overlays of this many images of the first
            batch are written to ``<log dir>/overlays/epoch_NNN/`` and sent to the logger
            (TensorBoard or W&B); 0 disables them.
    """

    hparams_ignore: tuple[str, ...] = ()
    """Constructor arguments not saved as hyper-parameters (e.g. nn.Module arguments)."""

    def __init__(
        self,
        num_classes: int,
        thing_classes: list[int] | None = None,
        ignore_index: int = 255,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        backbone_lr_multiplier: float = 0.1,
        lr_schedule: Literal["poly", "cosine", "step", "constant"] = "poly",
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
        self.configure_metrics()
        if init_from:
            self.load_init_weights(init_from)
        if freeze_backbone:
            self.freeze_module("backbone")

    # --- hooks for subclasses -------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.model`` (an ``nn.Module`` with a ``backbone`` attribute where it has one)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build the loss modules."""

    def configure_metrics(self) -> None:
        """Build the torchmetrics for validation and test."""

    # --- shared behaviour -----------------------------------------------------------------
    @property
    def is_thing(self) -> Tensor:
        """bool ``[K]``: True for thing classes."""
        flags = torch.zeros(self.num_classes, dtype=torch.bool)
        flags[self.thing_classes] = True
        return flags

    def freeze_module(self, name: str) -> None:
        """Stop gradients into ``model.<name>`` and keep its norm layers in eval mode."""
        module = getattr(self.model, name, None)
        if module is None:
            raise ValueError(f"{type(self.model).__name__} has no '{name}' to freeze")
        for p in module.parameters():
            p.requires_grad_(False)
        self._frozen = getattr(self, "_frozen", []) + [name]

    def on_train_epoch_start(self) -> None:
        for name in getattr(self, "_frozen", []):
            getattr(self.model, name).eval()

    def load_init_weights(self, path: str | Path) -> None:
        """Initialise from a checkpoint, re-initialising tensors whose shapes differ.

        The checkpoint is loaded with ``weights_only=True`` (a Lightning checkpoint's
        ``state_dict`` or a plain state dict). Tensors missing from it, or of another shape
        (the class head after a change of class count), keep their fresh initialisation; both
        are reported in the log.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model.init_from: checkpoint not found: {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        own = self.state_dict()
        loadable, reshaped = {}, []
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                reshaped.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
            elif k in own:
                loadable[k] = v
        missing = sorted(set(own) - set(loadable) - {r.split(" ")[0] for r in reshaped})
        unexpected = sorted(set(state) - set(own))
        self.load_state_dict(loadable, strict=False)
        self.init_report = {"reinitialised": reshaped, "missing": missing, "unexpected": unexpected}
        log.warning(
            "init_from %s: loaded %d tensors; re-initialised %d with a new shape%s; %d missing; %d unused",
            path, len(loadable), len(reshaped), f" ({'; '.join(reshaped)})" if reshaped else "",
            len(missing), len(unexpected),
        )

    def check_finite(self, loss: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        """Raise ``FloatingPointError`` naming the step and the loss terms if ``loss`` is NaN/Inf."""
        if not bool(torch.isfinite(loss)):
            detail = ""
            if terms:
                detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            raise FloatingPointError(
                f"non-finite training loss {float(loss)} at global step {self.global_step} "
                f"(epoch {self.current_epoch}){': ' + detail if detail else ''}"
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: (backbone | rest) × (decay | no decay)."""
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        # models may name their own norm/embedding parameters (Mask2Former does)
        named = getattr(self.model, "no_weight_decay_parameter_names", None)
        model_no_decay = {f"model.{n}" for n in named()} if callable(named) else set()
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            backbone = name.startswith("model.backbone.")
            no_decay = p.ndim <= 1 or name in model_no_decay or any(k in name for k in NO_DECAY_KEYWORDS)
            groups.setdefault((backbone, no_decay), []).append(p)
        out = []
        for (backbone, no_decay), params in groups.items():
            out.append(
                {
                    "params": params,
                    "lr": hp.lr * (hp.backbone_lr_multiplier if backbone else 1.0),
                    "weight_decay": 0.0 if no_decay else hp.weight_decay,
                }
            )
        return out

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the base lr at ``step`` of ``total``: warm-up, then the schedule."""
        hp = self.hparams
        if step < hp.warmup_steps:
            alpha = step / max(1, hp.warmup_steps)
            warm = hp.warmup_factor * (1 - alpha) + alpha
        else:
            warm = 1.0
        t = min(step, total) / max(1, total)
        if hp.lr_schedule == "poly":
            sched = (1.0 - t) ** hp.poly_power
        elif hp.lr_schedule == "cosine":
            sched = 0.5 * (1.0 + math.cos(math.pi * t))
        elif hp.lr_schedule == "step":
            milestones = hp.lr_milestones if hp.lr_milestones is not None else [0.9, 0.95]
            sched = hp.lr_gamma ** sum(t >= m for m in milestones)
        else:
            sched = 1.0
        return warm * sched

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total = hp.max_steps or int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.lr_factor(s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def write_predictions(self, batch: Any, preds: dict[str, list]) -> None:
        """Write one batch of predictions to ``predict_dir`` (when set)."""
        if not self.hparams.predict_dir:
            return
        if getattr(self, "_prediction_writer", None) is None:
            dm = getattr(self.trainer, "datamodule", None)
            self._prediction_writer = PredictionWriter(
                Path(self.hparams.predict_dir), self.dataset_metadata, self.num_classes,
                reduce_zero_label=bool(getattr(dm, "reduce_zero_label", False)),
            )
        self._prediction_writer.write_batch(batch, preds)

    def on_predict_epoch_end(self) -> None:
        writer = getattr(self, "_prediction_writer", None)
        if writer is None:
            return
        world = self.trainer.world_size
        writer.finish(self.trainer.global_rank, world)
        self._prediction_writer = None
        if world > 1:
            self.trainer.strategy.barrier()
            if self.trainer.is_global_zero:
                PredictionWriter.merge_parts(Path(self.hparams.predict_dir), world)

    @property
    def dataset_metadata(self) -> DatasetMetadata | None:
        """The classes of the trainer's DataModule (None when there is none)."""
        return getattr(getattr(self.trainer, "datamodule", None), "metadata", None)

    def class_colors(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class: the dataset's, or generated ones."""
        meta = self.dataset_metadata
        return meta.colors if meta is not None else distinct_colors(self.num_classes)

    def log_overlays(self, batch_idx: int, batch: Any, preds: dict[str, list]) -> None:
        """Write and log colour overlays of the first validation batch of an epoch (rank 0).

        Args:
            batch_idx: the validation batch index (only batch 0 is drawn).
            batch: the batch.
            preds: per kind (``panoptic``/``semantic``/``instance``) one prediction per image,
                at the targets' size; drawn only when overlays are due.
        """
        n = self.hparams.num_overlays
        if n <= 0 or batch_idx != 0 or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        colors = self.class_colors()
        images = [
            (str(t["image_id"]), prediction_overlay(batch["images"][i], t["image_size"],
                                                    {k: v[i] for k, v in preds.items()}, colors))
            for i, t in enumerate(batch["targets"][:n])
        ]
        # trainer.log_dir is a collective (a broadcast); only rank 0 is here, so ask the logger
        log_dir = getattr(self.logger, "log_dir", None) if self.logger is not None else None
        root = Path(log_dir or self.trainer.default_root_dir)
        out = root / "overlays" / f"epoch_{self.current_epoch:03d}"
        out.mkdir(parents=True, exist_ok=True)
        for name, img in images:
            Image.fromarray(img).save(out / f"{name}.png")
        for logger in self.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):  # TensorBoard
                for name, img in images:
                    exp.add_image(f"val_overlay/{name}", img, self.global_step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # W&B
                logger.log_image("val_overlays", [img for _, img in images], step=self.global_step,
                                 caption=[name for name, _ in images])

    def log_metric_dict(self, prefix: str, values: dict[str, Any], **kwargs: Any) -> None:
        """Log the scalar entries of a metric's ``compute()`` under ``prefix/``."""
        scalars = {
            f"{prefix}/{k}": v for k, v in values.items()
            if isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)
        }
        self.log_dict(scalars, **kwargs)
