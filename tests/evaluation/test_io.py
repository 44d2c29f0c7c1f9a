"""Writers and readers of prediction files round-trip, and what they write scores as expected."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from lightning_seg.evaluation import (
    evaluate_instance,
    evaluate_panoptic,
    id_to_rgb,
    load_json,
    load_panoptic_annotation,
    read_class_png,
    read_id_png,
    rgb_to_id,
    write_class_png,
    write_coco_panoptic,
    instance_prediction_to_coco_results,
    write_coco_results,
)
from lightning_seg.structures import DatasetMetadata


def test_rgb_id_round_trip_and_formula():
    ids = torch.tensor([[0, 1, 255, 256], [65535, 65536, 16777215, 123456]])
    rgb = id_to_rgb(ids)
    assert rgb[1, 2].tolist() == [255, 255, 255]
    assert rgb[0, 3].tolist() == [0, 1, 0]
    assert torch.equal(rgb_to_id(rgb), ids)


def test_panopticapi_sample_loader_areas(shared_data):
    root = shared_data / "panopticapi_sample" / "sample_data"
    gt = load_json(root / "panoptic_examples.json")
    meta = DatasetMetadata.from_coco_categories(gt["categories"])
    for ann in gt["annotations"]:
        ids, info = load_panoptic_annotation(ann, root / "panoptic_examples", meta, "gt", check_areas=True)
        assert len(info) == len(ann["segments_info"])
        assert sum(s["area"] for s in info) + int((ids == 0).sum()) == ids.numel()


def _metadata():
    return DatasetMetadata(class_names=["a", "b", "c"], category_ids=[3, 7, 11], is_thing=[True, True, False])


def test_panoptic_writer_round_trip_scores_perfectly(tmp_path):
    meta = _metadata()
    preds = []
    seg = torch.zeros(12, 14, dtype=torch.int32)
    seg[:6, :7], seg[6:, :7], seg[:, 7:] = 5, 9, 300
    info = [
        {"id": 5, "category_id": 0, "isthing": True, "score": 0.9},
        {"id": 9, "category_id": 1, "isthing": True, "score": 0.8},
        {"id": 300, "category_id": 2, "isthing": False, "score": 1.0},
    ]
    preds.append({"panoptic_seg": seg, "segments_info": info})
    write_coco_panoptic(preds, [17], meta, tmp_path / "pred.json", tmp_path / "pred")
    written = load_json(tmp_path / "pred.json")
    ann = written["annotations"][0]
    assert ann["file_name"] == "000000000017.png"
    assert [s["category_id"] for s in ann["segments_info"]] == [3, 7, 11]
    assert ann["segments_info"][0]["bbox"] == [0, 0, 7, 6]
    assert torch.equal(read_id_png(tmp_path / "pred" / ann["file_name"]), seg.long())
    # The written prediction used as ground truth too: PQ is 1.
    gt = dict(written, images=[{"id": 17, "file_name": "x.jpg", "height": 12, "width": 14}])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = evaluate_panoptic(tmp_path / "gt.json", tmp_path / "pred", tmp_path / "pred.json", tmp_path / "pred")
    assert res["All"]["pq"] == pytest.approx(1.0) and res["All"]["n"] == 3
    gt_ann = gt["annotations"][0]
    _, back = load_panoptic_annotation(gt_ann, tmp_path / "pred", meta, "gt.json")
    assert [s["category_id"] for s in back] == [0, 1, 2]


def test_panoptic_writer_rejects_unlisted_ids(tmp_path):
    seg = torch.ones(4, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"image 3: ids \[1\]"):
        write_coco_panoptic([{"panoptic_seg": seg, "segments_info": []}], [3], _metadata(), tmp_path / "p.json", tmp_path / "p")


def test_class_png_round_trip(tmp_path):
    meta = _metadata()
    labels = torch.tensor([[0, 1, 2], [255, 2, 0]])
    write_class_png(tmp_path / "m.png", labels, meta)
    raw = read_class_png(tmp_path / "m.png")
    assert raw.tolist() == [[3, 7, 11], [255, 11, 3]]
    write_class_png(tmp_path / "z.png", labels, reduce_zero_label=True)
    assert read_class_png(tmp_path / "z.png").tolist() == [[1, 2, 3], [0, 3, 1]]
    assert torch.equal(read_class_png(tmp_path / "z.png", reduce_zero_label=True), labels)


def test_coco_results_writer_scores_perfectly(tmp_path):
    meta = _metadata()
    masks = torch.zeros(2, 16, 18, dtype=torch.bool)
    masks[0, 1:6, 2:9] = True
    masks[1, 8:15, 5:17] = True
    pred = {"masks": masks, "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.7])}
    write_coco_results([pred], [5], meta, tmp_path / "res.json", with_boxes=True)
    results = load_json(tmp_path / "res.json")
    assert [r["category_id"] for r in results] == [3, 7]
    assert results[0]["bbox"] == [2.0, 1.0, 7.0, 5.0]
    decoded = mask_util.decode(results[1]["segmentation"])
    assert np.array_equal(decoded.astype(bool), masks[1].numpy())
    gt = {
        "images": [{"id": 5, "height": 16, "width": 18}],
        "categories": [{"id": c, "name": n} for c, n in zip(meta.category_ids, meta.class_names)],
        "annotations": [
            dict(id=i + 1, image_id=5, category_id=r["category_id"], segmentation=r["segmentation"],
                 area=float(masks[i].sum()), bbox=r["bbox"], iscrowd=0)
            for i, r in enumerate(results)
        ],
    }  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = evaluate_instance(tmp_path / "gt.json", tmp_path / "res.json")
    assert res["segm"]["AP"] == pytest.approx(1.0) and res["bbox"]["AP"] == pytest.approx(1.0)


def test_coco_results_boxes_predicted_or_from_masks():
    meta = _metadata()
    masks = torch.zeros(3, 16, 18, dtype=torch.bool)
    masks[0, 1:6, 2:9] = True
    masks[1, 8:15, 5:17] = True  # masks[2] is empty
    pred = {"masks": masks, "labels": torch.tensor([0, 1, 2]), "scores": torch.tensor([0.9, 0.7, 0.2])}
    boxes = torch.tensor([[1.5, 0.25, 10.0, 7.0], [4.0, 8.0, 17.0, 16.0], [3.0, 3.0, 5.0, 4.0]])
    # predicted boxes are written (as x, y, w, h) whenever the prediction has them
    for with_boxes in (False, True):
        res = instance_prediction_to_coco_results({**pred, "boxes": boxes}, 5, meta, with_boxes=with_boxes)
        assert [r["bbox"] for r in res] == [[1.5, 0.25, 8.5, 6.75], [4.0, 8.0, 13.0, 8.0], [3.0, 3.0, 2.0, 1.0]]
        assert [r["category_id"] for r in res] == [3, 7, 11] and [r["score"] for r in res] == pytest.approx([0.9, 0.7, 0.2])
    # without them: the masks' boxes when asked, as pycocotools computes them from the RLE
    res = instance_prediction_to_coco_results(pred, 5, meta, with_boxes=True)
    assert [r["bbox"] for r in res] == [mask_util.toBbox(r["segmentation"]).tolist() for r in res]
    assert res[2]["bbox"] == [0.0, 0.0, 0.0, 0.0]
    assert all("bbox" not in r for r in instance_prediction_to_coco_results(pred, 5, meta))
    with pytest.raises(ValueError, match=r"image 5: boxes must be \[3, 4\]"):
        instance_prediction_to_coco_results({**pred, "boxes": boxes[:2]}, 5, meta)
