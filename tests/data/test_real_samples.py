"""The real third-party samples load through the public datasets and agree with their annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from lightning_seg.data import (
    ADE20KSemanticDataset,
    CocoInstanceDataset,
    CocoPanopticDataset,
    SemanticFolderDataset,
)
from lightning_seg.data.transforms import build_augmentation
from lightning_seg.structures import IGNORE_INDEX, check_sample, collate
from tests.box_reference import reference_boxes


@pytest.fixture(scope="module")
def panopticapi(shared_data):
    d = shared_data / "panopticapi_sample" / "sample_data"
    return d, CocoPanopticDataset(d / "panoptic_examples.json", d / "input_images", d / "panoptic_examples")


def _bbox(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def test_panopticapi_areas_and_bboxes_equal_json(panopticapi):
    d, ds = panopticapi
    anns = {a["image_id"]: a for a in json.loads((d / "panoptic_examples.json").read_text())["annotations"]}
    assert len(ds) == 2
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s, ds.metadata.num_classes, f"item {i}")
        segs = anns[s["image_id"]]["segments_info"]
        assert s["masks"].shape[0] == len(segs)
        for mask, label, crowd, seg in zip(s["masks"], s["labels"], s["iscrowd"], segs):
            assert int(mask.sum()) == seg["area"]
            assert _bbox(mask) == seg["bbox"]
            assert ds.metadata.category_ids[int(label)] == seg["category_id"]
            assert bool(crowd) == bool(seg["iscrowd"])
        # void = pixels covered by no segment; segments partition the rest
        covered = s["masks"].sum(0)
        assert int(covered.max()) == 1
        assert torch.equal(s["semantic"] == IGNORE_INDEX, covered == 0)


def test_panopticapi_manifest_counts(panopticapi):
    _, ds = panopticapi
    expected = {142238: (18, 15, 1, 2712), 439180: (32, 28, 2, 7189)}
    for i in range(len(ds)):
        s = ds[i]
        n, things, crowd, void = expected[s["image_id"]]
        assert (len(s["labels"]), int(s["is_thing"].sum()), int(s["iscrowd"].sum())) == (n, things, crowd)
        assert int((s["semantic"] == IGNORE_INDEX).sum()) == void


def test_panopticapi_rle_detection_format_equals_png(panopticapi):
    d, pan = panopticapi
    det = json.loads((d / "panoptic_coco_detection_format.json").read_text())
    for c in det["categories"]:
        c["isthing"] = 1
    images = {img["id"]: img for img in det["images"]}
    pan_by_id = {pan.image_id(i): pan[i] for i in range(len(pan))}
    matched = 0
    for ann in det["annotations"]:
        img = images[ann["image_id"]]
        from lightning_seg.data import decode_segmentation

        rle_mask = torch.from_numpy(decode_segmentation(ann["segmentation"], img["height"], img["width"]))
        s = pan_by_id[ann["image_id"]]
        cands = [
            m for m, lab in zip(s["masks"], s["labels"])
            if pan.metadata.category_ids[int(lab)] == ann["category_id"] and int(m.sum()) == ann["area"]
            and _bbox(m) == [int(v) for v in ann["bbox"]]
        ]
        assert len(cands) == 1
        assert torch.equal(cands[0], rle_mask)
        matched += 1
    assert matched == 50


def test_hf_sample_panoptic_and_instances(shared_data, tmp_path):
    d = shared_data / "hf_coco_000000039769"
    cats = json.loads((shared_data / "panopticapi_sample" / "panoptic_coco_categories.json").read_text())
    segments = json.loads((d / "coco_panoptic_annotations.txt").read_text())
    pan_json = {
        "images": [{"id": 39769, "file_name": "000000039769.png", "height": 480, "width": 640}],
        "annotations": [{"image_id": 39769, "file_name": "000000039769.png", "segments_info": segments}],
        "categories": cats,
    }
    (tmp_path / "pan.json").write_text(json.dumps(pan_json))
    pan = CocoPanopticDataset(tmp_path / "pan.json", d, d / "coco_panoptic")
    s = pan[0]
    assert s["image"].shape == (3, 480, 640)
    for mask, seg in zip(s["masks"], segments):
        assert int(mask.sum()) == seg["area"]
        assert _bbox(mask) == seg["bbox"]
    assert int((s["semantic"] == IGNORE_INDEX).sum()) == 10752
    stuff = [pan.metadata.class_names[int(c)] for c, t in zip(s["labels"], s["is_thing"]) if not t]
    assert stuff == ["blanket"]

    anns = json.loads((d / "coco_annotations.txt").read_text())
    inst_cats = [c for c in cats if c["isthing"]]
    inst_json = {
        "images": [{"id": 39769, "file_name": "000000039769.png", "height": 480, "width": 640}],
        "annotations": anns,
        "categories": inst_cats,
    }
    (tmp_path / "inst.json").write_text(json.dumps(inst_json))
    inst = CocoInstanceDataset(tmp_path / "inst.json", d)
    si = inst[0]
    check_sample(si, inst.metadata.num_classes)
    coco = COCO(str(tmp_path / "inst.json"))
    for mask, ann in zip(si["masks"], anns):
        ref = coco.annToMask(ann).astype(bool)
        assert np.array_equal(mask.numpy(), ref)
        # the polygon area and the rasterised pixel count agree to within the boundary pixels
        assert abs(int(mask.sum()) - ann["area"]) < 0.1 * ann["area"]
    # panoptic ↔ instance: each thing category of the instance set appears in the panoptic set
    pan_things = sorted(pan.metadata.category_ids[int(c)] for c, t in zip(s["labels"], s["is_thing"]) if t)
    inst_cats_seen = sorted(inst.metadata.category_ids[int(c)] for c in si["labels"])
    assert set(pan_things) <= set(inst_cats_seen)


def _hf_instance_json(shared_data, tmp_path):
    d = shared_data / "hf_coco_000000039769"
    cats = json.loads((shared_data / "panopticapi_sample" / "panoptic_coco_categories.json").read_text())
    inst_json = {
        "images": [{"id": 39769, "file_name": "000000039769.png", "height": 480, "width": 640}],
        "annotations": json.loads((d / "coco_annotations.txt").read_text()),
        "categories": [c for c in cats if c["isthing"]],
    }
    (tmp_path / "inst.json").write_text(json.dumps(inst_json))
    return d, tmp_path / "inst.json"


def test_real_coco_boxes_are_the_rasterised_masks_boxes(shared_data, tmp_path):
    d, inst_json = _hf_instance_json(shared_data, tmp_path)
    s = CocoInstanceDataset(inst_json, d)[0]
    coco = COCO(str(inst_json))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[39769]))
    ref = np.array([mask_util.toBbox(coco.annToRLE(a)) for a in anns], np.float32)
    xywh = torch.cat([s["boxes"][:, :2], s["boxes"][:, 2:] - s["boxes"][:, :2]], dim=1)
    np.testing.assert_array_equal(xywh.numpy(), ref)
    # the JSON's polygon boxes are not the rasterised masks' (sub-pixel, up to a pixel off)
    json_boxes = np.array([a["bbox"] for a in anns], np.float32)
    assert not np.array_equal(json_boxes, ref) and np.abs(json_boxes - ref).max() <= 1.5


@pytest.mark.parametrize("spec", ["lsj", [{"type": "Rotate", "limit": 45, "p": 1.0}]], ids=["lsj", "rotate"])
def test_real_coco_boxes_follow_augmented_masks(shared_data, tmp_path, spec):
    # the pipeline draws from a stream seeded by torch's seed (which other tests in this process moved)
    torch.manual_seed(0)
    d, inst_json = _hf_instance_json(shared_data, tmp_path)
    plain = CocoInstanceDataset(inst_json, d)[0]
    ds = CocoInstanceDataset(inst_json, d, transform=build_augmentation(spec, 320))
    samples = [ds[0] for _ in range(6)]
    for s in samples:
        check_sample(s, ds.metadata.num_classes)
        np.testing.assert_array_equal(s["boxes"].numpy(), reference_boxes(s["masks"].numpy()))
        assert s["boxes"].shape[0] == s["masks"].shape[0] >= 1
    # the boxes did move with the crops/rotations: none of the draws keeps the original boxes
    assert all(not torch.equal(s["boxes"], plain["boxes"]) for s in samples)
    batch = collate(samples, size_divisibility=64)
    for s, t in zip(samples, batch["targets"]):
        assert torch.equal(t["boxes"], s["boxes"])
        np.testing.assert_array_equal(t["boxes"].numpy(), reference_boxes(t["masks"].numpy()))


def test_coco_val2014_rasterisation_equals_pycocotools(shared_data):
    d = shared_data / "coco_val2014_100_eval"
    ds = CocoInstanceDataset(d / "instances_val2014_100.json", d, check_files=False)
    coco = COCO(str(d / "instances_val2014_100.json"))
    assert len(ds) == 100
    n_crowd = n_poly = 0
    for i in range(len(ds)):
        masks, labels, crowd = ds.annotation_masks(i)
        ann_ids = coco.getAnnIds(imgIds=[ds.image_id(i)], iscrowd=None)
        anns = coco.loadAnns(ann_ids)
        assert len(anns) == len(masks)
        for m, c, ann in zip(masks, crowd, anns):
            assert np.array_equal(m, coco.annToMask(ann).astype(bool)), ann["id"]
            assert bool(c) == bool(ann["iscrowd"])
            n_crowd += bool(ann["iscrowd"])
            n_poly += isinstance(ann["segmentation"], list)
    assert (n_crowd, n_poly) == (9, 830)


def test_ade20k_sample_reduce_zero_label(shared_data, tmp_path):
    sample = shared_data / "ade20k_sceneparsing_sample" / "sampleData"
    # the SceneParsing layout: images/validation + annotations/validation
    root = tmp_path / "ADEChallengeData2016"
    for sub, src in (("images", "images"), ("annotations", "annotations")):
        (root / sub).mkdir(parents=True)
        (root / sub / "validation").symlink_to(sample / src)
    ds = ADE20KSemanticDataset(root, "val")
    assert len(ds) == 3 and ds.metadata.num_classes == 150
    from PIL import Image

    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s, 150)
        raw = np.asarray(Image.open(sample / "annotations" / f"{ds.image_id(i)}.png")).astype(np.int64)
        expected = np.where(raw == 0, IGNORE_INDEX, raw - 1)
        assert np.array_equal(s["semantic"].numpy(), expected)
        seen |= set((s["labels"] + 1).tolist())
        # one mask per class present, partitioning the labelled pixels
        assert torch.equal(s["masks"].sum(0) == 0, s["semantic"] == IGNORE_INDEX)
    assert seen == {1, 2, 3, 5, 7, 10, 12, 14, 18, 21, 44, 81, 88, 97, 103}

    # without the reduction, "other" is class 0
    ds0 = ADE20KSemanticDataset(root, "val", reduce_zero_label=False)
    assert ds0.metadata.num_classes == 151 and ds0.metadata.class_names[0] == "other"
    raw = np.asarray(Image.open(sample / "annotations" / f"{ds0.image_id(0)}.png")).astype(np.int64)
    assert np.array_equal(ds0[0]["semantic"].numpy(), raw)


def test_semantic_folder_on_ade_sample(shared_data, tmp_path):
    sample = shared_data / "ade20k_sceneparsing_sample" / "sampleData"
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"c{i}" for i in range(151)))
    ds = SemanticFolderDataset(sample / "images", sample / "annotations", class_names=names)
    assert len(ds) == 3 and ds.metadata.num_classes == 151
    assert not any(ds.metadata.is_thing)
    s = ds[2]
    check_sample(s, 151)
