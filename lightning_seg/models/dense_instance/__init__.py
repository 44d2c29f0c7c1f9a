"""Single-stage instance segmentation: SOLO, decoupled SOLO and SOLOv2 (grid cells) and YOLACT
(prototypes and coefficients)."""

from lightning_seg.models.dense_instance.settings import SOLOSettings, YOLACTSettings
from lightning_seg.models.dense_instance.solo import (
    SOLO,
    GridInstanceModel,
    GridOutputs,
    SOLOv2,
    coordinate_channels,
    solo_levels,
)
from lightning_seg.models.dense_instance.yolact import (
    YOLACT,
    PrototypeNet,
    YOLACTHead,
    YOLACTOutputs,
)

__all__ = [
    "GridInstanceModel",
    "GridOutputs",
    "PrototypeNet",
    "SOLO",
    "SOLOSettings",
    "SOLOv2",
    "YOLACT",
    "YOLACTHead",
    "YOLACTOutputs",
    "YOLACTSettings",
    "coordinate_channels",
    "solo_levels",
]
