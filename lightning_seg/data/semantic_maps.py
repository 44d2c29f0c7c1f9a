"""Image + class-map PNG datasets: ADE20K SceneParsing and custom ``images/`` + ``masks/`` folders.

The *reduce zero label* convention (ADE20K's): the annotation PNGs use 0 for "other" and
``1..K`` for the classes; with ``reduce_zero_label=True`` value 0 becomes ``ignore_index`` and
every other value ``v`` becomes class ``v - 1``, so the model's classes are ``0..K-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_seg.data.base import Record, SegDataset, Transform, segments_from_semantic
from lightning_seg.data.io import DatasetError, read_image, read_label_png
from lightning_seg.structures import IGNORE_INDEX, DatasetMetadata

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def convert_class_map(
    raw: np.ndarray, num_classes: int, reduce_zero_label: bool, ignore_index: int, where: str
) -> np.ndarray:
    """Apply the reduce-zero-label convention and check the values.

    Args:
        raw: integer ``[H,W]`` class map as stored.
        num_classes: ``K``; valid classes are ``0..K-1`` after the conversion.
        reduce_zero_label: map 0 → ignore and ``v`` → ``v-1``.
        ignore_index: the void value (kept as is in the stored map).
        where: file named in the error.

    Returns:
        int64 ``[H,W]`` with :data:`~lightning_seg.structures.IGNORE_INDEX` for void.

    Raises:
        DatasetError: if a value is neither a class nor ignore.
    """
    sem = raw.astype(np.int64)
    void = sem == ignore_index
    if reduce_zero_label:
        void |= sem == 0
        sem = sem - 1
    bad = ~void & ((sem < 0) | (sem >= num_classes))
    if bad.any():
        stored = np.unique(raw[bad]).tolist()
        raise DatasetError(
            f"{where}: class map has values {stored} outside the {num_classes} classes "
            f"(reduce_zero_label={reduce_zero_label}, ignore_index={ignore_index})"
        )
    sem[void] = IGNORE_INDEX
    return sem


class SemanticMapDataset(SegDataset):
    """Pairs of (image, class-map PNG) read into the sample contract.

    Masks and labels hold one segment per class present in the map (semantic-only sources
    have no instances); ``is_thing`` comes from the metadata.

    Args:
        image_paths: one image per sample.
        label_paths: the class-map PNG of each image (same order).
        metadata: the classes (``num_classes`` and thing flags).
        reduce_zero_label: see the module docstring.
        ignore_index: void value in the stored maps (when not reducing the zero label).
        transform: augmentation applied to each record.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        label_paths: Sequence[Path],
        metadata: DatasetMetadata,
        reduce_zero_label: bool = False,
        ignore_index: int = IGNORE_INDEX,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if len(image_paths) != len(label_paths):
            raise ValueError(f"{len(image_paths)} images but {len(label_paths)} label maps")
        self.image_paths = [Path(p) for p in image_paths]
        self.label_paths = [Path(p) for p in label_paths]
        self.metadata = metadata
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.image_paths)

    def image_id(self, index: int) -> Any:
        return self.image_paths[index].stem

    def load_record(self, index: int) -> Record:
        image = read_image(self.image_paths[index])
        raw = read_label_png(self.label_paths[index])
        h, w = image.shape[:2]
        if raw.shape != (h, w):
            raise DatasetError(
                f"{self.label_paths[index]}: label size {raw.shape} differs from image "
                f"{self.image_paths[index].name} size {(h, w)}"
            )
        semantic = convert_class_map(
            raw, self.metadata.num_classes, self.reduce_zero_label, self.ignore_index,
            str(self.label_paths[index]),
        )
        masks, labels, is_thing = segments_from_semantic(semantic, self.metadata.is_thing)
        return Record(
            image=image,
            masks=masks,
            labels=labels,
            iscrowd=np.zeros(len(labels), dtype=bool),
            is_thing=is_thing,
            semantic=semantic,
            image_id=self.image_paths[index].stem,
            orig_size=(h, w),
        )


