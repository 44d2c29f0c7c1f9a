"""Lightning callbacks for the I/O around a task: prediction files and validation overlays.

Both are configurable from the YAML (``trainer.callbacks``) like ``ModelCheckpoint``; the task
arguments ``predict_dir`` and ``num_overlays`` add them with their defaults.
"""

from lightning_seg.callbacks.prediction_writer import PredictionWriter
from lightning_seg.callbacks.validation_overlays import ValidationOverlays

__all__ = ["PredictionWriter", "ValidationOverlays"]
