"""MaskAP and its run-length encoder against pycocotools and the published COCOeval numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from lightning_seg.metrics import MaskAP, coco_evaluate, encode_runs, masks_to_coco_rles


def test_runs_equal_pycocotools_encode():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 9, 7)) < 0.4
    masks[1] = False
    masks[2] = True
    masks[3, 0, 0] = True  # a mask starting with a set pixel has a leading zero-length run
    ours = masks_to_coco_rles(torch.from_numpy(masks))
    ref = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for a, b in zip(ours, ref):
        assert a["counts"] == b["counts"].decode("ascii")
        assert a["size"] == list(b["size"])
    runs, num = encode_runs(torch.from_numpy(masks))
    assert int(num.sum()) == runs.numel() and int(runs.sum()) == 6 * 63


def _coco_val100(root, n_images=None):
    gt_api = COCO(str(root / "instances_val2014_100.json"))
    results = json.loads((root / "instances_val2014_fakesegm100_results.json").read_text())
    cat_ids = sorted(gt_api.getCatIds())
    contiguous = {c: i for i, c in enumerate(cat_ids)}
    image_ids = sorted(gt_api.getImgIds())[:n_images]
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    preds, targets = [], []
    for image_id in image_ids:
        info = gt_api.loadImgs(image_id)[0]
        h, w = info["height"], info["width"]
        anns = gt_api.loadAnns(gt_api.getAnnIds(imgIds=image_id))
        gm = np.stack([gt_api.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        dets = by_image.get(image_id, [])
        dm = np.stack([mask_util.decode(d["segmentation"]) for d in dets]) if dets else np.zeros((0, h, w), np.uint8)
        targets.append(
            {
                "masks": torch.from_numpy(gm).bool(),
                "labels": torch.tensor([contiguous[a["category_id"]] for a in anns], dtype=torch.int64),
                "iscrowd": torch.tensor([bool(a["iscrowd"]) for a in anns], dtype=torch.bool),
            }
        )
        preds.append(
            {
                "masks": torch.from_numpy(dm).bool(),
                "labels": torch.tensor([contiguous[d["category_id"]] for d in dets], dtype=torch.int64),
                "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float32),
            }
        )
    return preds, targets, len(cat_ids)


def test_coco_val100_matches_cocoeval_and_published(shared_data):
    root = shared_data / "coco_val2014_100_eval"
    preds, targets, k = _coco_val100(root)
    metric = MaskAP(num_classes=k)
    for i in range(0, len(preds), 10):
        metric.update(preds[i : i + 10], targets[i : i + 10])
    ours = metric.compute()
    # The metric's ground-truth areas are mask pixel counts, not the JSON's polygon areas, so
    # the size buckets may differ a little from the published file-based numbers; the
    # all-area ones match to the printed precision.
    assert round(float(ours["AP"]), 3) == 0.320
    assert round(float(ours["AP50"]), 3) == 0.562
    assert round(float(ours["AP75"]), 3) == 0.299
    # The same COCO dicts scored by the other backend give the same numbers.
    gt, results = metric._coco_dicts()
    other = coco_evaluate(gt, results, "segm", "pycocotools")
    for name, value in other.items():
        assert float(ours[name]) == pytest.approx(value, abs=1e-12), name


def test_bbox_from_masks_and_perfect_predictions():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:18, 10:19] = True
    labels = torch.tensor([0, 1])
    metric = MaskAP(num_classes=2, iou_types=("segm", "bbox"))
    metric.update([{"masks": masks, "labels": labels, "scores": torch.tensor([0.9, 0.8])}], [{"masks": masks, "labels": labels}])
    out = metric.compute()
    assert float(out["AP"]) == pytest.approx(1.0)
    assert float(out["bbox_AP"]) == pytest.approx(1.0)


def test_bad_labels_raise():
    metric = MaskAP(num_classes=2)
    m = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="predicted labels"):
        metric.update([{"masks": m, "labels": torch.tensor([5]), "scores": torch.tensor([1.0])}], [{"masks": m, "labels": torch.tensor([0])}])
