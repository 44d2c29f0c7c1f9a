"""The offline evaluator on the real sample data, and its errors on bad input."""

from __future__ import annotations

import copy
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lightning_seg.evaluation import main
from lightning_seg.evaluation.panoptic_io import load_json, read_id_png
from tests.metrics.panoptic_reference import new_stats, reference_pq_average, reference_pq_single

PUBLISHED = {
    # cocoapi results/val2014_fake_eval_res.txt
    "segm": [0.320, 0.562, 0.299, 0.387, 0.310, 0.327, 0.268, 0.415, 0.417, 0.469, 0.377, 0.381],
    "bbox": [0.505, 0.697, 0.573, 0.586, 0.519, 0.501, 0.387, 0.594, 0.595, 0.640, 0.566, 0.564],
}
NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _panoptic_args(root, out):
    return [
        "--task", "panoptic",
        "--gt-json", str(root / "coco_gt.json"), "--gt-dir", str(root / "coco_gt"),
        "--pred-json", str(root / "coco_pred.json"), "--pred-dir", str(root / "coco_pred"),
        "--output", str(out),
    ]  # fmt: skip


def test_panoptic_matches_reference(shared_data, tmp_path, capsys):
    root = shared_data / "deeplab_pq_testdata"
    out = tmp_path / "pq.json"
    assert main(_panoptic_args(root, out)) == 0
    assert "Things" in capsys.readouterr().out
    ours = json.loads(out.read_text())
    gt, pred = load_json(root / "coco_gt.json"), load_json(root / "coco_pred.json")
    stats = new_stats()
    preds = {a["image_id"]: a for a in pred["annotations"]}
    for a in gt["annotations"]:
        p = preds[a["image_id"]]
        reference_pq_single(
            read_id_png(root / "coco_gt" / a["file_name"]).numpy(), {s["id"]: s for s in a["segments_info"]},
            read_id_png(root / "coco_pred" / p["file_name"]).numpy(), {s["id"]: s for s in p["segments_info"]},
            stats,
        )  # fmt: skip
    ref = reference_pq_average(stats, {c["id"]: bool(c["isthing"]) for c in gt["categories"]})
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == ref[name]["n"]
        for key in ("pq", "sq", "rq"):
            assert ours[name][key] == pytest.approx(ref[name][key], abs=1e-6)
    for cat, values in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][str(cat)][key] == pytest.approx(values[key], abs=1e-6)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_instance_reproduces_published_cocoeval(shared_data, tmp_path, backend):
    root = shared_data / "coco_val2014_100_eval"
    for iou_type, fname in (("segm", "instances_val2014_fakesegm100_results.json"), ("bbox", "instances_val2014_fakebbox100_results.json")):
        out = tmp_path / f"{iou_type}.json"
        rc = main(["--task", "instance", "--gt-json", str(root / "instances_val2014_100.json"),
                   "--pred-json", str(root / fname), "--backend", backend, "--output", str(out)])  # fmt: skip
        assert rc == 0
        stats = json.loads(out.read_text())[iou_type]
        assert [round(stats[n], 3) for n in NAMES] == PUBLISHED[iou_type]


def _published(root, iou_type):
    """The 12 numbers of one ``type=...`` block of cocoapi's val2014_fake_eval_res.txt."""
    text = (root / "val2014_fake_eval_res.txt").read_text()
    block = text.split(f"type={iou_type}\n")[1].split("type=")[0]
    values = [float(v) for v in re.findall(r"\] = (-?\d\.\d+)", block)]
    assert len(values) == 12
    return values


def _pycocotools(gt_json, results, iou_type):
    gt = COCO(str(gt_json))
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(NAMES, evaluator.stats[:12]))


