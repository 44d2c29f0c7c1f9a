"""A plain-Python panoptic quality written from the published rules of panopticapi's ``pq_compute``.

It is deliberately slow and literal (dicts and loops over segments) so that it is an
independent check of the tensorised metric:

* per image, the PNG ids are joined with ``gt_id * OFFSET + pred_id`` and counted;
* a (gt, pred) pair is a TP when the gt is not crowd, the categories agree, and
  ``intersection / (pred_area + gt_area - intersection - pred_area_on_void) > 0.5``;
* unmatched non-crowd gt segments are FN; the last crowd segment of each category is
  remembered;
* an unmatched prediction is FP unless ``(pixels on void + pixels on that category's crowd)
  / pred_area > 0.5``;
* a category counts in an average when ``tp + fp + fn > 0``; ``pq = iou / (tp + fp/2 + fn/2)``,
  ``sq = iou / tp`` (0 without TP), ``rq = tp / (tp + fp/2 + fn/2)``.

The ground-truth ``area`` comes from the JSON, the predicted one from the PNG, as there.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

OFFSET = 256 * 256 * 256
VOID = 0


def reference_pq_single(gt_ids, gt_segments, pred_ids, pred_segments, stats):
    """Accumulate one image into ``stats[category] = [iou, tp, fp, fn]``.

    ``gt_segments`` / ``pred_segments`` map segment id -> dict(category_id, iscrowd, area).
    """
    pred_area = {}
    labels, counts = np.unique(pred_ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segments:
            if label == VOID:
                continue
            raise KeyError(f"segment {label} in the PNG is not in the JSON")
        pred_area[label] = count
    for label in pred_segments:
        if label not in pred_area:
            raise KeyError(f"segment {label} in the JSON is not in the PNG")

    joint = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    keys, counts = np.unique(joint, return_counts=True)
    overlap = {}
    for key, count in zip(keys.tolist(), counts.tolist()):
        overlap[(key // OFFSET, key % OFFSET)] = count

    gt_matched, pred_matched = set(), set()
    for (g, p), inter in overlap.items():
        if g not in gt_segments or p not in pred_segments:
            continue
        if gt_segments[g]["iscrowd"] == 1:
            continue
        if gt_segments[g]["category_id"] != pred_segments[p]["category_id"]:
            continue
        union = pred_area[p] + gt_segments[g]["area"] - inter - overlap.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            s = stats[gt_segments[g]["category_id"]]
            s[0] += iou
            s[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of_category = {}
    for g, info in gt_segments.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd_of_category[info["category_id"]] = g
            continue
        stats[info["category_id"]][3] += 1

    for p, info in pred_segments.items():
        if p in pred_matched:
            continue
        ignored = overlap.get((VOID, p), 0)
        if info["category_id"] in crowd_of_category:
            ignored += overlap.get((crowd_of_category[info["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats[info["category_id"]][2] += 1


def reference_pq_average(stats, categories):
    """``categories``: id -> isthing. Returns panopticapi-style results dict."""
    results = {}
    per_class = {}
    for name, want in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        for cat, isthing in categories.items():
            if want is not None and isthing != want:
                continue
            iou, tp, fp, fn = stats.get(cat, [0.0, 0, 0, 0])
            if tp + fp + fn == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp != 0 else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[cat] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq += pq_c
            sq += sq_c
            rq += rq_c
        results[name] = {"pq": pq / n if n else 0.0, "sq": sq / n if n else 0.0, "rq": rq / n if n else 0.0, "n": n}
    results["per_class"] = per_class
    return results


def new_stats():
    """Empty accumulator for :func:`reference_pq_single`."""
    return defaultdict(lambda: [0.0, 0, 0, 0])
