"""``ValidationOverlays``: colour overlays of the first validation batch of every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from PIL import Image

from lightning_seg.structures import distinct_colors
from lightning_seg.visualization import prediction_overlay


class ValidationOverlays(Callback):
    """Draw the predictions of the first ``num_images`` images of validation batch 0 (rank 0).

    The task's ``validation_step`` returns its predictions ``{kind: [per-image prediction]}``
    at the targets' size; the overlays (panoptic, semantic or instance colours over the image,
    class colours from the DataModule's ``metadata``) are written to
    ``<log dir>/overlays/epoch_NNN/<image_id>.png`` and sent to TensorBoard (``add_image``) or
    W&B (``log_image``). The sanity check draws nothing.

    Args:
        num_images: images drawn per epoch.
    """

    def __init__(self, num_images: int = 4) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"ValidationOverlays: num_images must be >= 1, got {num_images}")
        self.num_images = num_images

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or not outputs or not trainer.is_global_zero or trainer.sanity_checking:
            return
        meta = getattr(getattr(trainer, "datamodule", None), "metadata", None)
        colors = meta.colors if meta is not None else distinct_colors(pl_module.num_classes)
        images = [
            (str(t["image_id"]), prediction_overlay(batch["images"][i], t["image_size"],
                                                    {k: v[i] for k, v in outputs.items()}, colors))
            for i, t in enumerate(batch["targets"][: self.num_images])
        ]
        # trainer.log_dir is a collective (a broadcast); only rank 0 is here, so ask the logger
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
        out = Path(log_dir or trainer.default_root_dir) / "overlays" / f"epoch_{trainer.current_epoch:03d}"
        out.mkdir(parents=True, exist_ok=True)
        for name, img in images:
            Image.fromarray(img).save(out / f"{name}.png")
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):  # TensorBoard
                for name, img in images:
                    exp.add_image(f"val_overlay/{name}", img, trainer.global_step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # W&B
                logger.log_image("val_overlays", [img for _, img in images], step=trainer.global_step,
                                 caption=[name for name, _ in images])
