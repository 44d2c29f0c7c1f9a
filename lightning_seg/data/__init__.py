"""Datasets, DataModules and augmentation pipelines, all returning the sample contract.

The DataModules (which import Lightning) load on first use, so the datasets, readers and
transforms stay importable without Lightning (the offline evaluator reads files through them).
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_seg.data.base import Record, SegDataset
from lightning_seg.data.coco_instance import CocoInstanceDataset, decode_segmentation
from lightning_seg.data.coco_panoptic import CocoPanopticDataset
from lightning_seg.data.io import DatasetError
from lightning_seg.data.semantic_maps import ADE20KSemanticDataset, SemanticFolderDataset, SemanticMapDataset
from lightning_seg.data.transforms import Augmentation, build_augmentation

_LAZY = {
    "SegDataModule": "lightning_seg.data.datamodule",
    "ADE20KPanopticDataModule": "lightning_seg.data.datamodules",
    "ADE20KSemanticDataModule": "lightning_seg.data.datamodules",
    "CocoInstanceDataModule": "lightning_seg.data.datamodules",
    "CocoPanopticDataModule": "lightning_seg.data.datamodules",
    "SemanticFolderDataModule": "lightning_seg.data.datamodules",
    "SyntheticShapesDataModule": "lightning_seg.data.datamodules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_seg.data' has no attribute {name!r}")


__all__ = [
    "ADE20KPanopticDataModule",
    "ADE20KSemanticDataModule",
    "ADE20KSemanticDataset",
    "Augmentation",
    "CocoInstanceDataModule",
    "CocoInstanceDataset",
    "CocoPanopticDataModule",
    "CocoPanopticDataset",
    "DatasetError",
    "Record",
    "SegDataModule",
    "SegDataset",
    "SemanticFolderDataModule",
    "SemanticFolderDataset",
    "SemanticMapDataset",
    "SyntheticShapesDataModule",
    "build_augmentation",
    "decode_segmentation",
]
