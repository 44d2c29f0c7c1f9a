"""PanopticQuality against a literal re-statement of panopticapi's pq_compute and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_seg.evaluation.panoptic_io import load_json, load_panoptic_annotation, read_id_png
from lightning_seg.metrics import PanopticQuality
from lightning_seg.metrics.panoptic_segments import segments_from_category_instance, unique_keys
from lightning_seg.structures import DatasetMetadata
from tests.metrics.panoptic_reference import new_stats, reference_pq_average, reference_pq_single


def _deeplab_reference(root):
    gt_json = load_json(root / "coco_gt.json")
    pred_json = load_json(root / "coco_pred.json")
    categories = {c["id"]: bool(c["isthing"]) for c in gt_json["categories"]}
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    stats = new_stats()
    for gt_ann in gt_json["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        gt_ids = read_id_png(root / "coco_gt" / gt_ann["file_name"]).numpy()
        pred_ids = read_id_png(root / "coco_pred" / pred_ann["file_name"]).numpy()
        gt_segments = {s["id"]: s for s in gt_ann["segments_info"]}
        pred_segments = {s["id"]: s for s in pred_ann["segments_info"]}
        reference_pq_single(gt_ids, gt_segments, pred_ids, pred_segments, stats)
    return reference_pq_average(stats, categories)


def _deeplab_metric(root):
    gt_json = load_json(root / "coco_gt.json")
    pred_json = load_json(root / "coco_pred.json")
    meta = DatasetMetadata.from_coco_categories(gt_json["categories"])
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    metric = PanopticQuality(is_thing=meta.is_thing)
    for gt_ann in gt_json["annotations"]:
        gt_ids, gt_info = load_panoptic_annotation(gt_ann, root / "coco_gt", meta, "coco_gt.json")
        pred_ids, pred_info = load_panoptic_annotation(
            preds[gt_ann["image_id"]], root / "coco_pred", meta, "coco_pred.json"
        )
        metric.update(
            [{"panoptic_seg": pred_ids.int(), "segments_info": pred_info}],
            [{"panoptic_seg": gt_ids, "segments_info": gt_info}],
        )
    return metric.report(meta.category_ids)


def _assert_reports_close(ours, ref, tol=1e-6):
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == ref[name]["n"], name
        for key in ("pq", "sq", "rq"):
            assert ours[name][key] == pytest.approx(ref[name][key], abs=tol), (name, key)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, values in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][cat][key] == pytest.approx(values[key], abs=tol), (cat, key)


def test_deeplab_coco_pair_matches_pq_compute(shared_data):
    root = shared_data / "deeplab_pq_testdata"
    ref = _deeplab_reference(root)
    ours = _deeplab_metric(root)
    _assert_reports_close(ours, ref)
    # The pair exercises crowd, a predicted segment with id 0 and a never-predicted class.
    assert ref["All"]["n"] == 6 and 0.0 < ref["All"]["pq"] < 1.0


def test_panopticapi_sample_gt_against_itself_is_perfect(shared_data):
    root = shared_data / "panopticapi_sample" / "sample_data"
    gt_json = load_json(root / "panoptic_examples.json")
    meta = DatasetMetadata.from_coco_categories(gt_json["categories"])
    metric = PanopticQuality(is_thing=meta.is_thing)
    for ann in gt_json["annotations"]:
        ids, info = load_panoptic_annotation(ann, root / "panoptic_examples", meta, "gt", check_areas=True)
        metric.update([{"panoptic_seg": ids, "segments_info": info}], [{"panoptic_seg": ids, "segments_info": info}])
    out = metric.compute()
    assert float(out["pq"]) == pytest.approx(1.0)
    assert int(out["n"]) == 8 and int(out["n_things"]) == 4 and int(out["n_stuff"]) == 4


def _random_panoptic(rng, h, w, num_classes, is_thing, n_seg, crowd_prob=0.0, void_prob=0.1):
    """A random id map built from rectangles, with segments_info in the reference's format."""
    ids = np.zeros((h, w), dtype=np.int64)
    segments = {}
    next_id = 1
    for _ in range(n_seg):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        ids[y0:y1, x0:x1] = next_id
        cat = int(rng.integers(0, num_classes))
        # COCO holds at most one crowd region per class and image (panopticapi relies on it).
        crowd_taken = any(s["iscrowd"] and s["category_id"] == cat for s in segments.values())
        segments[next_id] = {"category_id": cat, "iscrowd": int(rng.random() < crowd_prob and not crowd_taken)}
        next_id += 1
    ids[rng.random((h, w)) < void_prob] = 0
    present, counts = np.unique(ids, return_counts=True)
    area = dict(zip(present.tolist(), counts.tolist()))
    segments = {k: dict(v, area=area[k]) for k, v in segments.items() if k in area}
    # Stuff classes have one segment per image in COCO: merge same-class stuff segments.
    for k, v in list(segments.items()):
        if not is_thing[v["category_id"]]:
            first = min(s for s, t in segments.items() if t["category_id"] == v["category_id"])
            if first != k:
                ids[ids == k] = first
                segments[first]["area"] += v["area"]
                del segments[k]
    return ids, segments


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_maps_with_crowd_and_void_match_reference(seed):
    rng = np.random.default_rng(seed)
    is_thing = [True, True, True, False, False]
    categories = dict(enumerate(is_thing))
    metric = PanopticQuality(is_thing=is_thing)
    stats = new_stats()
    for _ in range(2):
        batch_preds, batch_gts = [], []
        for _ in range(3):
            gt_ids, gt_segs = _random_panoptic(rng, 24, 30, 5, is_thing, 8, crowd_prob=0.2)
            # Predictions: perturb the ground truth so that some pairs match.
            pred_ids, pred_segs = _random_panoptic(rng, 24, 30, 5, is_thing, 4, void_prob=0.0)
            keep = rng.random(gt_ids.shape) < 0.7
            pred_ids = np.where(keep & (gt_ids > 0), gt_ids + 1000, pred_ids)
            for k, v in gt_segs.items():
                if rng.random() < 0.3:
                    v = dict(v, category_id=int(rng.integers(0, 5)))
                pred_segs[k + 1000] = {"category_id": v["category_id"], "iscrowd": 0}
            present = set(np.unique(pred_ids).tolist())
            pred_segs = {k: v for k, v in pred_segs.items() if k in present}
            reference_pq_single(gt_ids, gt_segs, pred_ids, pred_segs, stats)
            batch_gts.append(
                {"panoptic_seg": torch.from_numpy(gt_ids), "segments_info": [dict(v, id=k) for k, v in gt_segs.items()]}
            )
            batch_preds.append(
                {"panoptic_seg": torch.from_numpy(pred_ids).int(), "segments_info": [dict(v, id=k) for k, v in pred_segs.items()]}
            )
        metric.update(batch_preds, batch_gts)
    _assert_reports_close(metric.report(), reference_pq_average(stats, categories))


