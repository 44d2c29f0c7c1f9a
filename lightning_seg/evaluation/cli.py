"""``lightning-seg evaluate``: score prediction files against ground truth, without a model.

Examples::

    lightning-seg evaluate --task panoptic --gt-json panoptic_val.json --gt-dir panoptic_val/ \
        --pred-json pred.json --pred-dir pred/ --output pq.json
    lightning-seg evaluate --task instance --gt-json instances_val.json --pred-json results.json
    lightning-seg evaluate --task instance --gt-json instances_val.json --pred-json results.json \
        --iou-type bbox
    lightning-seg evaluate --task semantic --gt-dir annotations/ --pred-dir predictions/ \
        --num-classes 150 --reduce-zero-label --average all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightning_seg.evaluation.panoptic_io import load_json, load_panoptic_annotation
from lightning_seg.evaluation.semantic_io import read_class_png
from lightning_seg.metrics.coco_eval import COCO_STAT_NAMES, coco_evaluate
from lightning_seg.metrics.panoptic_quality import PanopticQuality
from lightning_seg.metrics.semantic import SemanticSegmentationMetrics
from lightning_seg.structures import IGNORE_INDEX, DatasetMetadata


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-seg evaluate``."""
    p = argparse.ArgumentParser(
        prog="lightning-seg evaluate",
        description="Score prediction files against ground truth (panoptic, instance or semantic).",
    )
    p.add_argument("--task", required=True, choices=("panoptic", "instance", "semantic"))
    p.add_argument("--gt-json", type=Path, help="COCO (panoptic) ground-truth JSON")
    p.add_argument("--gt-dir", type=Path, help="ground-truth PNG folder (panoptic ids or class maps)")
    p.add_argument("--pred-json", type=Path, help="prediction JSON (COCO panoptic or COCO results)")
    p.add_argument("--pred-dir", type=Path, help="prediction PNG folder (panoptic ids or class maps)")
    p.add_argument("--num-classes", type=int, help="semantic: number of classes")
    p.add_argument("--ignore-index", type=int, default=IGNORE_INDEX, help="semantic: void value (default 255)")
    p.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="semantic: files use 0 for void and 1..K for classes (ADE20K)",
    )
    p.add_argument(
        "--average",
        choices=("present", "all"),
        default="present",
        help="semantic: mean over classes present (default) or over all classes",
    )
    p.add_argument(
        "--backend",
        choices=("faster_coco_eval", "pycocotools"),
        default="faster_coco_eval",
        help="instance: COCOeval implementation",
    )
    p.add_argument(
        "--iou-type",
        choices=("segm", "bbox", "all"),
        default="all",
        help="instance: score masks, boxes, or every type the results file has (default)",
    )
    p.add_argument("--output", type=Path, help="write the scores to this JSON file")
    return p


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise ValueError(f"--task {args.task} needs {' '.join(missing)}")


def evaluate_panoptic(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path) -> dict[str, Any]:
    """PQ / SQ / RQ of a COCO panoptic prediction (JSON + PNG folder) against ground truth.

    Returns:
        ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"}, "per_class": {category_id: {...}}}``.
    """
    gt = load_json(gt_json)
    pred = load_json(pred_json)
    for name, data in ((gt_json, gt), (pred_json, pred)):
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{name}: not a COCO panoptic JSON (no 'annotations')")
    if "categories" not in gt:
        raise ValueError(f"{gt_json}: no 'categories' block")
    meta = DatasetMetadata.from_coco_categories(gt["categories"], source=str(gt_json))
    pred_by_image = {}
    for ann in pred["annotations"]:
        if ann.get("image_id") in pred_by_image:
            raise ValueError(f"{pred_json}: two annotations for image {ann.get('image_id')}")
        pred_by_image[ann.get("image_id")] = ann
    metric = PanopticQuality(is_thing=meta.is_thing)
    for gt_ann in gt["annotations"]:
        image_id = gt_ann.get("image_id")
        if image_id not in pred_by_image:
            raise ValueError(f"{pred_json}: no prediction for image {image_id} of {gt_json}")
        gt_ids, gt_info = load_panoptic_annotation(gt_ann, gt_dir, meta, str(gt_json))
        pred_ids, pred_info = load_panoptic_annotation(pred_by_image[image_id], pred_dir, meta, str(pred_json))
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(
                f"{pred_dir / pred_by_image[image_id]['file_name']} is {tuple(pred_ids.shape)} but "
                f"{gt_dir / gt_ann['file_name']} is {tuple(gt_ids.shape)}"
            )
        metric.update(
            [{"panoptic_seg": pred_ids, "segments_info": pred_info}],
            [{"panoptic_seg": gt_ids, "segments_info": gt_info}],
        )
    return metric.report(meta.category_ids)


