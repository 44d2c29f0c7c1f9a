"""Datasets, DataModules and augmentation pipelines, all returning the sample contract."""

from lightning_seg.data.base import Record, SegDataset
from lightning_seg.data.coco_instance import CocoInstanceDataset, decode_segmentation
from lightning_seg.data.coco_panoptic import CocoPanopticDataset
from lightning_seg.data.datamodule import SegDataModule
from lightning_seg.data.datamodules import (
    ADE20KPanopticDataModule,
    ADE20KSemanticDataModule,
    CocoInstanceDataModule,
    CocoPanopticDataModule,
    SemanticFolderDataModule,
    SyntheticShapesDataModule,
)
from lightning_seg.data.io import DatasetError
from lightning_seg.data.semantic_maps import ADE20KSemanticDataset, SemanticFolderDataset, SemanticMapDataset
from lightning_seg.data.transforms import Augmentation, build_augmentation

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
