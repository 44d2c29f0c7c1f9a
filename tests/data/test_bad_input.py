"""Each kind of bad input stops with an error naming the file and the id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_seg.data import CocoInstanceDataset, CocoPanopticDataset, DatasetError, SemanticFolderDataset
from lightning_seg.data.io import id_to_rgb

CATS = [
    {"id": 1, "name": "disc", "isthing": 1},
    {"id": 7, "name": "ground", "isthing": 0},
]


def _write_panoptic(root: Path, segments=None, png_ids=None, file_name="a.png", image_size=(8, 10)) -> Path:
    """One 8x10 image: segment 5 (disc) in the top-left block, segment 9 (ground) elsewhere."""
    (root / "images").mkdir(exist_ok=True)
    (root / "pan").mkdir(exist_ok=True)
    h, w = image_size
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / "a.jpg")
    if png_ids is None:
        png_ids = np.full((8, 10), 9)
        png_ids[:4, :4] = 5
    Image.fromarray(id_to_rgb(png_ids)).save(root / "pan" / "a.png")
    if segments is None:
        segments = [{"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 9, "category_id": 7, "iscrowd": 0}]
    data = {
        "images": [{"id": 3, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [{"image_id": 3, "file_name": file_name, "segments_info": segments}],
        "categories": CATS,
    }
    (root / "pan.json").write_text(json.dumps(data))
    return root / "pan.json"


def _dataset(root: Path) -> CocoPanopticDataset:
    return CocoPanopticDataset(root / "pan.json", root / "images", root / "pan")


def test_valid_panoptic_loads(tmp_path):
    _write_panoptic(tmp_path)
    s = _dataset(tmp_path)[0]
    assert s["masks"].shape == (2, 8, 10) and s["labels"].tolist() == [0, 1]


def test_missing_image(tmp_path):
    _write_panoptic(tmp_path)
    (tmp_path / "images" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image 3.*a\.jpg"):
        _dataset(tmp_path)


def test_missing_png(tmp_path):
    _write_panoptic(tmp_path)
    (tmp_path / "pan" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"image 3: panoptic PNG not found.*a\.png"):
        _dataset(tmp_path)


def test_corrupt_image(tmp_path):
    _write_panoptic(tmp_path)
    (tmp_path / "images" / "a.jpg").write_bytes(b"not a jpeg at all")
    ds = _dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"a\.jpg: cannot read image"):
        ds[0]


def test_corrupt_png(tmp_path):
    _write_panoptic(tmp_path)
    (tmp_path / "pan" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match=r"a\.png: cannot read panoptic PNG"):
        _dataset(tmp_path)[0]


def test_segment_in_json_absent_from_png(tmp_path):
    segs = [
        {"id": 5, "category_id": 1},
        {"id": 9, "category_id": 7},
        {"id": 12, "category_id": 1},
    ]
    _write_panoptic(tmp_path, segments=segs)
    with pytest.raises(DatasetError, match=r"a\.png: segments \[12\] of image 3 are in the JSON"):
        _dataset(tmp_path)[0]


def test_segment_in_png_absent_from_json(tmp_path):
    _write_panoptic(tmp_path, segments=[{"id": 5, "category_id": 1}])
    with pytest.raises(DatasetError, match=r"a\.png: ids \[9\] appear in the PNG but not in the JSON"):
        _dataset(tmp_path)[0]


def test_unknown_category(tmp_path):
    _write_panoptic(tmp_path, segments=[{"id": 5, "category_id": 1}, {"id": 9, "category_id": 99}])
    with pytest.raises(DatasetError, match=r"image 3 \(a\.png\), segment 9: unknown category_id 99"):
        _dataset(tmp_path)


def test_file_name_escapes_root(tmp_path):
    _write_panoptic(tmp_path, file_name="../../etc/passwd")
    with pytest.raises(DatasetError, match=r"escapes the dataset folder"):
        _dataset(tmp_path)


def test_png_size_differs_from_image(tmp_path):
    _write_panoptic(tmp_path, image_size=(9, 10))
    with pytest.raises(DatasetError, match=r"a\.png: PNG size \(8, 10\) differs from image a\.jpg size \(9, 10\)"):
        _dataset(tmp_path)[0]


def test_instance_unknown_category_and_bad_rle(tmp_path):
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "b.jpg")
    data = {
        "images": [{"id": 1, "file_name": "b.jpg", "height": 6, "width": 6}],
        "annotations": [{"id": 11, "image_id": 1, "category_id": 4, "segmentation": [[0, 0, 4, 0, 4, 4]]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"inst\.json: annotation 11 \(image 1\): unknown category_id 4"):
        CocoInstanceDataset(tmp_path / "inst.json", tmp_path)
    data["annotations"][0].update(category_id=1, segmentation={"size": [5, 6], "counts": [30]})
    (tmp_path / "inst.json").write_text(json.dumps(data))
    ds = CocoInstanceDataset(tmp_path / "inst.json", tmp_path)
    with pytest.raises(DatasetError, match=r"annotation 11 \(image 1\): RLE size \[5, 6\] differs"):
        ds[0]


def test_class_map_value_out_of_range(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 3
    m[1, 1] = 255  # ignore is fine
    Image.fromarray(m).save(tmp_path / "masks" / "x.png")
    ds = SemanticFolderDataset(tmp_path / "images", tmp_path / "masks", num_classes=3)
    with pytest.raises(DatasetError, match=r"x\.png: class map has values \[3\] outside the 3 classes"):
        ds[0]
    assert SemanticFolderDataset(tmp_path / "images", tmp_path / "masks", num_classes=4)[0]["semantic"][1, 1] == 255


def test_folder_image_without_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(DatasetError, match=r"no label map for images \['lonely\.png'\]"):
        SemanticFolderDataset(tmp_path / "images", tmp_path / "masks", num_classes=2)


def test_bad_json(tmp_path):
    (tmp_path / "pan.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"pan\.json: not valid JSON"):
        _dataset(tmp_path)