def _instance(root, pred_json, out, *extra):
    return main(["--task", "instance", "--gt-json", str(root / "instances_val2014_100.json"),
                 "--pred-json", str(pred_json), "--output", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_instance_iou_type_bbox_equals_pycocotools_and_published(shared_data, tmp_path, backend):
    root = shared_data / "coco_val2014_100_eval"
    pred_json = root / "instances_val2014_fakebbox100_results.json"
    out = tmp_path / "bbox.json"
    assert _instance(root, pred_json, out, "--iou-type", "bbox", "--backend", backend) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"bbox"}
    ref = _pycocotools(root / "instances_val2014_100.json", json.loads(pred_json.read_text()), "bbox")
    for name in NAMES:
        assert report["bbox"][name] == pytest.approx(ref[name], abs=1e-9), name
    assert [round(report["bbox"][n], 3) for n in NAMES] == _published(root, "bbox")
    assert [report["bbox"][n] for n in ("AP", "AP50", "AP75")] == pytest.approx([0.505, 0.697, 0.573], abs=5e-4)


def test_instance_file_with_masks_and_boxes_scores_each_type(shared_data, tmp_path):
    root = shared_data / "coco_val2014_100_eval"
    segm_only = json.loads((root / "instances_val2014_fakesegm100_results.json").read_text())
    both = [{**r, "bbox": mask_util.toBbox(r["segmentation"]).tolist()} for r in segm_only]
    pred_json = tmp_path / "both.json"
    pred_json.write_text(json.dumps(both))
    gt_json = root / "instances_val2014_100.json"
    assert _instance(root, pred_json, tmp_path / "all.json") == 0
    report = json.loads((tmp_path / "all.json").read_text())
    assert set(report) == {"segm", "bbox"}
    # mask AP is scored on the masks alone (their areas, not the boxes'), as for a segm-only file
    ref_segm = _pycocotools(gt_json, segm_only, "segm")
    ref_bbox = _pycocotools(gt_json, both, "bbox")
    for name in NAMES:
        assert report["segm"][name] == pytest.approx(ref_segm[name], abs=1e-9), name
        assert report["bbox"][name] == pytest.approx(ref_bbox[name], abs=1e-9), name
    assert [round(report["segm"][n], 3) for n in NAMES] == _published(root, "segm")
    assert _instance(root, pred_json, tmp_path / "segm.json", "--iou-type", "segm") == 0
    assert json.loads((tmp_path / "segm.json").read_text()) == {"segm": report["segm"]}


def test_instance_iou_type_missing_from_file(shared_data, tmp_path, capsys):
    root = shared_data / "coco_val2014_100_eval"
    bbox_file = root / "instances_val2014_fakebbox100_results.json"
    segm_file = root / "instances_val2014_fakesegm100_results.json"
    assert _instance(root, bbox_file, tmp_path / "o.json", "--iou-type", "segm") == 1
    err = capsys.readouterr().err
    assert str(bbox_file) in err and "--iou-type segm" in err and "'segmentation'" in err and "detection 0" in err
    assert _instance(root, segm_file, tmp_path / "o.json", "--iou-type", "bbox") == 1
    err = capsys.readouterr().err
    assert str(segm_file) in err and "--iou-type bbox" in err and "'bbox'" in err
    assert not (tmp_path / "o.json").exists()


def test_semantic_ade20k_both_conventions(shared_data, tmp_path):
    root = shared_data / "ade20k_sceneparsing_sample" / "sampleData"
    for average, miou in (("present", 1.0), ("all", 0.1)):
        out = tmp_path / f"{average}.json"
        rc = main(["--task", "semantic", "--gt-dir", str(root / "annotations"), "--pred-dir", str(root / "predictions"),
                   "--num-classes", "150", "--reduce-zero-label", "--average", average, "--output", str(out)])  # fmt: skip
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["pixel_acc"] == 1.0
        assert res["mIoU"] == pytest.approx(miou)
        assert sum(v is not None for v in res["per_class_iou"]) == 15


def _copy_deeplab(shared_data, tmp_path):
    root = tmp_path / "deeplab"
    shutil.copytree(shared_data / "deeplab_pq_testdata", root)
    return root


def _expect_error(args, capsys, *fragments):
    assert main(args) == 1
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_panoptic_missing_png_names_file(shared_data, tmp_path, capsys):
    root = _copy_deeplab(shared_data, tmp_path)
    (root / "coco_pred" / "cat.png").unlink()
    _expect_error(_panoptic_args(root, tmp_path / "o.json"), capsys, "cat.png")


def test_panoptic_json_id_absent_from_png(shared_data, tmp_path, capsys):
    root = _copy_deeplab(shared_data, tmp_path)
    pred = load_json(root / "coco_pred.json")
    pred["annotations"][1]["segments_info"].append({"id": 4242, "category_id": 6, "iscrowd": 0})
    (root / "coco_pred.json").write_text(json.dumps(pred))
    _expect_error(_panoptic_args(root, tmp_path / "o.json"), capsys, "4242", "cat.png")


def test_panoptic_unknown_category(shared_data, tmp_path, capsys):
    root = _copy_deeplab(shared_data, tmp_path)
    pred = load_json(root / "coco_pred.json")
    pred["annotations"][0]["segments_info"][0]["category_id"] = 99
    (root / "coco_pred.json").write_text(json.dumps(pred))
    _expect_error(_panoptic_args(root, tmp_path / "o.json"), capsys, "unknown category id 99", "coco_pred.json")


def test_panoptic_size_mismatch(shared_data, tmp_path, capsys):
    root = _copy_deeplab(shared_data, tmp_path)
    png = root / "coco_pred" / "bird.png"
    Image.open(png).crop((0, 0, 100, 100)).save(png)
    pred = load_json(root / "coco_pred.json")
    (root / "coco_pred.json").write_text(json.dumps(pred))
    assert main(_panoptic_args(root, tmp_path / "o.json")) == 1
    assert "bird.png" in capsys.readouterr().err


def test_semantic_missing_and_mismatched_predictions(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(gt_dir / "a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(gt_dir / "b.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(pred_dir / "a.png")
    args = ["--task", "semantic", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir), "--num-classes", "2"]
    _expect_error(args, capsys, "b.png")
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(pred_dir / "b.png")
    _expect_error(args, capsys, "b.png", "(3, 5)")
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(pred_dir / "b.png")
    _expect_error(args, capsys, "b.png", "[9]")


def test_missing_flags_are_reported(capsys):
    _expect_error(["--task", "semantic", "--gt-dir", "x"], capsys, "--pred-dir", "--num-classes")
