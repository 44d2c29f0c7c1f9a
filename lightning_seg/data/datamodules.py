"""One DataModule per data source, each a few lines over :class:`SegDataModule`.

Paths are relative to ``root`` unless absolute. The test split reads the validation files
unless given its own; predict reads the test split's.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lightning_seg.data.coco_instance import CocoInstanceDataset
from lightning_seg.data.coco_panoptic import CocoPanopticDataset
from lightning_seg.data.datamodule import SegDataModule, Split, resolve
from lightning_seg.data.io import load_json
from lightning_seg.data.semantic_maps import ADE20KSemanticDataset, SemanticFolderDataset, ade20k_metadata, folder_metadata
from lightning_seg.structures import DatasetMetadata


def _split_files(split: Split, files: dict[str, tuple[Any, ...] | None]) -> tuple[Any, ...]:
    """The files of ``split``: test falls back to val, predict to test."""
    chain = {"train": ["train"], "val": ["val"], "test": ["test", "val"], "predict": ["test", "val"]}[split]
    for name in chain:
        if files.get(name) is not None:
            return files[name]  # type: ignore[return-value]
    raise ValueError(f"no files configured for the {split!r} split")


def _json_categories(root: str, json_file: str) -> DatasetMetadata:
    """The classes of a COCO-style JSON's ``categories`` block (shared by every split)."""
    path = resolve(root, json_file)
    return DatasetMetadata.from_coco_categories(load_json(path).get("categories", []), str(path))


