"""Scoring unlabelled segments: Hungarian-matched and majority-labelled IoU against plain loops
with scipy's matching, class-agnostic covering against a loop, and the things-vs-stuff and
class-agnostic AP groups against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lightning_seg.metrics import ClusterMatchedIoU, ParsingCovering, SegmentMetrics

K = 4
VOID = 255


def random_maps(seed: int, n: int = 3, size: int = 16, clusters: int = 5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (n, size // 4, size // 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    target[:, :2, :3] = VOID
    noise = torch.rand(n, size, size, generator=g) < 0.3
    seg = torch.where(noise, torch.randint(-1, clusters, (n, size, size), generator=g), (target * 7 + 3) % clusters)
    return list(seg), list(target)


def loop_scores(confusion: np.ndarray) -> tuple[float, float]:
    """mIoU over classes present in ground truth or prediction, and pixel accuracy, of a
    [K, K + 1] class confusion (last column: no class), by a loop over the classes."""
    ious = []
    for c in range(K):
        tp = confusion[c, c]
        union = confusion[c].sum() + confusion[:, c].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return float(np.mean(ious)), float(np.trace(confusion[:, :K]) / confusion.sum())


@pytest.mark.parametrize("clusters", [3, 5, 7])
def test_hungarian_matching_over_the_split_equals_scipy_on_a_loop_confusion(clusters):
    metric = ClusterMatchedIoU(K, num_clusters=clusters)
    conf = np.zeros((clusters, K), np.int64)
    unassigned = np.zeros(K, np.int64)
    for seed in range(3):  # three batches: the matching is made once, on their sum
        seg, target = random_maps(seed, clusters=clusters)
        metric.update(seg, target)
        for s, t in zip(seg, target):
            for a, b in zip(s.flatten().tolist(), t.flatten().tolist()):
                if b == VOID:
                    continue
                if a < 0:
                    unassigned[b] += 1
                else:
                    conf[a, b] += 1
    rows, cols = linear_sum_assignment(-conf)
    classes = np.zeros((K, K + 1), np.int64)
    classes[:, K] = unassigned
    mapping = np.full(clusters, -1)
    mapping[rows] = cols
    for a in range(clusters):
        classes[:, mapping[a] if mapping[a] >= 0 else K] += conf[a]
    miou, acc = loop_scores(classes)
    got = metric.compute()
    assert got["assignment"].tolist() == mapping.tolist()
    assert float(got["mIoU"]) == pytest.approx(miou, abs=1e-12)
    assert float(got["pixel_acc"]) == pytest.approx(acc, abs=1e-12)


def test_majority_labelling_equals_a_loop_over_each_images_segments():
    metric = ClusterMatchedIoU(K)
    classes = np.zeros((K, K + 1), np.int64)
    for seed in range(2):
        seg, target = random_maps(seed, clusters=9)
        metric.update(seg, target)
        for s, t in zip(seg, target):
            s, t = s.numpy(), t.numpy()
            keep = t != VOID
            for a in np.unique(s[keep]):
                votes = np.bincount(t[keep & (s == a)], minlength=K)
                label = int(np.argmax(votes)) if a >= 0 else K
                for c in range(K):
                    classes[c, label] += votes[c]
    miou, acc = loop_scores(classes)
    got = metric.compute()
    assert float(got["mIoU"]) == pytest.approx(miou, abs=1e-12)
    assert float(got["pixel_acc"]) == pytest.approx(acc, abs=1e-12)


def test_cluster_matching_errors_name_the_image():
    metric = ClusterMatchedIoU(K, num_clusters=2)
    seg = [torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 2)]
    with pytest.raises(ValueError, match="image 1: segment id 2 >= num_clusters=2"):
        metric.update(seg, [torch.zeros(4, 4, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="image 0: segments"):
        metric.update([torch.zeros(3, 4, dtype=torch.long)], [torch.zeros(4, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match="target classes outside"):
        metric.update([torch.zeros(4, 4, dtype=torch.long)], [torch.full((4, 4), 9)])


def test_class_agnostic_parsing_covering_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    is_thing = [True] * K  # the (category, instance) input merges a stuff class's instances
    gt_cat = torch.randint(0, K, (2, 5, 5), generator=g).repeat_interleave(3, 1).repeat_interleave(3, 2)
    gt_inst = torch.randint(0, 2, (2, 5, 5), generator=g).repeat_interleave(3, 1).repeat_interleave(3, 2)
    pred_ids = torch.randint(0, 6, (2, 15, 15), generator=g)
    pred_ids = torch.where(torch.rand(2, 15, 15, generator=g) < 0.6, gt_cat * 2 + gt_inst, pred_ids)
    metric = ParsingCovering(is_thing, class_agnostic=True, normalize_by_image_size=True)
    # predicted segments of random classes: the agnostic match ignores them
    metric.update(torch.stack([(pred_ids * 3) % K, pred_ids], -1), torch.stack([gt_cat, gt_inst], -1))
    weighted, area = np.zeros(K), np.zeros(K)
    for i in range(2):
        gc, gi, p = gt_cat[i].numpy(), gt_inst[i].numpy(), pred_ids[i].numpy()
        for c in range(K):
            for j in np.unique(gi[gc == c]):
                region = (gc == c) & (gi == j)
                best = max(((region & (p == q)).sum() / (region | (p == q)).sum()) for q in np.unique(p))
                weighted[c] += region.sum() / region.size * best
                area[c] += region.sum() / region.size
    got = metric.compute()
    assert float(got["pc"]) == pytest.approx(np.mean(weighted / area), abs=1e-12)
    assert float(got["covering"]) == pytest.approx(weighted.sum() / area.sum(), abs=1e-12)


def test_segment_metrics_things_group_and_agnostic_ap_against_pycocotools():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from scipy import ndimage

    g = torch.Generator().manual_seed(1)
    things = [0, 1]
    targets, segs = [], []
    for i in range(3):
        cat = torch.randint(0, K, (4, 4), generator=g).repeat_interleave(6, 0).repeat_interleave(6, 1)
        keys = torch.unique(cat)
        masks = torch.stack([cat == c for c in keys])
        sem = cat.clone()
        sem[:3, :3] = VOID
        masks[:, :3, :3] = False
        targets.append({"masks": masks, "labels": keys, "iscrowd": torch.zeros(len(keys), dtype=torch.bool),
                        "is_thing": torch.tensor([int(c) in things for c in keys]), "semantic": sem,
                        "target_size": (24, 24), "image_id": i})
        noise = torch.rand(24, 24, generator=g) < 0.05
        segs.append(torch.where(noise, torch.tensor(1), (cat < 2).long()))  # two clusters, ~ things vs stuff
    metric = SegmentMetrics(K, things, num_clusters=2)
    metric.update({"segments": segs}, targets)
    got = metric.compute()
    # things vs stuff: a 2 x 2 Hungarian matching over the split, by hand
    conf = np.zeros((2, 2), np.int64)
    for s, t in zip(segs, targets):
        sem = t["semantic"].numpy()
        keep = sem != VOID
        for a, b in zip(s.numpy()[keep], (sem[keep] < 2).astype(int)):
            conf[a, b] += 1
    rows, cols = linear_sum_assignment(-conf)
    thing_cluster = rows[list(cols).index(1)]
    tp = conf[thing_cluster, 1]
    iou = tp / (conf[thing_cluster].sum() + conf[:, 1].sum() - tp)
    assert float(got["things_IoU"]) == pytest.approx(iou, abs=1e-12)
    # class-agnostic AP: connected regions of equal id as instances scored by their area
    images, anns, dets = [], [], []
    for i, (s, t) in enumerate(zip(segs, targets)):
        images.append({"id": i, "height": 24, "width": 24})
        for m in t["masks"].numpy():
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
        for a in np.unique(s.numpy()):
            lab, n = ndimage.label(s.numpy() == a)
            for j in range(1, n + 1):
                m = lab == j
                dets.append({"image_id": i, "category_id": 1, "score": m.sum() / m.size,
                             "segmentation": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "segment"}]}
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert float(got["agnostic_AP"]) == pytest.approx(ev.stats[0], abs=1e-9)
    assert float(got["agnostic_AP50"]) == pytest.approx(ev.stats[1], abs=1e-9)


def test_unsupervised_extra_metric_scores_a_perfect_supervised_prediction_as_perfect():
    from lightning_seg.metrics import TaskMetrics

    h, w = 20, 24
    cat = torch.zeros(h, w, dtype=torch.long)
    cat[2:9, 3:10], cat[10:18, 12:22], cat[:, 22:] = 1, 2, 3  # connected, non-overlapping segments
    keys = [0, 1, 2, 3]
    masks = torch.stack([cat == c for c in keys])
    target = {"masks": masks, "labels": torch.tensor(keys), "iscrowd": torch.zeros(4, dtype=torch.bool),
              "is_thing": torch.tensor([False, True, True, False]), "semantic": cat, "target_size": (h, w),
              "image_id": 0}
    pan = {"panoptic_seg": (cat + 5).to(torch.int32),
           "segments_info": [{"id": c + 5, "category_id": c, "isthing": c in (1, 2)} for c in keys]}
    metrics = TaskMetrics(["panoptic", "semantic"], K, [1, 2], extra=["unsupervised"])
    metrics.update({"panoptic": [pan], "semantic": [(cat + 1) % K]}, [target])  # classes renamed: matching undoes it
    got = metrics.compute()
    for name in ("matched_mIoU", "matched_pixel_acc", "covering", "agnostic_PC", "agnostic_AP", "agnostic_AP50"):
        assert float(got[name]) == pytest.approx(1.0), name
    assert float(got["mIoU"]) == 0.0  # the supervised metric sees the renamed classes as wrong


def test_unsupervised_extra_metric_with_an_empty_panoptic_prediction():
    from lightning_seg.metrics import TaskMetrics

    cat = torch.zeros(8, 8, dtype=torch.long)
    target = {"masks": (cat == 0)[None], "labels": torch.tensor([0]), "iscrowd": torch.tensor([False]),
              "is_thing": torch.tensor([False]), "semantic": cat, "target_size": (8, 8), "image_id": 0}
    metrics = TaskMetrics(["panoptic"], K, [1, 2], extra=["unsupervised"])
    metrics.update({"panoptic": [{"panoptic_seg": torch.zeros(8, 8, dtype=torch.int32), "segments_info": []}]}, [target])
    got = metrics.compute()
    assert float(got["covering"]) == 0.0 and float(got["matched_pixel_acc"]) == 0.0