def pair_by_stem(image_dir: Path, label_dir: Path, label_suffix: str = ".png") -> tuple[list[Path], list[Path]]:
    """Match every image in ``image_dir`` with ``label_dir/<stem><label_suffix>``.

    Raises:
        DatasetError: naming the files when a folder is missing, empty, or an image has no
        label map (or a label map has no image).
    """
    if not image_dir.is_dir():
        raise DatasetError(f"image folder not found: {image_dir}")
    if not label_dir.is_dir():
        raise DatasetError(f"label folder not found: {label_dir}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == label_suffix}
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise DatasetError(f"{image_dir}: several images share a file stem; pairs would be ambiguous")
    unmatched = [p.name for p in images if p.stem not in labels]
    if unmatched:
        raise DatasetError(f"{label_dir}: no label map for images {unmatched[:10]} (of {len(unmatched)})")
    orphans = sorted(set(labels) - set(stems))
    if orphans:
        raise DatasetError(f"{label_dir}: label maps {orphans[:10]} have no image in {image_dir}")
    return images, [labels[p.stem] for p in images]


ADE20K_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20KSemanticDataset(SemanticMapDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, 0 = other → ignore.

    Layout: ``root/images/{training,validation}/*.jpg`` and
    ``root/annotations/{training,validation}/*.png``. Uses ``reduce_zero_label=True`` by
    default (the mmsegmentation/detectron2 convention): stored value ``v`` in ``1..150`` is
    class ``v-1``, and ``0`` is ignored.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"train"``/``"training"`` or ``"val"``/``"validation"``.
        reduce_zero_label: see above; with False, class 0 ("other") is kept as a 151st class.
        transform: augmentation applied to each record.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        reduce_zero_label: bool = True,
        transform: Transform | None = None,
    ) -> None:
        if split not in ADE20K_SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(ADE20K_SPLITS)}, got {split!r}")
        root = Path(root)
        sub = ADE20K_SPLITS[split]
        images, labels = pair_by_stem(root / "images" / sub, root / "annotations" / sub)
        super().__init__(
            images, labels, ade20k_metadata(with_other=not reduce_zero_label),
            reduce_zero_label=reduce_zero_label, transform=transform,
        )


def ade20k_metadata(with_other: bool = False) -> DatasetMetadata:
    """The 150 ADE20K classes (contiguous id ``v-1`` for stored value ``v``).

    Args:
        with_other: prepend class "other" (stored value 0) for ``reduce_zero_label=False``.
    """
    from lightning_seg.data.ade20k_categories import ADE20K_PANOPTIC_CATEGORIES

    cats = sorted(ADE20K_PANOPTIC_CATEGORIES, key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    things = [bool(c["isthing"]) for c in cats]
    colors = [tuple(c["color"]) for c in cats]
    ids = list(range(1, len(names) + 1))
    if with_other:
        return DatasetMetadata(["other"] + names, [0] + ids, [False] + things, [(0, 0, 0)] + colors)
    return DatasetMetadata(names, ids, things, colors)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class-name file not found: {path}")
    names = [ln.strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


class SemanticFolderDataset(SemanticMapDataset):
    """A custom semantic dataset: ``image_dir/*.{jpg,png,...}`` + ``mask_dir/<stem>.png``.

    The masks are single-channel PNGs of class indices. Give the classes either by
    ``class_names`` (a list or a text file with one name per line) or by ``num_classes``.

    Args:
        image_dir: folder of images.
        mask_dir: folder of class-index PNGs with the same file stems.
        num_classes: number of classes (needed when ``class_names`` is not given).
        class_names: names, or the path of a text file of names.
        reduce_zero_label: treat stored 0 as void and shift the rest down by one.
        ignore_index: stored value of void pixels.
        transform: augmentation applied to each record.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        num_classes: int | None = None,
        class_names: Sequence[str] | str | Path | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = IGNORE_INDEX,
        transform: Transform | None = None,
    ) -> None:
        images, labels = pair_by_stem(Path(image_dir), Path(mask_dir))
        super().__init__(
            images, labels, folder_metadata(num_classes, class_names),
            reduce_zero_label=reduce_zero_label, ignore_index=ignore_index, transform=transform,
        )


def folder_metadata(
    num_classes: int | None, class_names: Sequence[str] | str | Path | None
) -> DatasetMetadata:
    """Metadata for a custom folder dataset from names (list or file) or a class count."""
    if isinstance(class_names, (str, Path)):
        class_names = read_class_names(class_names)
    if class_names is None:
        if num_classes is None:
            raise ValueError("a folder dataset needs num_classes or class_names")
        class_names = [f"class_{i}" for i in range(num_classes)]
    elif num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"num_classes={num_classes} but {len(class_names)} class names were given")
    # Semantic-only data has no instances, so every class is treated as stuff.
    return DatasetMetadata(list(class_names), is_thing=[False] * len(class_names))
