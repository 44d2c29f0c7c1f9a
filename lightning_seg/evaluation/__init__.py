"""Reading and writing prediction files, and the offline evaluator behind ``lightning-seg evaluate``."""

from lightning_seg.evaluation.cli import evaluate_instance, evaluate_panoptic, evaluate_semantic, main
from lightning_seg.evaluation.coco_results import instance_prediction_to_coco_results, write_coco_results
from lightning_seg.evaluation.panoptic_io import (
    id_to_rgb,
    load_json,
    load_panoptic_annotation,
    prediction_to_coco_panoptic,
    read_id_png,
    rgb_to_id,
    write_coco_panoptic,
    write_id_png,
)
from lightning_seg.evaluation.semantic_io import read_class_png, write_class_png

__all__ = [
    "evaluate_instance",
    "evaluate_panoptic",
    "evaluate_semantic",
    "id_to_rgb",
    "instance_prediction_to_coco_results",
    "load_json",
    "load_panoptic_annotation",
    "main",
    "prediction_to_coco_panoptic",
    "read_class_png",
    "read_id_png",
    "rgb_to_id",
    "write_class_png",
    "write_coco_panoptic",
    "write_coco_results",
    "write_id_png",
]
