"""lightning_seg: a PyTorch Lightning research framework for semantic, instance and panoptic segmentation."""

__version__ = "0.1.0"