def evaluate_instance(
    gt_json: Path, pred_json: Path, backend: str = "faster_coco_eval", iou_type: str = "all"
) -> dict[str, Any]:
    """COCO AP / AR of a COCO results JSON, for masks (``segm``) and/or boxes (``bbox``).

    Args:
        gt_json: COCO instances ground truth.
        pred_json: COCO results list (``segmentation`` RLE and/or ``bbox`` ``[x, y, w, h]``).
        backend: ``"faster_coco_eval"`` or ``"pycocotools"``.
        iou_type: ``"segm"``, ``"bbox"``, or ``"all"``: ``segm`` when every detection has a
            ``segmentation``, ``bbox`` when every detection has a ``bbox``. Asking for a type
            the file cannot give raises ``ValueError`` naming the file.

    Returns:
        ``{"segm"|"bbox": {"AP","AP50","AP75","APs","APm","APl","AR1","AR10","AR100","ARs","ARm","ARl"}}``.
    """
    if iou_type not in ("segm", "bbox", "all"):
        raise ValueError(f"iou_type must be 'segm', 'bbox' or 'all', got {iou_type!r}")
    gt = load_json(gt_json)
    results = load_json(pred_json)
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise ValueError(f"{gt_json}: not a COCO instances JSON (needs images, annotations, categories)")
    if not isinstance(results, list):
        raise ValueError(f"{pred_json}: a COCO results file is a JSON list of detections")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    for i, r in enumerate(results):
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise ValueError(f"{pred_json}: detection {i} has no '{key}'")
        if r["image_id"] not in image_ids:
            raise ValueError(f"{pred_json}: detection {i} is for image {r['image_id']}, not in {gt_json}")
        if r["category_id"] not in category_ids:
            raise ValueError(f"{pred_json}: detection {i} has unknown category id {r['category_id']}")
    key_of = {"segm": "segmentation", "bbox": "bbox"}
    available = [t for t, key in key_of.items() if results and all(key in r for r in results)]
    if iou_type == "all":
        if not available:
            raise ValueError(f"{pred_json}: detections need 'segmentation' (all of them) or 'bbox' (all of them)")
        iou_types = available
    elif iou_type not in available:
        missing = next((i for i, r in enumerate(results) if key_of[iou_type] not in r), None)
        where = "the file has no detections" if missing is None else f"detection {missing} has none"
        raise ValueError(
            f"{pred_json}: --iou-type {iou_type} needs a '{key_of[iou_type]}' in every detection; {where}"
        )
    else:
        iou_types = [iou_type]
    return {t: coco_evaluate(gt, results, t, backend) for t in iou_types}  # type: ignore[arg-type]


def evaluate_semantic(
    gt_dir: Path,
    pred_dir: Path,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
    average: str = "present",
) -> dict[str, Any]:
    """Semantic scores of a folder of predicted PNG class maps against ground-truth PNGs.

    Every ``*.png`` of ``gt_dir`` needs a same-named file in ``pred_dir``; both are read with the
    same ``reduce_zero_label``. Returns ``{"pixel_acc","mAcc","mIoU","fwIoU","per_class_iou"}``
    (per-class IoU is ``null`` for classes absent from both).
    """
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise ValueError(f"no PNG files in {gt_dir}")
    metric = SemanticSegmentationMetrics(
        num_classes, ignore_index=ignore_index, average=average  # type: ignore[arg-type]
    )
    for gt_file in gt_files:
        pred_file = pred_dir / gt_file.name
        if not pred_file.is_file():
            raise FileNotFoundError(f"prediction missing for {gt_file.name}: {pred_file}")
        gt = read_class_png(gt_file, reduce_zero_label, ignore_index)
        pred = read_class_png(pred_file, reduce_zero_label, ignore_index)
        if gt.shape != pred.shape:
            raise ValueError(f"{pred_file} is {tuple(pred.shape)} but {gt_file} is {tuple(gt.shape)}")
        try:
            metric.update(pred[None], gt[None])
        except ValueError as err:
            raise ValueError(f"{gt_file.name}: {err}") from None
    res = metric.compute()
    iou = res["per_class_iou"].tolist()
    return {
        "pixel_acc": float(res["pixel_acc"]),
        "mAcc": float(res["mAcc"]),
        "mIoU": float(res["mIoU"]),
        "fwIoU": float(res["fwIoU"]),
        "per_class_iou": [None if v != v else v for v in iou],
    }


def format_table(task: str, result: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers (percentages, like the reference tools)."""
    lines = []
    if task == "panoptic":
        lines.append(f"{'':10s}{'PQ':>8s}{'SQ':>8s}{'RQ':>8s}{'N':>6s}")
        for name in ("All", "Things", "Stuff"):
            r = result[name]
            lines.append(f"{name:10s}{100 * r['pq']:8.3f}{100 * r['sq']:8.3f}{100 * r['rq']:8.3f}{r['n']:6d}")
    elif task == "instance":
        lines.append(f"{'':6s}" + "".join(f"{n:>7s}" for n in COCO_STAT_NAMES))
        for iou_type, stats in result.items():
            lines.append(f"{iou_type:6s}" + "".join(f"{stats[n]:7.3f}" for n in COCO_STAT_NAMES))
    else:
        lines.append("".join(f"{n:>10s}" for n in ("pixel_acc", "mAcc", "mIoU", "fwIoU")))
        lines.append("".join(f"{100 * result[n]:10.2f}" for n in ("pixel_acc", "mAcc", "mIoU", "fwIoU")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluator; returns 0 on success, 1 on bad input (the message names the file)."""
    args = build_parser().parse_args(argv)
    try:
        if args.task == "panoptic":
            _require(args, "gt_json", "gt_dir", "pred_json", "pred_dir")
            result = evaluate_panoptic(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir)
        elif args.task == "instance":
            _require(args, "gt_json", "pred_json")
            result = evaluate_instance(args.gt_json, args.pred_json, args.backend, args.iou_type)
        else:
            _require(args, "gt_dir", "pred_dir", "num_classes")
            result = evaluate_semantic(
                args.gt_dir,
                args.pred_dir,
                args.num_classes,
                args.ignore_index,
                args.reduce_zero_label,
                args.average,
            )
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"lightning-seg evaluate: error: {err}", file=sys.stderr)
        return 1
    print(format_table(args.task, result))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
