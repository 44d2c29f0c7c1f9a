"""The dataset base class: load a record from disk, transform it, return the sample contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.structures import IGNORE_INDEX, DatasetMetadata, Sample, masks_to_boxes


class Record(TypedDict):
    """A sample in numpy form, as read from disk and as the augmentations see it.

    Keys mirror :class:`lightning_seg.structures.Sample`: ``image`` uint8 ``[H,W,3]``,
    ``masks`` bool ``[N,H,W]``, ``labels`` int64 ``[N]``, ``iscrowd`` bool ``[N]``,
    ``is_thing`` bool ``[N]``, ``semantic`` int64 ``[H,W]``, ``image_id``, ``orig_size``.
    A record has no boxes: :func:`record_to_sample` derives them from the final masks.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    is_thing: np.ndarray
    semantic: np.ndarray
    image_id: Any
    orig_size: tuple[int, int]


Transform = Callable[[Record], Record]


def semantic_from_segments(
    masks: np.ndarray, labels: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Class map painted from segments; pixels covered by no segment are void.

    Args:
        masks: bool ``[N,H,W]``; where they overlap, the later segment wins.
        labels: int64 ``[N]`` contiguous class ids.
        shape: ``(H, W)``.

    Returns:
        int64 ``[H,W]`` with :data:`IGNORE_INDEX` where no mask covers a pixel.
    """
    semantic = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    for m, c in zip(masks, labels):
        semantic[m] = c
    return semantic


def segments_from_semantic(
    semantic: np.ndarray, is_thing: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One segment per class present in a class map (how semantic-only sources fill masks).

    Args:
        semantic: int64 ``[H,W]`` class map with :data:`IGNORE_INDEX` for void.
        is_thing: per class thing flag.

    Returns:
        ``masks`` bool ``[N,H,W]``, ``labels`` int64 ``[N]`` (sorted), ``is_thing`` bool ``[N]``.
    """
    classes = np.unique(semantic)
    classes = classes[classes != IGNORE_INDEX].astype(np.int64)
    masks = semantic[None] == classes[:, None, None]
    flags = np.array([is_thing[c] for c in classes], dtype=bool)
    return masks, classes, flags


def record_to_sample(record: Record) -> Sample:
    """Convert a numpy :class:`Record` to the tensor :class:`Sample` contract.

    ``boxes`` (float32 ``[N, 4]`` xyxy) are computed here from the masks, after every transform:
    boxes moved along with the image would be wrong after crops and rotations, and the boxes
    stored in COCO files are those of polygons, not of the rasterised masks.
    """
    image = np.ascontiguousarray(record["image"].transpose(2, 0, 1))
    h, w = image.shape[1:]
    masks = record["masks"]
    if len(masks) == 0:
        masks = np.zeros((0, h, w), dtype=bool)
    masks_t = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
    return Sample(
        image=torch.from_numpy(image),
        masks=masks_t,
        labels=torch.as_tensor(record["labels"], dtype=torch.int64).reshape(-1),
        iscrowd=torch.as_tensor(record["iscrowd"], dtype=torch.bool).reshape(-1),
        is_thing=torch.as_tensor(record["is_thing"], dtype=torch.bool).reshape(-1),
        semantic=torch.from_numpy(np.ascontiguousarray(record["semantic"], dtype=np.int64)),
        image_id=record["image_id"],
        orig_size=tuple(int(s) for s in record["orig_size"]),  # type: ignore[typeddict-item]
        boxes=masks_to_boxes(masks_t),
    )


class SegDataset(Dataset):
    """Base of every dataset: ``__getitem__`` = :meth:`load_record` → transform → tensors.

    Subclasses implement :meth:`__len__`, :meth:`load_record` and set :attr:`metadata`.

    Args:
        transform: callable on a :class:`Record` (see :mod:`lightning_seg.data.transforms`).
    """

    metadata: DatasetMetadata

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_record(self, index: int) -> Record:  # pragma: no cover - abstract
        """Read sample ``index`` from disk, validated, before any transform."""
        raise NotImplementedError

    def image_id(self, index: int) -> Any:  # pragma: no cover - abstract
        """The dataset's id of sample ``index`` (used by prediction writers)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)}")
        record = self.load_record(index)
        if self.transform is not None:
            record = self.transform(record)
        return record_to_sample(record)
