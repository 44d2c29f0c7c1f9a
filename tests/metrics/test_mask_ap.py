"""MaskAP and its run-length encoder against pycocotools and the published COCOeval numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from lightning_seg.metrics import MaskAP, coco_evaluate, encode_runs, masks_to_coco_rles
from tests.box_reference import reference_boxes


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


def _box_ap_case(seed=0, n_images=5, k=3, h=48, w=64):
    """Random rectangles with holes as ground truth; predictions are thinned copies (one empty),
    partly mislabelled, whose boxes are the masks' boxes moved by up to two pixels (so box AP
    with and without them differs)."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        n = int(rng.integers(2, 6))
        gm = np.zeros((n, h, w), bool)
        for j in range(n):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            gm[j, y : y + rng.integers(4, h - y), x : x + rng.integers(4, w - x)] = True
            gm[j] &= rng.random((h, w)) < 0.9  # holes, so that mask and box IoU differ
        labels = rng.integers(0, k, n)
        crowd = np.zeros(n, bool)
        crowd[0] = rng.random() < 0.3
        dm = gm & (rng.random((n, h, w)) < 0.95)
        dm[-1] = False  # an empty predicted mask
        boxes = reference_boxes(dm) + rng.integers(-2, 3, (n, 4)).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(
            {
                "masks": torch.from_numpy(dm),
                "labels": torch.from_numpy(np.where(rng.random(n) < 0.8, labels, (labels + 1) % k)),
                "scores": torch.from_numpy(rng.random(n).astype(np.float32)),
                "boxes": torch.from_numpy(boxes),
            }
        )
        targets.append({"masks": torch.from_numpy(gm), "labels": torch.from_numpy(labels), "iscrowd": torch.from_numpy(crowd)})
    return preds, targets, k


def _reference_bbox_stats(preds, targets, k, use_pred_boxes):
    """pycocotools COCOeval (bbox) on COCO dicts written out in the test."""
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images, anns, results = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        h, w = t["masks"].shape[1:]
        images.append({"id": i + 1, "height": h, "width": w})
        for m, box, c, crowd in zip(t["masks"].numpy(), reference_boxes(t["masks"]), t["labels"].tolist(), t["iscrowd"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": xywh(box),
                         "area": float(m.sum()), "iscrowd": int(crowd)})  # fmt: skip
        boxes = p["boxes"].numpy() if use_pred_boxes else reference_boxes(p["masks"])
        for box, c, s in zip(boxes, p["labels"].tolist(), p["scores"].tolist()):
            results.append({"image_id": i + 1, "category_id": c + 1, "bbox": xywh(box), "score": s})
    gt_api = COCO()
    gt_api.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(k)]}
    gt_api.createIndex()
    evaluator = COCOeval(gt_api, gt_api.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:12]


NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_bbox_ap_uses_predicted_boxes_and_equals_cocoeval(backend):
    preds, targets, k = _box_ap_case()
    without = [{key: v for key, v in p.items() if key != "boxes"} for p in preds]
    scores = {}
    for name, batch in (("pred_boxes", preds), ("mask_boxes", without)):
        metric = MaskAP(num_classes=k, iou_types=("segm", "bbox"), backend=backend)
        metric.update(batch[:2], targets[:2])
        metric.update(batch[2:], targets[2:])
        scores[name] = metric.compute()
        ref = _reference_bbox_stats(preds, targets, k, use_pred_boxes=name == "pred_boxes")
        for stat, value in zip(NAMES, ref):
            assert float(scores[name]["bbox_" + stat]) == pytest.approx(value, abs=1e-9), (name, stat)
    assert float(scores["pred_boxes"]["bbox_AP"]) != pytest.approx(float(scores["mask_boxes"]["bbox_AP"]), abs=1e-3)
    # the predicted boxes change box AP only
    for stat in NAMES:
        assert float(scores["pred_boxes"][stat]) == float(scores["mask_boxes"][stat])


def test_bbox_boxes_follow_max_detections_and_bad_shape_raises():
    preds, targets, k = _box_ap_case(seed=1, n_images=2)
    capped = MaskAP(num_classes=k, iou_types=("bbox",), max_detections=2)
    capped.update(preds, targets)
    top = [torch.topk(p["scores"], 2).indices for p in preds]
    kept = [{key: p[key][i] for key in ("masks", "labels", "scores", "boxes")} for p, i in zip(preds, top)]
    ref = _reference_bbox_stats(kept, targets, k, use_pred_boxes=True)
    assert float(capped.compute()["bbox_AP"]) == pytest.approx(ref[0], abs=1e-9)
    metric = MaskAP(num_classes=k, iou_types=("bbox",))
    with pytest.raises(ValueError, match=r"boxes must be \[\d+, 4\]"):
        metric.update([{**preds[0], "boxes": preds[0]["boxes"][:, :3]}], targets[:1])
