"""Each kind of bad input stops with an error naming the file and the id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lightning_seg.data import (
    CocoInstanceDataset,
    CocoPanopticDataset,
    DatasetError,
    SemanticFolderDataset,
)
from lightning_seg.data.io import id_to_rgb
from lightning_seg.structures import DatasetMetadata

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
    # checked when the file is loaded, not when the sample is read
    with pytest.raises(DatasetError, match=r"annotation 11 \(image 1\): RLE size \[5, 6\] differs"):
        CocoInstanceDataset(tmp_path / "inst.json", tmp_path)


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


def _instance_json(**ann) -> dict:
    """A valid instances JSON: 6x6 image 1 with annotation 11 (category 1), image 2 without any."""
    base = {
        "id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0,
        "segmentation": [[0, 0, 4, 0, 4, 4]], "bbox": [0, 0, 4, 4], "area": 8.0,
    }
    return {
        "images": [
            {"id": 1, "file_name": "b.jpg", "height": 6, "width": 6},
            {"id": 2, "file_name": "c.jpg", "height": 6, "width": 6},
        ],
        "annotations": [{**base, **ann}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }


def _write_instance(root: Path, data: dict) -> Path:
    for name in ("b.jpg", "c.jpg"):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / name)
    # json.dumps writes float("nan") / float("inf") as the NaN / Infinity literals json.load reads back
    (root / "inst.json").write_text(json.dumps(data))
    return root / "inst.json"


def _rle_string(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def test_valid_instance_file_keeps_images_without_annotations(tmp_path):
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:6] = True
    data = _instance_json()
    data["annotations"].append(
        {"id": 12, "image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": {"size": [6, 6], "counts": _rle_string(mask)}}
    )
    data["annotations"].append(
        {"id": 13, "image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": {"size": [6, 6], "counts": [8, 4, 24]}}
    )
    path = _write_instance(tmp_path, data)
    ds = CocoInstanceDataset(path, tmp_path)
    assert len(ds) == 2 and ds.image_id(1) == 2 and ds[1]["masks"].shape == (0, 6, 6)
    assert np.array_equal(ds[0]["masks"][1].numpy(), mask)
    assert int(ds[0]["masks"][2].sum()) == 4
    assert len(CocoInstanceDataset(path, tmp_path, filter_empty=True)) == 1


def _set(path: str, value):
    """Mutation setting ``data[path]`` (``/``-separated keys and list indices)."""

    def apply(data: dict) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split("/")]
        target = data
        for k in parents:
            target = target[k]
        target[last] = value

    return apply


def _drop(path: str):
    """Mutation deleting ``data[path]``."""

    def apply(data: dict) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split("/")]
        target = data
        for k in parents:
            target = target[k]
        del target[last]

    return apply


def _append(key: str, entry: dict):
    """Mutation appending ``entry`` to ``data[key]``."""
    return lambda data: data[key].append(entry)


NAN, INF = float("nan"), float("inf")
A11 = r"inst\.json: annotation 11 \(image 1\)"
SEG = "annotations/0/segmentation"

BAD_INSTANCE_FILES = {
    # images
    "duplicate_image_id": (
        _append("images", {"id": 1, "file_name": "d.jpg", "height": 6, "width": 6}),
        r"inst\.json: image 1: image 'id' appears twice in 'images'",
    ),
    "file_name_under_two_ids": (
        _append("images", {"id": 3, "file_name": "./b.jpg", "height": 6, "width": 6}),
        r"inst\.json: image 3: 'file_name' '\./b\.jpg' is also the file of image 1",
    ),
    "image_height_not_int": (_set("images/0/height", "6"), r"inst\.json: image 1: 'height' must be a positive integer"),
    "image_width_zero": (_set("images/0/width", 0), r"inst\.json: image 1: 'width' must be a positive integer"),
    "image_id_not_hashable": (_set("images/0/id", [1]), r"inst\.json: image 'id' must be an integer or a string"),
    "images_not_a_list": (_set("images", {"1": {}}), r"inst\.json: 'images' of the COCO format must be a list"),
    # polygons, bbox, area
    "polygon_nan": (_set(SEG, [[0, 0, 4, 0, NAN, 4]]), A11 + r": 'segmentation' polygon 0 has non-finite coordinates"),
    "polygon_infinity": (
        _set(SEG, [[0, 0, 4, 0, 4, 4], [0, 0, -INF, 1, 1, 1]]),
        A11 + r": 'segmentation' polygon 1 has non-finite coordinates",
    ),
    "polygon_odd_length": (
        _set(SEG, [[0, 0, 4, 0, 4, 4, 1]]),
        A11 + r": 'segmentation' polygon 0 has an odd number of coordinates \(7\)",
    ),
    "polygon_two_points": (_set(SEG, [[0, 0, 4, 4]]), A11 + r": polygon with fewer than 3 points \(polygon 0"),
    "polygon_string_coordinate": (
        _set(SEG, [[0, 0, 4, "0", 4, 4]]),
        A11 + r": 'segmentation' polygon 0 has non-numeric coordinates",
    ),
    "polygon_not_a_list": (_set(SEG, [0, 0, 4, 0, 4, 4]), A11 + r": 'segmentation' polygon 0 is a int"),
    "empty_polygon_list": (_set(SEG, []), A11 + r": empty polygon list"),
    "bbox_nan": (_set("annotations/0/bbox", [0, 0, NAN, 4]), A11 + r": 'bbox' has non-finite values"),
    "bbox_infinity": (_set("annotations/0/bbox", [INF, 0, 4, 4]), A11 + r": 'bbox' has non-finite values"),
    "bbox_negative_height": (_set("annotations/0/bbox", [0, 0, 4, -1]), A11 + r": 'bbox' has a negative width or height"),
    "bbox_three_numbers": (_set("annotations/0/bbox", [0, 0, 4]), A11 + r": 'bbox' must be 4 numbers"),
    "area_nan": (_set("annotations/0/area", NAN), A11 + r": 'area' must be a finite non-negative number, got nan"),
    "area_infinity": (_set("annotations/0/area", INF), A11 + r": 'area' must be a finite non-negative number, got inf"),
    "area_negative": (_set("annotations/0/area", -3), A11 + r": 'area' must be a finite non-negative number, got -3"),
    # categories
    "category_without_id": (_set("categories/1", {"name": "y"}), r"inst\.json: categories\[1\]: category without 'id'"),
    "category_without_name": (_set("categories/1", {"id": 2}), r"inst\.json: category 2: category without 'name'"),
    "category_id_not_int": (
        _set("categories/1", {"id": "2", "name": "y"}),
        r"inst\.json: categories\[1\]: category 'id' must be an integer, got '2'",
    ),
    "duplicate_category_id": (
        _set("categories/1", {"id": 1, "name": "y"}),
        r"inst\.json: category 1: duplicate category 'id' in 'categories'",
    ),
    "category_id_string_in_annotation": (
        _set("annotations/0/category_id", "1"),
        A11 + r": unknown category_id '1'",
    ),
    # annotations
    "annotation_without_image_id": (_drop("annotations/0/image_id"), r"inst\.json: annotation 11 has no 'image_id'"),
    "annotation_without_category_id": (_drop("annotations/0/category_id"), A11 + r" has no 'category_id'"),
    "annotation_without_segmentation": (_drop("annotations/0/segmentation"), A11 + r" has no 'segmentation'"),
    "annotation_unknown_image_id": (
        _set("annotations/0/image_id", 99),
        r"inst\.json: annotation 11 refers to image_id 99 with no 'images' entry",
    ),
    "annotation_without_id_named_by_index": (
        lambda data: (data["annotations"][0].pop("id"), data["annotations"][0].pop("image_id")),
        r"inst\.json: annotations\[0\] \(no 'id'\) has no 'image_id'",
    ),
    "duplicate_annotation_id": (
        _append("annotations", {"id": 11, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]}),
        r"inst\.json: annotation 11 \(image 2\): duplicate annotation 'id' \(also used by an annotation of image 1\)",
    ),
    "iscrowd_two": (_set("annotations/0/iscrowd", 2), A11 + r": 'iscrowd' must be 0 or 1, got 2"),
    "iscrowd_string": (_set("annotations/0/iscrowd", "1"), A11 + r": 'iscrowd' must be 0 or 1, got '1'"),
    "annotations_not_a_list": (_set("annotations", {}), r"inst\.json: 'annotations' of the COCO format must be a list"),
    # RLE
    "rle_size_not_image_size": (
        _set(SEG, {"size": [6, 5], "counts": [30]}),
        A11 + r": RLE size \[6, 5\] differs from the image size \[6, 6\]",
    ),
    "rle_size_malformed": (_set(SEG, {"size": [6], "counts": [36]}), A11 + r": RLE 'size' must be \[height, width\]"),
    "rle_counts_too_few_pixels": (
        _set(SEG, {"size": [6, 6], "counts": [30]}),
        A11 + r": RLE 'counts' cover 30 pixels, the size \[6, 6\] has 36",
    ),
    "rle_counts_too_many_pixels": (
        _set(SEG, {"size": [6, 6], "counts": [30, 4, 1000]}),
        A11 + r": RLE 'counts' cover 1034 pixels",
    ),
    "rle_counts_negative": (_set(SEG, {"size": [6, 6], "counts": [40, -4]}), A11 + r": RLE 'counts' has negative run"),
    "rle_counts_float": (_set(SEG, {"size": [6, 6], "counts": [36.0]}), A11 + r": RLE 'counts' list has non-integer"),
    "rle_counts_number": (
        _set(SEG, {"size": [6, 6], "counts": 36}),
        A11 + r": RLE 'counts' must be a list of run lengths or a compressed string, got int",
    ),
    "rle_string_bad_characters": (
        _set(SEG, {"size": [6, 6], "counts": "~~"}),
        A11 + r": RLE 'counts' string has characters outside the compressed RLE alphabet",
    ),
    # "P" (0x50) has the continuation bit set and nothing follows it
    "rle_string_truncated": (_set(SEG, {"size": [6, 6], "counts": "P"}), A11 + r": RLE 'counts' string is truncated"),
    "rle_string_wrong_total": (
        _set(SEG, {"size": [6, 6], "counts": _rle_string(np.ones((5, 6), bool))}),
        A11 + r": RLE 'counts' cover 30 pixels, the size \[6, 6\] has 36",
    ),
    "rle_without_counts": (_set(SEG, {"size": [6, 6]}), A11 + r": unsupported segmentation of type dict"),
}


@pytest.mark.parametrize("mutate, message", BAD_INSTANCE_FILES.values(), ids=BAD_INSTANCE_FILES.keys())
def test_instance_malformed_annotation_fails_on_load(tmp_path, mutate, message):
    data = _instance_json()
    mutate(data)
    path = _write_instance(tmp_path, data)
    with pytest.raises(DatasetError, match=message):
        CocoInstanceDataset(path, tmp_path)


def test_instance_crowd_checked_even_when_dropped(tmp_path):
    path = _write_instance(tmp_path, _instance_json(iscrowd=1, segmentation={"size": [6, 6], "counts": [30]}))
    with pytest.raises(DatasetError, match=A11 + r": RLE 'counts' cover 30 pixels"):
        CocoInstanceDataset(path, tmp_path, include_crowd=False)


def test_instance_categories_checked_with_metadata_override(tmp_path):
    data = _instance_json()
    data["categories"][1] = {"id": 1, "name": "y"}
    path = _write_instance(tmp_path, data)
    metadata = DatasetMetadata.from_coco_categories([{"id": 1, "name": "x"}])
    with pytest.raises(DatasetError, match=r"inst\.json: category 1: duplicate category 'id'"):
        CocoInstanceDataset(path, tmp_path, metadata=metadata)
