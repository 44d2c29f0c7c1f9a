"""Reading and writing single-channel PNG class maps (semantic segmentation files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_seg.structures import IGNORE_INDEX, DatasetMetadata


def read_class_png(
    path: str | Path, reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Read a PNG class map.

    Args:
        path: an 8- or 16-bit single-channel (``L``, ``P`` or ``I;16``) PNG.
        reduce_zero_label: the file uses 0 for void and ``1..K`` for classes (ADE20K): map
            0 to ``ignore_index`` and every other value ``v`` to ``v - 1``.
        ignore_index: void value after ``reduce_zero_label``.

    Returns:
        int64 ``[H, W]`` class map.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-map PNG not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"{path}: a class map must be single-channel, got PIL mode {img.mode}")
            arr = np.array(img, dtype=np.int64)
    except OSError as err:
        raise ValueError(f"cannot read class-map PNG {path}: {err}") from err
    labels = torch.from_numpy(arr)
    if reduce_zero_label:
        labels = torch.where(labels == 0, torch.full_like(labels, ignore_index), labels - 1)
    return labels


def write_class_png(
    path: str | Path,
    class_map: torch.Tensor,
    metadata: DatasetMetadata | None = None,
    reduce_zero_label: bool = False,
) -> None:
    """Write an int ``[H, W]`` class map as a PNG (8-bit if it fits, else 16-bit).

    Args:
        path: output file.
        class_map: contiguous class ids (``ignore_index`` for void).
        metadata: when given, contiguous ids are written as the dataset's category ids.
        reduce_zero_label: write ``id + 1`` and void as 0 (the inverse of
            :func:`read_class_png` with the same flag).
    """
    labels = class_map.long().cpu()
    ignore = metadata.ignore_index if metadata is not None else IGNORE_INDEX
    void = labels == ignore
    if metadata is not None:
        lut = torch.tensor(metadata.category_ids, dtype=torch.int64)
        if bool(((labels < 0) | (labels >= len(lut)))[~void].any()):
            raise ValueError(f"{path}: class map holds ids outside [0, {len(lut)})")
        labels = torch.where(void, labels, lut[labels.clamp(0, len(lut) - 1)])
    if reduce_zero_label:
        labels = torch.where(void, torch.zeros_like(labels), labels + 1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 65535):
        raise ValueError(f"{path}: class ids must lie in [0, 65535] to be written as PNG")
    arr = labels.numpy()
    if arr.size == 0 or arr.max() <= 255:
        Image.fromarray(arr.astype(np.uint8), mode="L").save(Path(path))
    else:
        Image.fromarray(arr.astype(np.uint16)).save(Path(path))