def test_target_form_equals_id_map_form():
    rng = np.random.default_rng(5)
    is_thing = [True, True, False]
    gt_ids, gt_segs = _random_panoptic(rng, 20, 20, 3, is_thing, 6, crowd_prob=0.3)
    pred_ids, pred_segs = _random_panoptic(rng, 20, 20, 3, is_thing, 6)
    pred = [{"panoptic_seg": torch.from_numpy(pred_ids).int(), "segments_info": [dict(v, id=k) for k, v in pred_segs.items()]}]
    keys = sorted(gt_segs)
    # A padded Target: masks are 24x28, the prediction is 20x20.
    masks = torch.zeros(len(keys), 24, 28, dtype=torch.bool)
    for i, k in enumerate(keys):
        masks[i, :20, :20] = torch.from_numpy(gt_ids == k)
    target = {
        "masks": masks,
        "labels": torch.tensor([gt_segs[k]["category_id"] for k in keys]),
        "iscrowd": torch.tensor([bool(gt_segs[k]["iscrowd"]) for k in keys]),
        "is_thing": torch.tensor([is_thing[gt_segs[k]["category_id"]] for k in keys]),
        "image_size": (20, 20),
    }
    a = PanopticQuality(is_thing=is_thing)
    a.update(pred, [target])
    b = PanopticQuality(is_thing=is_thing)
    b.update(pred, [{"panoptic_seg": torch.from_numpy(gt_ids), "segments_info": [dict(v, id=k) for k, v in gt_segs.items()]}])
    for key in ("tp", "fp", "fn"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert torch.allclose(a.iou_sum, b.iou_sum)


def test_category_instance_form_matches_torchmetrics():
    from torchmetrics.detection import PanopticQuality as TMPanopticQuality

    rng = np.random.default_rng(3)
    is_thing = [True, True, True, False, False]
    b, h, w = 3, 32, 32
    cat = torch.from_numpy(rng.integers(0, 5, (b, h // 8, w // 8))).repeat_interleave(8, 1).repeat_interleave(8, 2)
    inst = torch.from_numpy(rng.integers(0, 3, (b, h // 8, w // 8))).repeat_interleave(8, 1).repeat_interleave(8, 2)
    noisy = torch.from_numpy(rng.random((b, h, w)) < 0.15)
    # torchmetrics also drops ground-truth pixels that fall on *predicted* void from the union
    # (panopticapi does not), so the predictions here have no void; the ground truth has some.
    pred_cat = torch.where(noisy, torch.from_numpy(rng.integers(0, 5, (b, h, w))), cat)
    gt_cat = torch.where(torch.from_numpy(rng.random((b, h, w)) < 0.05), 7, cat)  # 7 = void
    gt = torch.stack([gt_cat, inst], -1)
    pred = torch.stack([pred_cat, inst], -1)
    ours = PanopticQuality(is_thing=is_thing)
    ours.update(pred, gt)
    theirs = TMPanopticQuality(things={0, 1, 2}, stuffs={3, 4}, allow_unknown_preds_category=True)
    theirs.update(pred, gt)
    assert float(ours.compute()["pq"]) == pytest.approx(float(theirs.compute()), abs=1e-6)


def test_category_instance_segments_ignore_stuff_instance_ids():
    cat = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    inst = torch.tensor([[[1, 2, 1, 2], [1, 2, 1, 2]]])
    seg = segments_from_category_instance(cat, inst, torch.tensor([True, False]))
    assert seg.num_segments == 3  # two thing instances of class 0, one stuff segment of class 1
    assert sorted(seg.labels.tolist()) == [0, 0, 1]


def test_unlisted_segment_id_raises():
    metric = PanopticQuality(is_thing=[True])
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"\[2\].*not in segments_info"):
        metric.update(
            [{"panoptic_seg": ids, "segments_info": [{"id": 1, "category_id": 0}]}],
            [{"panoptic_seg": ids, "segments_info": [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 0}]}],
        )


def test_size_mismatch_raises():
    metric = PanopticQuality(is_thing=[True])
    info = [{"id": 1, "category_id": 0}]
    with pytest.raises(ValueError, match="image sizes"):
        metric.update(
            [{"panoptic_seg": torch.ones(2, 3, dtype=torch.int32), "segments_info": info}],
            [{"panoptic_seg": torch.ones(3, 3, dtype=torch.int32), "segments_info": info}],
        )


def test_sparse_instance_ids_take_the_sort_path():
    cat = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 9]]])
    inst = torch.tensor([[[5, 2**23, 0, 0], [5, 2**23, 0, 0]]])
    seg = segments_from_category_instance(cat, inst, torch.tensor([True, False]))
    assert seg.num_segments == 3 and sorted(seg.labels.tolist()) == [0, 0, 1]
    assert int((seg.index == -1).sum()) == 1
    dense = segments_from_category_instance(cat, torch.where(inst > 10, 7, inst), torch.tensor([True, False]))
    assert torch.equal(torch.sort(dense.labels).values, torch.sort(seg.labels).values)


@pytest.mark.parametrize("num_bins", [50, 10**9])
def test_unique_keys_histogram_and_sort_paths_agree(num_bins):
    keys = torch.tensor([7, 3, 3, 49, 7, 7, 0])
    uniq, counts, inverse = unique_keys(keys, num_bins, return_inverse=True)
    ref_u, ref_i, ref_c = torch.unique(keys, return_inverse=True, return_counts=True)
    assert torch.equal(uniq, ref_u) and torch.equal(counts, ref_c) and torch.equal(inverse, ref_i)


def test_target_labels_out_of_range_raise():
    metric = PanopticQuality(is_thing=[True, False])
    masks = torch.ones(1, 2, 2, dtype=torch.bool)
    pred = [{"panoptic_seg": torch.ones(2, 2, dtype=torch.int32), "segments_info": [{"id": 1, "category_id": 0}]}]
    with pytest.raises(ValueError, match=r"ground-truth class ids \[4\]"):
        metric.update(pred, [{"masks": masks, "labels": torch.tensor([4])}])


_DEEPLAB_COLORS = {(0, 0, 0): 0, (0, 0, 255): 1, (255, 0, 0): 2, (0, 255, 0): 3, (255, 0, 255): 4, (0, 255, 255): 5, (255, 255, 0): 6}
_DEEPLAB_GT_CLASSES = {
    "team": {0: 0, 47: 1, 97: 1, 133: 1, 150: 1, 174: 1, 198: 2, 215: 1, 244: 1, 255: 1},
    "bird": {92: 5, 176: 3, 255: 4},
    "cat": {0: 0, 255: 6},
}


def _deeplab_pair(root, name):
    """(category, instance) tensors [1,H,W,2] of DeepLab's non-COCO test images.

    DeepLab's class 0 is its ignored label: shifted to -1 it is void here. DeepLab splits every
    class by instance id, so all classes are treated as things.
    """
    from PIL import Image

    gt_file = root / (f"{name}_gt_instance.png" if name == "team" else f"{name}_gt.png")
    gt_inst = np.array(Image.open(gt_file).convert("L")).astype(np.int64)
    gt_cat = np.vectorize(_DEEPLAB_GT_CLASSES[name].get)(gt_inst)
    rgb = np.array(Image.open(root / f"{name}_pred_class.png").convert("RGB"))
    pred_cat = np.zeros(rgb.shape[:2], np.int64)
    for color, k in _DEEPLAB_COLORS.items():
        pred_cat[(rgb == color).all(-1)] = k
    pred_inst = np.array(Image.open(root / f"{name}_pred_instance.png").convert("L")).astype(np.int64)

    def stack(cat, inst):
        return torch.stack([torch.from_numpy(cat - 1), torch.from_numpy(inst)], -1)[None]

    return stack(pred_cat, pred_inst), stack(gt_cat, gt_inst)


def test_deeplab_team_golden_values(shared_data):
    """DeepLab's panoptic_quality_test on the 'team' pair (3 classes, 0 = ignored)."""
    metric = PanopticQuality(is_thing=[True, True])
    metric.update(*_deeplab_pair(shared_data / "deeplab_pq_testdata", "team"))
    assert metric.tp.tolist() == [7, 1]
    assert metric.fn.tolist() == [1, 0]
    assert metric.fp.tolist() == [0, 0]
    np.testing.assert_allclose(metric.iou_sum.numpy(), [5.26827, 0.54069], atol=1e-5)
    assert float(metric.compute()["pq"]) == pytest.approx(0.62156287, abs=1e-7)


def test_deeplab_streaming_golden_values(shared_data):
    """DeepLab's streaming_metrics_test: bird + cat + team, 7 classes with 0 ignored."""
    metric = PanopticQuality(is_thing=[True] * 6)
    for name in ("bird", "cat", "team"):
        metric.update(*_deeplab_pair(shared_data / "deeplab_pq_testdata", name))
    per_class = metric.compute()["pq_per_class"].numpy()
    np.testing.assert_allclose(per_class, [0.7024, 0.54069, 0.745353, 0.85768, 0.99107, 0.77410], atol=1e-4)
