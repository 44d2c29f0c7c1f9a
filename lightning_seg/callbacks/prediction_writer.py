"""``PredictionWriter``: write what ``predict`` returns as submission files, on every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer

from lightning_seg.evaluation.prediction_files import PredictionFiles


class PredictionWriter(Callback):
    """Write each predict batch's predictions under ``output_dir``.

    The task's ``predict_step`` returns ``{kind: [per-image prediction]}`` at each image's
    original size; this callback writes them in the formats ``lightning-seg evaluate`` reads
    (COCO panoptic JSON + PNGs, COCO results JSON, PNG class maps encoded like the dataset's
    ground truth) plus colour overlays (see :class:`~lightning_seg.evaluation.prediction_files.PredictionFiles`).
    Category ids and colours come from the DataModule's ``metadata``. Under DDP every rank writes
    its part and rank 0 merges the JSON files after a barrier.

    Args:
        output_dir: folder of the files.
        overlays: also write ``overlays/<image_id>.png``.
    """

    def __init__(self, output_dir: str, overlays: bool = True) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self._files: PredictionFiles | None = None

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        self._files = PredictionFiles(
            self.output_dir, getattr(dm, "metadata", None), pl_module.num_classes,
            reduce_zero_label=bool(getattr(dm, "reduce_zero_label", False)), overlays=self.overlays,
        )

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._files is None or not outputs:
            return
        self._files.write_batch(batch, outputs)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._files is None:
            return
        world = trainer.world_size
        self._files.finish(trainer.global_rank, world)
        self._files = None
        if world > 1:
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                PredictionFiles.merge_parts(self.output_dir, world)
