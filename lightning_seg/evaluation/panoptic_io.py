"""Reading and writing COCO panoptic files: a JSON with ``segments_info`` plus RGB-id PNGs.

The PNG encodes a segment id per pixel as ``id = R + 256 * G + 256**2 * B``; id 0 is void
unless the JSON lists a segment with id 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightning_seg.data import io
from lightning_seg.structures import DatasetMetadata, PanopticPrediction


def rgb_to_id(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decode an RGB-id image (uint8 ``[H, W, 3]`` array or tensor) to int64 ``[H, W]`` ids."""
    arr = rgb.cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    return torch.from_numpy(io.rgb_to_id(arr))


def id_to_rgb(ids: torch.Tensor) -> np.ndarray:
    """Encode integer ``[H, W]`` ids in ``[0, 256**3)`` as a uint8 ``[H, W, 3]`` numpy RGB-id image."""
    return io.id_to_rgb(ids.long().cpu().numpy())


def read_id_png(path: str | Path) -> torch.Tensor:
    """Read an RGB-id PNG as int64 ``[H, W]`` segment ids; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"cannot read panoptic PNG {path}: {err}") from err
    return rgb_to_id(arr)


def write_id_png(path: str | Path, ids: torch.Tensor) -> None:
    """Write int ``[H, W]`` segment ids as an RGB-id PNG."""
    Image.fromarray(id_to_rgb(ids), mode="RGB").save(Path(path))


def load_json(path: str | Path) -> Any:
    """Load a JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_panoptic_annotation(
    ann: dict[str, Any],
    png_dir: str | Path,
    metadata: DatasetMetadata,
    source: str,
    check_areas: bool = False,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Read one image's panoptic PNG and check it against its ``segments_info``.

    Args:
        ann: one entry of the JSON's ``annotations`` (``file_name``, ``segments_info``).
        png_dir: folder holding the PNGs.
        metadata: classes of the dataset, to map category ids to contiguous ids.
        source: name of the JSON file, used in errors.
        check_areas: also require each segment's ``area`` to equal its pixel count.

    Returns:
        int64 ``[H, W]`` id map, and ``segments_info`` with contiguous ``category_id`` and
        ``iscrowd`` (dataset ``category_id`` kept as ``dataset_category_id``).

    Raises:
        FileNotFoundError / ValueError naming the PNG or the JSON when the PNG is missing, holds
        an id not listed in the JSON, the JSON lists an id absent from the PNG, or a category is
        unknown.
    """
    if "file_name" not in ann or "segments_info" not in ann:
        raise ValueError(f"{source}: annotation of image {ann.get('image_id')} lacks file_name/segments_info")
    png = Path(png_dir) / ann["file_name"]
    ids = read_id_png(png)
    present, counts = torch.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), counts.tolist()))
    listed = set()
    infos = []
    for seg in ann["segments_info"]:
        sid, cid = int(seg["id"]), int(seg["category_id"])
        if sid in listed:
            raise ValueError(f"{source}: segment id {sid} listed twice for {png.name}")
        listed.add(sid)
        if not metadata.has_category(cid):
            raise ValueError(f"{source}: unknown category id {cid} for segment {sid} of {png.name}")
        if sid not in area_of:
            raise ValueError(f"{source}: segment id {sid} of {png.name} is not in the PNG {png}")
        if check_areas and "area" in seg and int(seg["area"]) != area_of[sid]:
            raise ValueError(
                f"{source}: segment {sid} of {png.name} has area {seg['area']} in the JSON but "
                f"{area_of[sid]} pixels in {png}"
            )
        infos.append(
            {
                "id": sid,
                "category_id": metadata.contiguous_id(cid),
                "dataset_category_id": cid,
                "iscrowd": bool(seg.get("iscrowd", 0)),
                "area": area_of[sid],
            }
        )
    unlisted = sorted(i for i in area_of if i not in listed and i != 0)
    if unlisted:
        raise ValueError(f"{png}: segment ids {unlisted[:10]} are in the PNG but not in {source}")
    return ids, infos


def prediction_to_coco_panoptic(
    prediction: PanopticPrediction,
    image_id: int | str,
    file_name: str,
    metadata: DatasetMetadata,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Serialise one :class:`~lightning_seg.structures.PanopticPrediction` for a COCO submission.

    Args:
        prediction: int32 ``[H, W]`` id map and ``segments_info`` with contiguous category ids.
        image_id: the dataset's image id.
        file_name: PNG file name to record in the annotation.
        metadata: maps contiguous ids back to dataset category ids.

    Returns:
        uint8 ``[H, W, 3]`` RGB-id image and the JSON annotation
        ``{"image_id", "file_name", "segments_info": [{"id","category_id","iscrowd","area","bbox"}]}``.
    """
    ids = prediction["panoptic_seg"].long().cpu()
    present, counts = torch.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), counts.tolist()))
    segments = []
    for seg in prediction["segments_info"]:
        sid = int(seg["id"])
        k = int(seg["category_id"])
        if not 0 <= k < metadata.num_classes:
            raise ValueError(f"image {image_id}: segment {sid} has class {k} outside [0, {metadata.num_classes})")
        if sid not in area_of:
            continue  # an empty segment has nothing to write; COCO files list only visible ones
        mask = ids == sid
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        x0, y0 = int(cols[0]), int(rows[0])
        segments.append(
            {
                "id": sid,
                "category_id": metadata.category_ids[k],
                "iscrowd": 0,
                "area": area_of[sid],
                "bbox": [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1],
            }
        )
    listed = {s["id"] for s in segments}
    unlisted = sorted(i for i in area_of if i not in listed and i != 0)
    if unlisted:
        raise ValueError(f"image {image_id}: ids {unlisted[:10]} in panoptic_seg have no segments_info entry")
    return id_to_rgb(ids), {"image_id": image_id, "file_name": file_name, "segments_info": segments}


def file_stem(image_id: int | str) -> str:
    """File name stem of an image id: integers zero-padded to 12 digits, as COCO names its files."""
    return f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)


def write_coco_panoptic(
    predictions: Sequence[PanopticPrediction],
    image_ids: Sequence[int | str],
    metadata: DatasetMetadata,
    json_path: str | Path,
    png_dir: str | Path,
) -> None:
    """Write predictions as a COCO panoptic submission: ``json_path`` plus one PNG per image.

    Args:
        predictions: one :class:`~lightning_seg.structures.PanopticPrediction` per image.
        image_ids: the dataset's image id of each prediction; PNGs are named ``<image_id>.png``
            (zero-padded to 12 digits for integer ids, as COCO names its files).
        metadata: the dataset's classes (for the ``categories`` block and the id map-back).
        json_path: output JSON path.
        png_dir: output folder for the PNGs (created).
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    png_dir = Path(png_dir)
    png_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for pred, image_id in zip(predictions, image_ids):
        stem = file_stem(image_id)
        rgb, ann = prediction_to_coco_panoptic(pred, image_id, f"{stem}.png", metadata)
        Image.fromarray(rgb, mode="RGB").save(png_dir / ann["file_name"])
        annotations.append(ann)
    with Path(json_path).open("w") as f:
        json.dump({"annotations": annotations, "categories": metadata.to_coco_categories()}, f)
