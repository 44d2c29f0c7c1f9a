"""``SegDataModule``: what every data source shares — splits, loaders, augmentation, collate.

A concrete DataModule only says how to build the dataset of a split
(:meth:`SegDataModule.build_dataset`) and what its classes are
(:attr:`SegDataModule.metadata`). Under DDP nothing changes: Lightning inserts a
``DistributedSampler`` into the loaders built here.
"""

from __future__ import annotations

from functools import cached_property, partial
from pathlib import Path
from typing import Literal

from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_seg.data.transforms import AugmentationSpec, build_augmentation
from lightning_seg.structures import DatasetMetadata, collate

Split = Literal["train", "val", "test", "predict"]


class SegDataModule(LightningDataModule):
    """Base DataModule of every data source.

    Args:
        batch_size: training batch size per process.
        eval_batch_size: batch size for validation/test/predict (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        image_size: size used by the augmentation presets (crop size for ``lsj``/``ade20k``,
            shortest edge for ``resize``).
        train_augmentation: preset name or list of ``{"type": ..., ...}`` specs for training
            (see :mod:`lightning_seg.data.transforms`).
        eval_augmentation: the same for validation/test/predict (usually ``resize`` or None).
        size_divisibility: batches are padded to a multiple of this.
        pin_memory: pin host memory in the loaders (useful on GPU).
        eval_at_original_size: the evaluation augmentation transforms the image only; targets
            keep their original resolution and predictions are scored there (the COCO and
            ADE20K protocols). With False, targets are resized with the image.
    """

    def __init__(
        self,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 512,
        train_augmentation: AugmentationSpec = "flip",
        eval_augmentation: AugmentationSpec = None,
        size_divisibility: int = 32,
        pin_memory: bool = False,
        eval_at_original_size: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.train_augmentation = train_augmentation
        self.eval_augmentation = eval_augmentation
        self.size_divisibility = size_divisibility
        self.pin_memory = pin_memory
        self.eval_at_original_size = eval_at_original_size
        self.datasets: dict[str, Dataset] = {}

    # --- what a concrete source provides -------------------------------------------------
    @cached_property
    def metadata(self) -> DatasetMetadata:
        """The classes of this source (read cheaply, without building the datasets)."""
        raise NotImplementedError

    def build_dataset(self, split: Split, augmentation) -> Dataset:  # pragma: no cover - abstract
        """The dataset of ``split`` with ``augmentation`` applied to each record."""
        raise NotImplementedError

    # --- what linked model arguments read ------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (linked to ``model.num_classes`` by the CLI)."""
        return self.metadata.num_classes

    @property
    def thing_classes(self) -> list[int]:
        """Contiguous ids of thing classes (linked to ``model.thing_classes`` by the CLI)."""
        return self.metadata.thing_ids

    @property
    def class_names(self) -> list[str]:
        """Class names in contiguous-id order."""
        return self.metadata.class_names

    # --- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        splits: tuple[Split, ...] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }.get(stage or "", ("train", "val", "test", "predict"))
        for split in splits:
            if split not in self.datasets:
                train = split == "train"
                spec = self.train_augmentation if train else self.eval_augmentation
                aug = build_augmentation(spec, self.image_size, image_only=not train and self.eval_at_original_size)
                self.datasets[split] = self.build_dataset(split, aug)

    def _loader(self, split: Split) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        train = split == "train"
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(self.datasets[split]) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate, size_divisibility=self.size_divisibility),
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


def resolve(root: str | Path | None, path: str | Path) -> Path:
    """``path`` if absolute, else ``root / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root).expanduser() / p