class CocoPanopticDataModule(SegDataModule):
    """COCO panoptic (or any dataset in its format: panoptic JSON + PNGs + images).

    Args:
        root: dataset folder (e.g. ``datasets/coco``).
        train_json, train_images, train_panoptic: JSON, image folder, PNG folder of training.
        val_json, val_images, val_panoptic: the same for validation.
        test_json, test_images, test_panoptic: optional test split (defaults to validation).
        **kwargs: :class:`SegDataModule` arguments (batch size, augmentation, ...).
    """

    def __init__(
        self,
        root: str = "datasets/coco",
        train_json: str = "annotations/panoptic_train2017.json",
        train_images: str = "train2017",
        train_panoptic: str = "annotations/panoptic_train2017",
        val_json: str = "annotations/panoptic_val2017.json",
        val_images: str = "val2017",
        val_panoptic: str = "annotations/panoptic_val2017",
        test_json: str | None = None,
        test_images: str | None = None,
        test_panoptic: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.files = {
            "train": (train_json, train_images, train_panoptic),
            "val": (val_json, val_images, val_panoptic),
            "test": (test_json, test_images, test_panoptic) if test_json else None,
        }

    @cached_property
    def metadata(self) -> DatasetMetadata:
        return _json_categories(self.root, self.files["val"][0])

    def build_dataset(self, split: Split, augmentation) -> Dataset:
        json_file, images, panoptic = _split_files(split, self.files)
        return CocoPanopticDataset(
            resolve(self.root, json_file), resolve(self.root, images), resolve(self.root, panoptic),
            transform=augmentation, metadata=self.metadata,
        )


class ADE20KPanopticDataModule(CocoPanopticDataModule):
    """ADE20K panoptic as laid out by ``scripts/prepare_ade20k_panoptic.py`` (150 classes: 100 things, 50 stuff).

    Args:
        root: the ``ADEChallengeData2016`` folder after preparation.
        **kwargs: :class:`SegDataModule` arguments.
    """

    def __init__(self, root: str = "datasets/ADEChallengeData2016", **kwargs: Any) -> None:
        kwargs.setdefault("image_size", 640)
        super().__init__(
            root=root,
            train_json="ade20k_panoptic_train.json",
            train_images="images/training",
            train_panoptic="ade20k_panoptic_train",
            val_json="ade20k_panoptic_val.json",
            val_images="images/validation",
            val_panoptic="ade20k_panoptic_val",
            **kwargs,
        )


class CocoInstanceDataModule(SegDataModule):
    """COCO instances (or any dataset in its format: instances JSON + images).

    Args:
        root: dataset folder.
        train_json, train_images: training JSON and image folder.
        val_json, val_images: validation JSON and image folder.
        test_json, test_images: optional test split (defaults to validation).
        filter_empty_train: drop training images without annotations (as detectron2 does).
        **kwargs: :class:`SegDataModule` arguments.
    """

    def __init__(
        self,
        root: str = "datasets/coco",
        train_json: str = "annotations/instances_train2017.json",
        train_images: str = "train2017",
        val_json: str = "annotations/instances_val2017.json",
        val_images: str = "val2017",
        test_json: str | None = None,
        test_images: str | None = None,
        filter_empty_train: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.filter_empty_train = filter_empty_train
        self.files = {
            "train": (train_json, train_images),
            "val": (val_json, val_images),
            "test": (test_json, test_images) if test_json else None,
        }

    @cached_property
    def metadata(self) -> DatasetMetadata:
        return _json_categories(self.root, self.files["val"][0])

    def build_dataset(self, split: Split, augmentation) -> Dataset:
        json_file, images = _split_files(split, self.files)
        return CocoInstanceDataset(
            resolve(self.root, json_file), resolve(self.root, images), transform=augmentation,
            filter_empty=self.filter_empty_train and split == "train", metadata=self.metadata,
        )


class ADE20KSemanticDataModule(SegDataModule):
    """ADE20K SceneParsing, 150 classes (``reduce_zero_label``: stored 0 = other → ignore).

    Args:
        root: the ``ADEChallengeData2016`` folder.
        reduce_zero_label: see :class:`~lightning_seg.data.semantic_maps.ADE20KSemanticDataset`.
        **kwargs: :class:`SegDataModule` arguments.
    """

    def __init__(self, root: str = "datasets/ADEChallengeData2016", reduce_zero_label: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.reduce_zero_label = reduce_zero_label

    @cached_property
    def metadata(self) -> DatasetMetadata:
        return ade20k_metadata(with_other=not self.reduce_zero_label)

    def build_dataset(self, split: Split, augmentation) -> Dataset:
        return ADE20KSemanticDataset(
            self.root, "train" if split == "train" else "val",
            reduce_zero_label=self.reduce_zero_label, transform=augmentation,
        )


class SemanticFolderDataModule(SegDataModule):
    """A custom semantic dataset: ``images/<split>/*`` + ``masks/<split>/<stem>.png`` class maps.

    Args:
        root: dataset folder.
        train_images, train_masks, val_images, val_masks: folders (relative to ``root``).
        test_images, test_masks: optional test split (defaults to validation).
        num_classes: number of classes, when ``class_names`` is not given.
        class_names: class names, or a text file with one per line.
        reduce_zero_label: stored 0 is void and ``v`` is class ``v-1``.
        ignore_index: stored value of void pixels.
        **kwargs: :class:`SegDataModule` arguments.
    """

    def __init__(
        self,
        root: str,
        train_images: str = "images/train",
        train_masks: str = "masks/train",
        val_images: str = "images/val",
        val_masks: str = "masks/val",
        test_images: str | None = None,
        test_masks: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | str | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.files = {
            "train": (train_images, train_masks),
            "val": (val_images, val_masks),
            "test": (test_images, test_masks) if test_images else None,
        }
        names = resolve(root, class_names) if isinstance(class_names, str) else class_names
        # set here, not lazily, so a bad class list fails when the config is read
        self.metadata = folder_metadata(num_classes, names)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def build_dataset(self, split: Split, augmentation) -> Dataset:
        images, masks = _split_files(split, self.files)
        return SemanticFolderDataset(
            resolve(self.root, images), resolve(self.root, masks),
            class_names=self.metadata.class_names, reduce_zero_label=self.reduce_zero_label,
            ignore_index=self.ignore_index, transform=augmentation,
        )


class SyntheticShapesDataModule(SegDataModule):
    """The synthetic shapes set (things: shapes; stuff: textured regions), in COCO panoptic format.

    It is generated on first use (deterministically from ``seed``) into ``root`` or the cache
    folder, then read through :class:`~lightning_seg.data.coco_panoptic.CocoPanopticDataset`.

    Args:
        root: where to generate it (default: ``$LIGHTNING_SEG_CACHE`` or ``~/.cache/lightning_seg``).
        num_train, num_val: number of images per split.
        size: image side in pixels.
        seed: generator seed.
        **kwargs: :class:`SegDataModule` arguments (``image_size`` defaults to ``size``).
    """

    def __init__(
        self,
        root: str | None = None,
        num_train: int = 200,
        num_val: int = 50,
        size: int = 128,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("image_size", size)
        super().__init__(**kwargs)
        self.root = root
        self.params = {"num_train": num_train, "num_val": num_val, "image_size": (size, size), "seed": seed}

    @cached_property
    def metadata(self) -> DatasetMetadata:
        from lightning_seg.data.synthetic import SYNTHETIC_CATEGORIES

        return DatasetMetadata.from_coco_categories(SYNTHETIC_CATEGORIES, "synthetic shapes")

    @cached_property
    def dataset_root(self) -> Path:
        """The generated dataset's folder (generating it if missing)."""
        from lightning_seg.data.synthetic import ensure_synthetic_shapes

        return Path(ensure_synthetic_shapes(self.root, **self.params))

    def prepare_data(self) -> None:
        self.dataset_root  # noqa: B018 - generate once on the main process

    def build_dataset(self, split: Split, augmentation) -> Dataset:
        sub = self.dataset_root / ("train" if split == "train" else "val")
        return CocoPanopticDataset(
            sub / "panoptic.json", sub / "images", sub / "panoptic",
            transform=augmentation, metadata=self.metadata,
        )
