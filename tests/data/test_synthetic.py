"""Synthetic shapes: determinism, JSON <-> PNG agreement, and the concurrency-safe cache."""

from __future__ import annotations

import filecmp
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_seg.data.io import id_to_rgb, rgb_to_id
from lightning_seg.data.synthetic import (
    CROWD_EVERY,
    MIN_VISIBLE_FRACTION,
    SYNTHETIC_CATEGORIES,
    ensure_synthetic_shapes,
    generate_synthetic_shapes,
    segments_from_id_map,
)

SMALL = {"num_train": 10, "num_val": 3, "image_size": (72, 96), "seed": 3, "max_instances": 5}


def _read_ids(path: Path) -> np.ndarray:
    """Plain decoding of a COCO panoptic PNG, independent of the module under test."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _all_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_synthetic_shapes(tmp_path_factory.mktemp("syn") / "a", **SMALL)


def test_same_seed_gives_byte_identical_files(small_dataset, tmp_path):
    again = generate_synthetic_shapes(tmp_path / "b", **SMALL)
    files = _all_files(small_dataset)
    assert files == _all_files(again)
    assert len(files) == 2 * (10 + 3) + 2
    match, mismatch, errors = filecmp.cmpfiles(
        small_dataset, again, [str(f) for f in files], shallow=False
    )
    assert mismatch == [] and errors == []


def test_other_seed_gives_other_images(small_dataset, tmp_path):
    other = generate_synthetic_shapes(tmp_path / "c", **{**SMALL, "seed": 4})
    a = np.asarray(Image.open(small_dataset / "train/images/000001.png"))
    b = np.asarray(Image.open(other / "train/images/000001.png"))
    assert not np.array_equal(a, b)


def test_val_split_does_not_depend_on_train_size(small_dataset, tmp_path):
    other = generate_synthetic_shapes(tmp_path / "d", **{**SMALL, "num_train": 2})
    assert filecmp.cmp(
        small_dataset / "val/panoptic.json", other / "val/panoptic.json", shallow=False
    )


@pytest.mark.parametrize("split,count", [("train", 10), ("val", 3)])
def test_json_agrees_with_png_pixels(small_dataset, split, count):
    doc = json.loads((small_dataset / split / "panoptic.json").read_text())
    assert set(doc) == {"info", "images", "annotations", "categories"}
    assert doc["categories"] == SYNTHETIC_CATEGORIES
    cats = {c["id"]: c for c in doc["categories"]}
    assert len(doc["images"]) == len(doc["annotations"]) == count
    images = {im["id"]: im for im in doc["images"]}
    for ann in doc["annotations"]:
        im = images[ann["image_id"]]
        assert (im["height"], im["width"]) == (72, 96)
        rgb = np.asarray(Image.open(small_dataset / split / "images" / im["file_name"]))
        assert rgb.dtype == np.uint8 and rgb.shape == (72, 96, 3)
        ids = _read_ids(small_dataset / split / "panoptic" / ann["file_name"])
        assert ids.shape == (72, 96)
        json_ids = [s["id"] for s in ann["segments_info"]]
        assert len(json_ids) == len(set(json_ids))
        assert set(json_ids) == set(np.unique(ids).tolist()) - {0}, ann["file_name"]
        for seg in ann["segments_info"]:
            assert seg["category_id"] in cats
            ys, xs = np.nonzero(ids == seg["id"])
            assert seg["area"] == len(ys)
            assert seg["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert seg["iscrowd"] in (0, 1)
            if seg["iscrowd"]:
                assert cats[seg["category_id"]]["isthing"] == 1


def test_dataset_exercises_things_stuff_void_and_crowd(small_dataset):
    doc = json.loads((small_dataset / "train/panoptic.json").read_text())
    cats = {c["id"]: c for c in doc["categories"]}
    void_images = crowd = 0
    for index, ann in enumerate(doc["annotations"]):
        segs = ann["segments_info"]
        stuff = [s for s in segs if not cats[s["category_id"]]["isthing"]]
        things = [s for s in segs if cats[s["category_id"]]["isthing"]]
        assert 2 <= len(stuff) <= 3
        assert len({s["category_id"] for s in stuff}) == len(stuff)  # one segment per stuff class
        assert len(things) >= 1
        # Occlusion leaves at least MIN_VISIBLE_FRACTION of a >=16 px shape, minus void band.
        assert min(s["area"] for s in things) >= 40
        n_crowd = sum(s["iscrowd"] for s in segs)
        assert n_crowd == (1 if index % CROWD_EVERY == CROWD_EVERY - 1 else 0)
        crowd += n_crowd
        ids = _read_ids(small_dataset / "train/panoptic" / ann["file_name"])
        void_images += bool((ids == 0).any())
    assert crowd == 1
    assert void_images >= 1
    assert 0 < MIN_VISIBLE_FRACTION < 1


def test_things_colours_follow_class_hue_band(small_dataset):
    """Mean colour of each thing is dominated by its class's channel (red/green/blue)."""
    doc = json.loads((small_dataset / "train/panoptic.json").read_text())
    for ann in doc["annotations"][:5]:
        rgb = np.asarray(Image.open(small_dataset / "train/images" / ann["file_name"])).astype(
            float
        )
        ids = _read_ids(small_dataset / "train/panoptic" / ann["file_name"])
        for seg in ann["segments_info"]:
            if seg["category_id"] in (1, 2, 3):
                mean = rgb[ids == seg["id"]].mean(axis=0)
                assert int(np.argmax(mean)) == seg["category_id"] - 1, (ann["file_name"], mean)


