"""ParsingCovering against DeepLab's published golden values and a plain-loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.evaluation.panoptic_io import load_json, load_panoptic_annotation
from lightning_seg.metrics import ParsingCovering
from lightning_seg.structures import DatasetMetadata


def _deeplab_coco(root, normalize):
    gt_json = load_json(root / "coco_gt.json")
    pred_json = load_json(root / "coco_pred.json")
    meta = DatasetMetadata.from_coco_categories(gt_json["categories"])
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    metric = ParsingCovering(is_thing=meta.is_thing, normalize_by_image_size=normalize)
    for gt_ann in gt_json["annotations"]:
        gt_ids, gt_info = load_panoptic_annotation(gt_ann, root / "coco_gt", meta, "coco_gt.json")
        pred_ids, pred_info = load_panoptic_annotation(preds[gt_ann["image_id"]], root / "coco_pred", meta, "coco_pred.json")
        metric.update(
            [{"panoptic_seg": pred_ids, "segments_info": pred_info}],
            [{"panoptic_seg": gt_ids, "segments_info": gt_info}],
        )
    return metric.compute()


def test_deeplab_coco_golden_values(shared_data):
    root = shared_data / "deeplab_pq_testdata"
    out = _deeplab_coco(root, normalize=False)
    # Golden values of DeepLab's eval_coco_format_test (see the data MANIFEST).
    assert float(out["pc"]) == pytest.approx(0.68210561, abs=1e-7)
    assert float(out["pc_things"]) == pytest.approx(0.5890529, abs=1e-7)
    assert float(out["pc_stuff"]) == pytest.approx(0.86821097, abs=1e-7)
    assert (int(out["n"]), int(out["n_things"]), int(out["n_stuff"])) == (6, 4, 2)
    out = _deeplab_coco(root, normalize=True)
    assert float(out["pc"]) == pytest.approx(0.68214908840, abs=1e-9)


def test_deeplab_team_golden_value(shared_data):
    root = shared_data / "deeplab_pq_testdata"
    gt_inst = np.array(Image.open(root / "team_gt_instance.png").convert("L"))
    class_of = {0: 0, 47: 1, 97: 1, 133: 1, 150: 1, 174: 1, 198: 2, 215: 1, 244: 1, 255: 1}
    gt_cat = np.vectorize(class_of.get)(gt_inst)
    colors = {(0, 0, 0): 0, (0, 0, 255): 1, (255, 0, 0): 2, (0, 255, 0): 3, (255, 0, 255): 4, (0, 255, 255): 5, (255, 255, 0): 6}
    rgb = np.array(Image.open(root / "team_pred_class.png").convert("RGB"))
    pred_cat = np.zeros(rgb.shape[:2], np.int64)
    for color, k in colors.items():
        pred_cat[(rgb == color).all(-1)] = k
    pred_inst = np.array(Image.open(root / "team_pred_instance.png").convert("L"))
    # Class 0 is DeepLab's ignored label: shift by one so that it falls outside [0, K) (void).
    def stack(cat, inst):
        return torch.stack([torch.from_numpy(cat.astype(np.int64) - 1), torch.from_numpy(inst.astype(np.int64))], -1)[None]

    metric = ParsingCovering(is_thing=[True, True, True, True, True, True], normalize_by_image_size=False)
    metric.update(stack(pred_cat, pred_inst), stack(gt_cat, gt_inst))
    assert float(metric.compute()["pc"]) == pytest.approx(0.6208296732, abs=1e-9)


def _loop_covering(gt_cat, gt_inst, pred_cat, pred_inst, k):
    weighted = np.zeros(k)
    area = np.zeros(k)
    gt_keys = {(c, i) for c, i in zip(gt_cat.ravel(), gt_inst.ravel()) if 0 <= c < k}
    valid = (gt_cat >= 0) & (gt_cat < k)
    for c, i in gt_keys:
        region = (gt_cat == c) & (gt_inst == i)
        best = 0.0
        for pi in np.unique(pred_inst[(pred_cat == c)]):
            pregion = (pred_cat == c) & (pred_inst == pi) & valid
            inter = (region & pregion).sum()
            best = max(best, inter / (region | pregion).sum())
        weighted[c] += region.sum() * best
        area[c] += region.sum()
    return weighted, area


def test_random_maps_match_loop():
    rng = np.random.default_rng(0)
    k = 4
    gt_cat = rng.integers(-1, k, (1, 12, 12)).repeat(2, 1).repeat(2, 2)
    gt_inst = rng.integers(0, 3, (1, 12, 12)).repeat(2, 1).repeat(2, 2)
    pred_cat = np.where(rng.random((1, 24, 24)) < 0.2, rng.integers(0, k, (1, 24, 24)), gt_cat)
    pred_inst = gt_inst.copy()
    metric = ParsingCovering(is_thing=[True] * k, normalize_by_image_size=False)
    to_t = lambda c, i: torch.stack([torch.from_numpy(c), torch.from_numpy(i)], -1)  # noqa: E731
    metric.update(to_t(pred_cat, pred_inst), to_t(gt_cat, gt_inst))
    weighted, area = _loop_covering(gt_cat[0], gt_inst[0], pred_cat[0], pred_inst[0], k)
    np.testing.assert_allclose(metric.weighted_iou.numpy(), weighted, rtol=1e-12)
    np.testing.assert_allclose(metric.gt_area.numpy(), area)
