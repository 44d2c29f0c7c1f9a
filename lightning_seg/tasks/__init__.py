"""LightningModules, one per task family, over the shared :class:`SegTask` base."""

from lightning_seg.tasks.base import SegTask
from lightning_seg.tasks.classic import ClassicSegmentationModule
from lightning_seg.tasks.dense_instance import DenseInstanceModule
from lightning_seg.tasks.detr import DETRModule
from lightning_seg.tasks.mask_classification import MaskClassificationModule
from lightning_seg.tasks.max_deeplab import MaXDeepLabModule
from lightning_seg.tasks.rcnn import RCNNModule
from lightning_seg.tasks.semantic import SemanticSegmentationModule

__all__ = ["ClassicSegmentationModule", "DETRModule", "DenseInstanceModule", "MaXDeepLabModule", "MaskClassificationModule", "RCNNModule", "SegTask", "SemanticSegmentationModule"]