def test_id_encoding_roundtrip_and_segment_measurement():
    ids = np.array([[0, 5, 5], [70000, 70000, 5], [0, 0, 300]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 3, 3)
    assert rgb[1, 0].tolist() == [70000 % 256, (70000 // 256) % 256, 70000 // 65536]
    assert np.array_equal(rgb_to_id(rgb), ids)
    segs = segments_from_id_map(ids, {5: 1, 300: 2, 70000: 11}, crowd={300})
    assert segs == [
        {"id": 5, "category_id": 1, "iscrowd": 0, "area": 3, "bbox": [1, 0, 2, 2]},
        {"id": 300, "category_id": 2, "iscrowd": 1, "area": 1, "bbox": [2, 2, 1, 1]},
        {"id": 70000, "category_id": 11, "iscrowd": 0, "area": 2, "bbox": [0, 1, 2, 1]},
    ]
    with pytest.raises(ValueError, match="segment id 5"):
        segments_from_id_map(ids, {300: 2, 70000: 11})
    with pytest.raises(ValueError, match="256"):
        id_to_rgb(np.array([[256**3]]))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_train": -1}, "num_train"),
        ({"num_val": 1.5}, "num_val"),
        ({"image_size": (16, 16)}, "image_size"),
        ({"image_size": 64}, "image_size"),
        ({"max_instances": 0}, "max_instances"),
        ({"seed": -2}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_synthetic_shapes(tmp_path, **kwargs)


def test_ensure_generates_once_and_reuses(tmp_path):
    params = {"num_train": 2, "num_val": 1, "image_size": (64, 64)}
    first = ensure_synthetic_shapes(tmp_path, **params)
    assert first.parent == tmp_path
    assert (first / "train/panoptic.json").is_file() and (first / "val/panoptic.json").is_file()
    stamp = (first / "train/panoptic.json").stat().st_mtime_ns
    again = ensure_synthetic_shapes(tmp_path, **params)
    assert again == first
    assert (first / "train/panoptic.json").stat().st_mtime_ns == stamp
    # Only the dataset folder remains: no temporary copies beside it.
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_ensure_regenerates_on_parameter_change(tmp_path):
    a = ensure_synthetic_shapes(tmp_path, num_train=2, num_val=1, image_size=(64, 64))
    b = ensure_synthetic_shapes(tmp_path, num_train=3, num_val=1, image_size=(64, 64))
    assert a != b
    assert len(json.loads((b / "train/panoptic.json").read_text())["images"]) == 3
    assert len(json.loads((a / "train/panoptic.json").read_text())["images"]) == 2


def test_ensure_regenerates_when_marker_differs_or_is_missing(tmp_path):
    params = {"num_train": 2, "num_val": 1, "image_size": (64, 64)}
    folder = ensure_synthetic_shapes(tmp_path, **params)
    marker = folder / ".synthetic_shapes.json"
    recorded = json.loads(marker.read_text())
    marker.write_text(json.dumps({**recorded, "num_train": 99}))
    (folder / "train/panoptic.json").unlink()
    assert ensure_synthetic_shapes(tmp_path, **params) == folder
    assert json.loads(marker.read_text()) == recorded
    assert (folder / "train/panoptic.json").is_file()

    marker.unlink()
    (folder / "val/panoptic.json").unlink()
    assert ensure_synthetic_shapes(tmp_path, **params) == folder
    assert (folder / "val/panoptic.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_ensure_default_root_uses_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path))
    folder = ensure_synthetic_shapes(num_train=1, num_val=1, image_size=(64, 64))
    assert folder.parent == tmp_path / "synthetic_shapes"


def test_ensure_rejects_unknown_parameter(tmp_path):
    with pytest.raises(TypeError, match="num_images"):
        ensure_synthetic_shapes(tmp_path, num_images=3)


def _ensure_in_process(args):
    root, params = args
    return str(ensure_synthetic_shapes(root, **params))


@pytest.mark.ddp
def test_ensure_is_safe_with_two_processes(tmp_path):
    params = {"num_train": 6, "num_val": 2, "image_size": (64, 64), "seed": 7}
    # fork where the platform has it: spawn would re-import torch in each child for nothing.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_ensure_in_process, [(str(tmp_path), params)] * 2)
    assert results[0] == results[1]
    folder = Path(results[0])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    reference = generate_synthetic_shapes(tmp_path.parent / f"{tmp_path.name}_ref", **params)
    files = [str(f) for f in _all_files(reference)]
    _, mismatch, errors = filecmp.cmpfiles(reference, folder, files, shallow=False)
    assert mismatch == [] and errors == []


def test_ensure_loser_of_the_race_discards_its_copy(tmp_path, monkeypatch):
    """Another process finishes first while this one is generating: its copy is dropped."""
    import lightning_seg.data.synthetic as synthetic

    params = {"num_train": 2, "num_val": 1, "image_size": (64, 64)}
    real_generate = synthetic.generate_synthetic_shapes
    winner: list[Path] = []

    def generate_after_rival(root, *args, **kwargs):
        monkeypatch.setattr(synthetic, "generate_synthetic_shapes", real_generate)
        winner.append(synthetic.ensure_synthetic_shapes(tmp_path, **params))
        (winner[0] / "rival.txt").write_text("first")
        return real_generate(root, *args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_synthetic_shapes", generate_after_rival)
    folder = synthetic.ensure_synthetic_shapes(tmp_path, **params)
    assert folder == winner[0]
    assert (folder / "rival.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_reads_back_through_the_coco_panoptic_dataset(small_dataset):
    """The generated files pass the framework's COCO panoptic reader and its validation."""
    from lightning_seg.data import CocoPanopticDataset
    from lightning_seg.structures import IGNORE_INDEX, check_sample

    split = small_dataset / "train"
    dataset = CocoPanopticDataset(split / "panoptic.json", split / "images", split / "panoptic")
    assert len(dataset) == 10
    assert dataset.metadata.class_names == [c["name"] for c in SYNTHETIC_CATEGORIES]
    doc = json.loads((split / "panoptic.json").read_text())
    for index in (0, CROWD_EVERY - 1):
        sample = dataset[index]
        check_sample(sample, num_classes=6, where=f"synthetic train #{index}")
        ann = doc["annotations"][index]
        ids = _read_ids(split / "panoptic" / ann["file_name"])
        assert sample["masks"].shape[0] == len(ann["segments_info"])
        assert int(sample["iscrowd"].sum()) == sum(s["iscrowd"] for s in ann["segments_info"])
        assert sorted(sample["masks"].sum(dim=(1, 2)).tolist()) == sorted(
            s["area"] for s in ann["segments_info"]
        )
        assert int((sample["semantic"] == IGNORE_INDEX).sum()) == int((ids == 0).sum())
