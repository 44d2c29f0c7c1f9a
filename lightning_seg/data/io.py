"""File reading shared by the datasets: images, id-encoded PNGs, JSON, safe paths.

Every reader raises :class:`DatasetError` naming the file on a missing or corrupt input, so a
bad dataset stops the run with a message a user can act on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent with its annotations."""


def resolve_inside(root: str | Path, file_name: str, what: str = "file") -> Path:
    """Join ``root / file_name`` and refuse names that escape ``root``.

    Args:
        root: the folder the annotation file refers to.
        file_name: a relative name read from an annotation file.
        what: description used in the error (e.g. ``"image of id 42"``).

    Raises:
        DatasetError: if ``file_name`` is absolute or climbs out of ``root`` (``..``).
    """
    root_p = Path(root).resolve()
    path = (root_p / file_name).resolve()
    if Path(file_name).is_absolute() or not path.is_relative_to(root_p):
        raise DatasetError(f"{what}: file_name {file_name!r} escapes the dataset folder {root_p}")
    return path


def load_json(path: str | Path) -> Any:
    """Read a JSON file, with the file named in any error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e


def load_coco_json(path: str | Path, format_name: str = "COCO") -> dict[str, Any]:
    """Read a COCO-style JSON and check it has its ``images``, ``annotations`` and ``categories``."""
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise DatasetError(f"{path}: missing the '{key}' list of the {format_name} format")
        if not isinstance(data[key], list):
            raise DatasetError(
                f"{path}: '{key}' of the {format_name} format must be a list, got {type(data[key]).__name__}"
            )
    return data


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Returns:
        uint8 ``[H, W, 3]`` array.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (class map) without any colour conversion.

    Returns:
        ``[H, W]`` integer array (uint8 or uint16 as stored).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label map not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                raise DatasetError(
                    f"{path}: label map is {im.mode}; expected a single-channel class-index PNG"
                )
            # "L", "I;16" and palette ("P") PNGs all store the class index as the pixel value
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read label map ({e})") from e


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG and decode segment ids ``R + 256·G + 256²·B``.

    Returns:
        int64 ``[H, W]`` segment-id map (0 = void).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"panoptic PNG not found: {path}")
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read panoptic PNG ({e})") from e
    return rgb_to_id(rgb)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode COCO panoptic RGB, ``id = R + 256·G + 256²·B``.

    Args:
        rgb: uint8 ``[H, W, 3]``.

    Returns:
        int64 ``[H, W]`` segment ids.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"an RGB-id image must be [H,W,3], got {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode an integer ``[H, W]`` segment-id map (ids in ``[0, 256³)``) as uint8 ``[H, W, 3]`` RGB."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must lie in [0, 256**3), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
